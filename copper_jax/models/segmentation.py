"""The paper's segmentation net: a UNet-like residual net whose mask is trained from image-level fractions.

Descending path: 3x3 stem conv (1 -> c, bias), then d times (N residual blocks, keep a skip, 2x2 max-pool).
Ascending path: d times (bilinear 2x upsampling, add the skip of that resolution, N residual blocks).
Head: 1x1 conv c -> 1 (zero-initialised) and a sigmoid. Channels stay c throughout; depth (3x3 conv layers)
2*d*n*N + 1.

Padding choice: the paper says both "valid convolutions" and "the mask keeps the image's resolution"; these
contradict each other, so every convolution here is zero-padded ('SAME') and the mask has the input's height and
width. Inputs whose height or width is not a multiple of 2^d are reflect-padded at the bottom and right to the next
multiple, and the mask is cropped back, so any size works.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from copper_jax.models.layers import Stage, max_pool_2x2, stem_conv, upsample_bilinear_2x


class SegmentationNet(nn.Module):
  """c: channels, d: resolution levels (poolings), n: convs per residual block, N: blocks per stage.
  norm: "batch" | "group"; dtype: computation dtype (parameters stay float32, the mask is float32)."""
  c: int
  d: int
  n: int
  N: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  def setup(self):
    self.stem = stem_conv(self.c, self.dtype)
    self.down = [Stage(self.c, self.n, self.N, self.norm, self.dtype) for _ in range(self.d)]
    self.up = [Stage(self.c, self.n, self.N, self.norm, self.dtype) for _ in range(self.d)]
    # Zero kernel: the mask starts at 0.5 everywhere. The residual stream's mean grows along the path (ReLU
    # branches add, skips double it), and a random head turns it into an offset that saturates the sigmoid at
    # init (logits near 27 at c=32, d=4, n=2, N=2), where the gradient vanishes.
    self.head = nn.Conv(1, (1, 1), kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                        param_dtype=jnp.float32)

  def features(self, x_BxHxWx1: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Final feature map before the 1x1 head: B x H x W x c, float32."""
    _, H, W, _ = x_BxHxWx1.shape
    multiple = 2 ** self.d
    pad_h, pad_w = -H % multiple, -W % multiple
    x = jnp.pad(x_BxHxWx1, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    x = self.stem(x)
    skips = []
    for stage in self.down:
      x = stage(x, train)
      skips.append(x)
      x = max_pool_2x2(x)
    for stage, skip in zip(reversed(self.up), reversed(skips)):
      x = stage(upsample_bilinear_2x(x) + skip, train)
    return x[:, :H, :W].astype(jnp.float32)

  def mask_logits(self, x_BxHxWx1: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The mask before the sigmoid: logits_BxHxW, float32."""
    return self.head(self.features(x_BxHxWx1, train))[..., 0]

  def __call__(self, x_BxHxWx1: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Returns mask_BxHxW, float32 in [0, 1]."""
    return nn.sigmoid(self.mask_logits(x_BxHxWx1, train))
