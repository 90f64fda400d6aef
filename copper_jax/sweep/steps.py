"""Pure train and eval steps of ONE weak-label segmentation model; `members.lift` runs many at once.

A member is one (hypothesis, seed) pair. Its per-member constants travel as arrays in `member`:
`targets` (T,) the hypothesis at the labels, `learn_g` () whether the targets are the member's own learned curve,
`g_lo`, `g_hi` () the learned curve's pinned endpoints. Every member has the same pytree structure (a fixed
hypothesis simply gets zero gradients on its unused curve logits), which is what lets one step serve them all.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from copper_jax import hypotheses, losses


@flax.struct.dataclass
class SegState:
  """Everything that changes while one segmentation model trains."""
  step: jax.Array              # () int32
  params: Any                  # {"net": model parameters, "g_logits": (T-1,) learned-curve logits}
  batch_stats: Any             # BatchNorm running statistics (empty dict with GroupNorm)
  opt_state: Any
  diverged: jax.Array          # () bool: a non-finite loss was met; the member stops updating


def init_state(model, optimizer, rng, image_shape, num_labels: int) -> SegState:
  """A fresh state for one member; `rng` sets its initial weights."""
  dummy_1xHxWx1 = jnp.zeros((1, *image_shape, 1), jnp.float32)
  variables = model.init(rng, dummy_1xHxWx1, train=False)
  params = {"net": variables["params"], "g_logits": jnp.zeros((num_labels - 1,), jnp.float32)}
  return SegState(step=jnp.zeros((), jnp.int32), params=params,
                  batch_stats=variables.get("batch_stats", {}), opt_state=optimizer.init(params),
                  diverged=jnp.zeros((), bool))


def member_targets(params, member):
  """The (T,) targets a member regresses to: its fixed hypothesis, or its learned monotone curve."""
  # The curve's logits move at the weights' learning rate, so the model first learns the texture under a near
  # linear curve: with only its endpoints pinned, a fast curve follows the masks and starves the model of signal.
  learned_T = hypotheses.learned_curve(params["g_logits"], member["g_lo"], member["g_hi"])
  return jnp.where(member["learn_g"], learned_T, member["targets"])


def consistency_shift(step, pooling_period: int):
  """The shift in pixels of `step`'s consistency crop: 1, 2, ..., pooling_period - 1 in turn.

  A shift by a whole pooling period moves the pooling grid onto itself, so only the shifts within one period
  can disagree; taking them from the step keeps runs reproducible without any random state.
  """
  return 1 + step % (pooling_period - 1)


def shifted_crop(x_BxPxPx, shift, size: int):
  """x[:, shift:shift + size, shift:shift + size]: a square crop `shift` pixels down and right of the corner.

  `shift` may be traced (it follows the step); `size` is static, so every step compiles to the same shapes.
  """
  start = (0, shift, shift) + (0,) * (x_BxPxPx.ndim - 3)
  return jax.lax.dynamic_slice(x_BxPxPx, start, (x_BxPxPx.shape[0], size, size, *x_BxPxPx.shape[3:]))


def train_step(state: SegState, member, batch, *, model, optimizer, loss_kind: str, tolerance: float,
               binarise_weight: float, consistency_weight: float = 0.0, pooling_period: int = 1):
  """One optimizer step of one member on `batch` (image (B,P,P,1), label (B,)); returns (state, metrics).

  With `consistency_weight` > 0 the model also masks a crop of the patches shifted within one pooling period
  (`pooling_period` = 2**d pixels, the net's coarsest grid) and the two masks are asked to agree where they
  overlap. At 0 that second pass is not even traced, so the step is the one without the term.

  Metrics are (sum, count) pairs so the host divides once. A non-finite loss leaves the state as it was and
  marks the member diverged; the other members go on.
  """
  weight_B = batch.get("weight", jnp.ones(batch["label"].shape, jnp.float32))
  patch_size = batch["image"].shape[1]
  if consistency_weight > 0 and not 1 < pooling_period < patch_size:
    raise ValueError(f"the shift-consistency term needs 1 < pooling_period < patch size, got pooling_period="
                     f"{pooling_period} and patch size {patch_size}")

  def loss_fn(params):
    variables = {"params": params["net"], "batch_stats": state.batch_stats}
    mask_BxPxP, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    target_B = member_targets(params, member)[batch["label"]]
    fraction_B = losses.mask_fraction(mask_BxPxP)
    if loss_kind == "interval":
      loss_sum, count = losses.proportion_interval(fraction_B, target_B, weight_B, tolerance)
    else:
      loss_sum, count = losses.PROPORTION_LOSSES[loss_kind](fraction_B, target_B, weight_B)
    binarise_sum, _ = losses.binarisation_penalty(mask_BxPxP, weight_B)
    penalised_sum = loss_sum + binarise_weight * binarise_sum
    consistency_sum = jnp.zeros((), jnp.float32)
    if consistency_weight > 0:
      shift = consistency_shift(state.step, pooling_period)
      # Q = P - 2**d keeps the crop inside the patch for every shift, and a multiple of 2**d when P is.
      size = patch_size - pooling_period
      # The norm statistics stay those of the whole patches: the crop's batch repeats most of their pixels.
      shifted_mask_BxQxQ, _ = model.apply(variables, shifted_crop(batch["image"], shift, size), train=True,
                                          mutable=["batch_stats"])
      consistency_sum, _ = losses.shift_consistency(shifted_crop(mask_BxPxP, shift, size), shifted_mask_BxQxQ,
                                                    weight_B)
      penalised_sum = penalised_sum + consistency_weight * consistency_sum
    total = penalised_sum / jnp.maximum(count, 1.0)
    return total, (updates.get("batch_stats", {}), loss_sum, count, binarise_sum, consistency_sum)

  (total, (batch_stats, loss_sum, count, binarise_sum, consistency_sum)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
  keep = finite & ~state.diverged
  new_state = SegState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                       diverged=state.diverged | ~finite)
  # A diverged member keeps its last finite parameters, so its checkpoint and results stay readable.
  new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(keep, new, old), new_state,
                                     state.replace(step=state.step + 1, diverged=new_state.diverged))
  metrics = {"loss_sum": loss_sum, "count": count, "binarise_sum": binarise_sum,
             "consistency_sum": consistency_sum, "grad_norm": optax.tree.norm(grads),
             "diverged": new_state.diverged}
  return new_state, metrics


def eval_step(state: SegState, member, batch, *, model):
  """Per-image results of one member on whole images: mask fraction, target, and pixel counts vs truth."""
  mask_BxHxW = predict_masks(state, batch, model=model)
  out = {"fraction": losses.mask_fraction(mask_BxHxW),
         "target": member_targets(state.params, member)[batch["label"]]}
  if "mask" in batch:
    out.update(losses.mask_confusion(mask_BxHxW, batch["mask"], batch["weight"]))
  return out


def predict_masks(state: SegState, batch, *, model):
  """Masks of one member for a batch of whole images, (B, H, W) in [0, 1]."""
  variables = {"params": state.params["net"], "batch_stats": state.batch_stats}
  return model.apply(variables, batch["image"], train=False)
