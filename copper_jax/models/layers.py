"""Building blocks shared by the classifier and the segmentation net (Flax Linen, NHWC).

Pooling and upsampling are written with reshapes, slices and lerps because XLA's CPU backend runs them far faster
than `nn.max_pool` (reduce_window) and `jax.image.resize` (dense interpolation matrices).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from copper_jax.errors import ConfigError

NORMS = ("batch", "group")


def max_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max-pooling with stride 2; an odd last row or column is dropped (like PyTorch and VALID padding)."""
  B, H, W, C = x_BxHxWxC.shape
  h, w = H // 2, W // 2
  x = x_BxHxWxC[:, :2 * h, :2 * w]
  return x.reshape(B, h, 2, w, 2, C).max(axis=(2, 4))


def _upsample_axis_2x(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Doubles one axis by linear interpolation with half-pixel centres, clamping at the edges.

  Output 2i sits at input coordinate i - 1/4 and output 2i+1 at i + 1/4, so each is 3/4 of its own input sample
  plus 1/4 of the neighbour on its side.
  """
  size = x.shape[axis]
  first, last = lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, size - 1, size, axis=axis)
  before = jnp.concatenate([first, lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis=axis)
  after = jnp.concatenate([lax.slice_in_dim(x, 1, size, axis=axis), last], axis=axis)
  even = 0.75 * x + 0.25 * before
  odd = 0.75 * x + 0.25 * after
  shape = list(x.shape)
  shape[axis] = 2 * size
  return jnp.stack([even, odd], axis=axis + 1).reshape(shape)


def upsample_bilinear_2x(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """Bilinear 2x upsampling (half-pixel centres, edge-clamped): equals PyTorch `align_corners=False` and
  `jax.image.resize(..., "bilinear")` at exactly twice the size. Returns B x 2H x 2W x C."""
  return _upsample_axis_2x(_upsample_axis_2x(x_BxHxWxC, 1), 2)


def group_count(c: int) -> int:
  """Number of GroupNorm groups: the largest divisor of c that is at most 8."""
  return max(g for g in range(1, min(8, c) + 1) if c % g == 0)


def check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ConfigError(f"model.norm is {norm!r}; valid values: {', '.join(NORMS)}")


def norm_layer(norm: str, c: int, train: bool, dtype: Any) -> nn.Module:
  """BatchNorm as in the paper, or GroupNorm. BatchNorm has no `axis_name`: each sweep member keeps its own
  statistics."""
  check_norm(norm)
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        param_dtype=jnp.float32)
  return nn.GroupNorm(num_groups=group_count(c), epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)


def stem_conv(c: int, dtype: Any) -> nn.Conv:
  """3x3 convolution from the grey-level image to c channels, with bias (no norm follows it)."""
  return nn.Conv(c, (3, 3), padding="SAME", dtype=dtype, param_dtype=jnp.float32)


class ResidualBlock(nn.Module):
  """x + n x (3x3 conv without bias, norm, ReLU), c channels throughout, zero ('SAME') padding."""
  c: int
  n: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = x_BxHxWxC
    for _ in range(self.n):
      # The norm's shift makes a conv bias redundant.
      y = nn.Conv(self.c, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32)(y)
      y = nn.relu(norm_layer(self.norm, self.c, train, self.dtype)(y))
    return x_BxHxWxC + y


class Stage(nn.Module):
  """N residual blocks at one resolution."""
  c: int
  n: int
  N: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jnp.ndarray, train: bool) -> jnp.ndarray:
    for _ in range(self.N):
      x_BxHxWxC = ResidualBlock(self.c, self.n, self.norm, self.dtype)(x_BxHxWxC, train)
    return x_BxHxWxC
