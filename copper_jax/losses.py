"""Losses as pure functions returning (sum, count) so padded batches and splits aggregate exactly.

Every loss takes per-image weights `weight_B` (1 for real images, 0 for padding) and returns the weighted sum over
the batch and the summed weight; divide once, on the host, after summing over batches. The mask's spatial mean
is a mean of *probabilities* (a proportion), never of log-probabilities (docs/science.md).
"""
import jax.numpy as jnp
import optax

_EPS = 1e-6


def mask_fraction(mask_BxHxW):
  """The smoothed-area fraction of each image: the spatial mean of its mask probabilities."""
  return jnp.mean(mask_BxHxW.astype(jnp.float32), axis=(1, 2))


def _weighted(per_image_B, weight_B):
  return jnp.sum(per_image_B * weight_B), jnp.sum(weight_B)


def proportion_mse(fraction_B, target_B, weight_B):
  """The paper's eq. 4: squared error between the mask's mean and the hypothesis value."""
  return _weighted(jnp.square(fraction_B - target_B), weight_B)


def proportion_bce(fraction_B, target_B, weight_B):
  """Binary cross-entropy between the target proportion and the mask's mean (the LLP bag loss)."""
  p = jnp.clip(fraction_B, _EPS, 1.0 - _EPS)
  bce = -(target_B * jnp.log(p) + (1.0 - target_B) * jnp.log1p(-p))
  # Subtracting the target's own entropy makes a perfect fit score 0, so values compare across hypotheses.
  t = jnp.clip(target_B, _EPS, 1.0 - _EPS)
  entropy = -(t * jnp.log(t) + (1.0 - t) * jnp.log1p(-t))
  return _weighted(bce - entropy, weight_B)


def proportion_interval(fraction_B, target_B, weight_B, tolerance=0.05):
  """Squared distance from the tolerance band [target - tolerance, target + tolerance] (zero inside it)."""
  excess = jnp.maximum(jnp.abs(fraction_B - target_B) - tolerance, 0.0)
  return _weighted(jnp.square(excess), weight_B)


def binarisation_penalty(mask_BxHxW, weight_B):
  """Mean of s(1 - s) per image: zero for a binary mask, 0.25 for a uniform gray one.

  A proportion loss alone is met by a uniform gray mask of value g(t); this pushes pixels to 0 or 1.
  """
  s = mask_BxHxW.astype(jnp.float32)
  return _weighted(jnp.mean(s * (1.0 - s), axis=(1, 2)), weight_B)


def shift_consistency(mask_a_BxHxW, mask_b_BxHxW, weight_B):
  """Mean squared difference per image of two masks of the same pixels (the caller aligns them).

  A patch and its shifted crop show the same surface, so a net that reads local texture should mask it alike
  wherever its pooling grid happens to fall; no label is needed for this.
  """
  difference = mask_a_BxHxW.astype(jnp.float32) - mask_b_BxHxW.astype(jnp.float32)
  return _weighted(jnp.mean(jnp.square(difference), axis=(1, 2)), weight_B)


PROPORTION_LOSSES = {"mse": proportion_mse, "bce": proportion_bce, "interval": proportion_interval}


def classification_cross_entropy(logits_BxK, label_B, weight_B):
  """Softmax cross-entropy of the classifier, as (sum, count)."""
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits_BxK.astype(jnp.float32), label_B)
  return _weighted(per_image, weight_B)


def mask_confusion(mask_BxHxW, truth_BxHxW, weight_B, threshold=0.5):
  """Per-image pixel counts (tp, fp, fn, tn) of the thresholded mask against a ground-truth mask, each (B,)."""
  pred = mask_BxHxW >= threshold
  truth = truth_BxHxW > 0.5
  count = lambda a: jnp.sum(a, axis=(1, 2)).astype(jnp.float32) * weight_B
  return {"tp": count(pred & truth), "fp": count(pred & ~truth), "fn": count(~pred & truth),
          "tn": count(~pred & ~truth)}

