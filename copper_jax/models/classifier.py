"""The paper's stress-time classifier: a plain residual net with constant width, global average pooling and
one linear layer, so its class activation maps are exact (see `analysis.class_activation_maps`).

Layout: 3x3 stem conv (1 -> c, bias), then d stages of (N residual blocks, 2x2 max-pool), global average pool,
linear c -> K. A residual block is x + n x (3x3 conv, norm, ReLU). Depth (3x3 conv layers) d*n*N + 1.
Convolutions are zero-padded ('SAME'); odd sizes lose their last row or column at each pooling, like PyTorch.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from copper_jax.models.layers import Stage, max_pool_2x2, stem_conv


class ResNetClassifier(nn.Module):
  """c: channels, d: stages (poolings), n: convs per residual block, N: blocks per stage, num_classes: K.
  norm: "batch" | "group"; dtype: computation dtype (parameters stay float32, logits are float32)."""
  c: int
  d: int
  n: int
  N: int
  num_classes: int
  norm: str = "batch"
  dtype: Any = jnp.float32

  def setup(self):
    self.stem = stem_conv(self.c, self.dtype)
    self.stages = [Stage(self.c, self.n, self.N, self.norm, self.dtype) for _ in range(self.d)]
    # float32 head: logits and class maps keep full precision under a bfloat16 body.
    self.head = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32)

  def features(self, x_BxHxWx1: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Final feature map before global pooling: B x H/2^d x W/2^d x c, float32."""
    x = self.stem(x_BxHxWx1)
    for stage in self.stages:
      x = max_pool_2x2(stage(x, train))
    return x.astype(jnp.float32)

  def __call__(self, x_BxHxWx1: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Returns logits_BxK (float32)."""
    return self.head(self.features(x_BxHxWx1, train).mean(axis=(1, 2)))
