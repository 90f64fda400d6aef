"""Building blocks shared by the classifier and the segmentation net (Flax Linen, NHWC).

Pooling and upsampling are written with strided slices, pads, selects and lerps because XLA's CPU backend runs them
(forward and gradient) far faster than `nn.max_pool` (reduce_window), `jax.image.resize` (dense interpolation
matrices) and concatenates; `launch/benchmark.py` measures each against those references and checks equality.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from copper_jax.errors import ConfigError

NORMS = ("batch", "group")


def _pool_windows(x_BxHxWxC: jnp.ndarray):
  """The four members of every 2x2 window, each B x H/2 x W/2 x C; an odd last row or column is dropped."""
  _, H, W, _ = x_BxHxWxC.shape
  x = x_BxHxWxC[:, :H // 2 * 2, :W // 2 * 2]
  return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """2x2 max-pooling with stride 2; an odd last row or column is dropped (like PyTorch and VALID padding).

  The gradient is JAX's rule for a max over a window (shared equally among tied maxima), written by hand: the
  rule derived through a reshape and a reduce takes several passes over the input on XLA's CPU backend.
  """
  top_left, top_right, bottom_left, bottom_right = _pool_windows(x_BxHxWxC)
  return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_fwd(x_BxHxWxC):
  pooled = max_pool_2x2(x_BxHxWxC)
  return pooled, (x_BxHxWxC, pooled)


def _max_pool_bwd(residuals, grad_pooled):
  x_BxHxWxC, pooled = residuals
  B, H, W, C = x_BxHxWxC.shape
  h, w = H // 2, W // 2
  hits = [window == pooled for window in _pool_windows(x_BxHxWxC)]
  share = grad_pooled / sum(hit.astype(grad_pooled.dtype) for hit in hits)
  top_left, top_right, bottom_left, bottom_right = [jnp.where(hit, share, 0) for hit in hits]
  # interleave the four quarter-size gradients back into their windows: columns, then rows
  top = jnp.stack([top_left, top_right], axis=3).reshape(B, h, 2 * w, C)
  bottom = jnp.stack([bottom_left, bottom_right], axis=3).reshape(B, h, 2 * w, C)
  grad_x = jnp.stack([top, bottom], axis=2).reshape(B, 2 * h, 2 * w, C)
  return (jnp.pad(grad_x, ((0, 0), (0, H - 2 * h), (0, W - 2 * w), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _neighbour(x: jnp.ndarray, axis: int, step: int) -> jnp.ndarray:
  """Each sample replaced by its neighbour along `axis` (step -1: the one before, +1: the one after); the edge
  sample that has no such neighbour keeps its own value (edge clamping). A pad and a select, not a concatenate,
  whose gradient XLA's CPU backend runs several times slower."""
  size = x.shape[axis]
  padding = [(0, 0, 0)] * x.ndim
  padding[axis] = (1, -1, 0) if step < 0 else (-1, 1, 0)
  shifted = lax.pad(x, jnp.zeros((), x.dtype), padding)
  index = lax.broadcasted_iota(jnp.int32, x.shape, axis)
  return jnp.where(index == (0 if step < 0 else size - 1), x, shifted)


def _upsample_axis_2x(x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """Doubles one axis by linear interpolation with half-pixel centres, clamping at the edges.

  Output 2i sits at input coordinate i - 1/4 and output 2i+1 at i + 1/4, so each is 3/4 of its own input sample
  plus 1/4 of the neighbour on its side.
  """
  even = 0.75 * x + 0.25 * _neighbour(x, axis, -1)
  odd = 0.75 * x + 0.25 * _neighbour(x, axis, +1)
  shape = list(x.shape)
  shape[axis] = 2 * x.shape[axis]
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
