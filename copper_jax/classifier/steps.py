"""Pure train and eval steps of the stress-time classifier; jitted where they are called.

The model and optimizer are static keyword arguments (bind them with functools.partial before jax.jit), so one
compiled step serves a whole run and the grid search can lower the same function for its memory analysis.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from copper_jax import losses


@flax.struct.dataclass
class ClfState:
  """Everything that changes while the classifier trains; no PRNG key (steps derive theirs from the step)."""
  step: jax.Array              # () int32
  params: Any
  batch_stats: Any             # BatchNorm running statistics (empty dict with GroupNorm)
  opt_state: Any


def init_state(model, optimizer, rng, patch_size: int) -> ClfState:
  """A fresh state; `rng` sets the initial weights. Shapes do not depend on the image size (global pooling)."""
  dummy_1xPxPx1 = jnp.zeros((1, patch_size, patch_size, 1), jnp.float32)
  variables = model.init(rng, dummy_1xPxPx1, train=False)
  params = variables["params"]
  return ClfState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                  opt_state=optimizer.init(params))


def _variables(state: ClfState) -> dict:
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: ClfState, batch, *, model, optimizer):
  """One Adam step on a batch of patches (image (B,P,P,1), label (B,)); returns (state, metrics).

  Metrics are sums with a count, divided once on the host. `finite` is False when the loss or the gradient is
  not finite: the host stops the run there, before a checkpoint could hold the broken parameters.
  """
  weight_B = batch.get("weight", jnp.ones(batch["label"].shape, jnp.float32))

  def loss_fn(params):
    variables = dict(_variables(state), params=params)
    mutable = ["batch_stats"] if state.batch_stats else []
    logits_BxK, updates = model.apply(variables, batch["image"], train=True, mutable=mutable)
    loss_sum, count = losses.classification_cross_entropy(logits_BxK, batch["label"], weight_B)
    return loss_sum / jnp.maximum(count, 1.0), (updates.get("batch_stats", {}), logits_BxK, loss_sum, count)

  (loss, (batch_stats, logits_BxK, loss_sum, count)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  correct = jnp.sum((jnp.argmax(logits_BxK, axis=-1) == batch["label"]) * weight_B)
  new_state = ClfState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  metrics = {"loss_sum": loss_sum, "count": count, "correct": correct, "grad_norm": grad_norm,
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return new_state, metrics


def eval_step(state: ClfState, batch, *, model):
  """Logits of whole images (eval mode) and the weighted loss, so padded images (weight 0) count for nothing."""
  logits_BxK = model.apply(_variables(state), batch["image"], train=False)
  loss_sum, count = losses.classification_cross_entropy(logits_BxK, batch["label"], batch["weight"])
  return {"logits": logits_BxK, "loss_sum": loss_sum, "count": count}
