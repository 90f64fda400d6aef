"""What a model sees and how big it is: receptive field (formula and gradient measurement), parameter count,
class activation maps.

Receptive field, in input pixels, with m = n*N convs per stage (derivation in `receptive_field`):
  classifier   (one location of the final feature map): 2 + 2^d + 2m(2^d - 1)
  segmentation (widest over output pixels):           2^d(4m + 3) - 2m + 2 - 2^d * floor((2m + 2) / 2^d)
Both count the convolution path only; with norm="group" every output also depends on its whole image through the
group statistics.
"""
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax.errors import ConfigError
from copper_jax.models.classifier import ResNetClassifier
from copper_jax.models.segmentation import SegmentationNet

KINDS = ("classifier", "segmentation")


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ConfigError(f"model kind is {kind!r}; valid values: {', '.join(KINDS)}")


def receptive_field(kind: str, c: int, d: int, n: int, N: int) -> int:
  """Receptive field side in input pixels (c does not change it).

  Classifier: stem 3x3 adds 2; a 3x3 conv at stride s adds 2s; a 2x2 pool at stride s adds s and doubles s.
  Segmentation: walking back from one output pixel, each ascending stage widens the span by 2m pixels of its level
  and each bilinear upsampling maps a span of S+1 fine pixels to at most ceil(S/2)+2 coarse ones (fine pixel 2i
  reads coarse i-1 and i, pixel 2i+1 reads i and i+1); the widest output pixel gets the ceil at every level, which
  gives a span of L = 2m + 3 - floor((2m+2)/2^d) pixels at the coarsest level. The descending path then maps L
  coarse pixels back to 2^d*L + 2m(2^d - 1) pixels, plus 2 for the stem. Skips see a subset of that.
  The span depends on the output pixel's position modulo 2^d; this is the widest.
  """
  check_kind(kind)
  m = n * N
  if kind == "classifier":
    return 2 + 2 ** d + 2 * m * (2 ** d - 1)
  coarse_span = 2 * m + 3 - (2 * m + 2) // 2 ** d
  return 2 ** d * coarse_span + 2 * m * (2 ** d - 1) + 2


def measure_receptive_field(model: Any, variables: Any, size: int, samples: int = 16, seed: int = 0) -> int:
  """Receptive field side in pixels, measured as the nonzero extent of d output / d input on size x size inputs.

  Output: the feature map before the head, channels summed (the heads add no extent). Segmentation net: at the
  2^d pixels (c+a, c+a), c = size//2, a < 2^d, one per alignment to the pooling grid, widest kept. Classifier: at
  the centre location of the map before global pooling. Max-pooling passes gradient to one input per window and
  channel, and ReLU only where active, so the extent is the union over `samples` random inputs per alignment: a
  lower bound that reaches the formula for generic weights and enough channels (c = 8 in the tests). Eval mode,
  so BatchNorm does not couple the pixels of a batch.
  """
  if model.norm != "batch":
    raise ValueError("measure_receptive_field needs norm='batch': GroupNorm statistics span the whole image")
  is_classifier = isinstance(model, ResNetClassifier)
  phases = 1 if is_classifier else 2 ** model.d
  # Signed inputs keep more ReLUs active than uniform [0, 1] ones.
  x_SxHxWx1 = jax.random.normal(jax.random.key(seed), (samples * phases, size, size, 1))
  phase_S = np.arange(samples * phases) % phases

  def centre_output_sum(x, variables):
    features_SxhxwxC = model.apply(variables, x, False, method=type(model).features)
    if is_classifier:
      return features_SxhxwxC[:, features_SxhxwxC.shape[1] // 2, features_SxhxwxC.shape[2] // 2].sum()
    rows_S = size // 2 + phase_S
    return features_SxhxwxC[np.arange(x.shape[0]), rows_S, rows_S].sum()

  # Variables go in as arguments: closed-over constants make XLA constant-fold whole convolutions.
  grad_SxHxWx1 = jax.jit(jax.grad(centre_output_sum))(x_SxHxWx1, variables)
  nonzero_SxHxW = np.asarray(grad_SxHxWx1[..., 0] != 0)
  extent = 0
  for phase in range(phases):
    seen_HxW = nonzero_SxHxW[phase_S == phase].any(axis=0)
    rows, cols = np.nonzero(seen_HxW.any(axis=1))[0], np.nonzero(seen_HxW.any(axis=0))[0]
    if rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1:
      raise ValueError(f"size {size} is too small: the receptive field reaches the image border")
    extent = max(extent, rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
  return int(extent)


def param_count(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or shape structs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def describe(kind: str, c: int, d: int, n: int, N: int, num_classes: int | None = None) -> dict:
  """Depth (3x3 conv layers on the longest path), parameter count and receptive field (pixels) of a model."""
  check_kind(kind)
  if kind == "classifier":
    if num_classes is None:
      raise ConfigError("num_classes is required for kind 'classifier'")
    model, depth = ResNetClassifier(c, d, n, N, num_classes), d * n * N + 1
  else:
    model, depth = SegmentationNet(c, d, n, N), 2 * d * n * N + 1
  x_1xSxSx1 = jnp.zeros((1, 2 ** d, 2 ** d, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x_1xSxSx1, False))
  return {"kind": kind, "depth": depth, "params": param_count(variables["params"]),
          "receptive_field": receptive_field(kind, c, d, n, N)}


def class_activation_maps(model: ResNetClassifier, variables: Any, x_BxHxWx1: jnp.ndarray) -> jnp.ndarray:
  """Class activation maps cam_BxhxwxK (eval mode): the spatial mean of cam[..., k] plus bias k is logit k."""
  features_Bxhxwxc = model.apply(variables, x_BxHxWx1, False, method=ResNetClassifier.features)
  return jnp.einsum("bhwc,ck->bhwk", features_Bxhxwxc, variables["params"]["head"]["kernel"])


def upsample_maps(maps_Bxhxwxk: jnp.ndarray, height: int, width: int, d: int) -> jnp.ndarray:
  """Maps on the final feature grid brought to the image, (B, height, width, k): a grid cell covers 2^d pixels a
  side (bilinear between cell centres); rows and columns the poolings dropped take the nearest value."""
  B, h, w, k = maps_Bxhxwxk.shape
  scale = 2 ** d
  up = jax.image.resize(maps_Bxhxwxk, (B, h * scale, w * scale, k), "linear")
  return jnp.pad(up, ((0, 0), (0, height - h * scale), (0, width - w * scale), (0, 0)), mode="edge")
