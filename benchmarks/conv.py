"""Two formulations of the models' 3x3 'SAME' convolution (NHWC input, HWIO kernel), equal up to float rounding:

- `xla`: `lax.conv_general_dilated`, XLA's own convolution and its own gradients;
- `im2col`: the 9 shifted copies of the zero-padded input side by side on the channel axis (the patch matrix)
  times the kernel as one (9*Cin, Cout) matrix; its gradients are matmuls and slices too.

The layers use `xla` on every backend. On XLA's CPU backend the matmul at the heart of `im2col` runs near the
machine's matmul peak, but building the patch matrix (a 9-operand concatenate, 9x the activation) and its gradient
(9 overlapping slices added back) runs at a small fraction of memory-copy bandwidth, so forward plus both
gradients took longer than `xla` at the benchmark's first-level shapes, and more so on a loaded machine. XLA's own
weight gradient is the slow part of its convolution (slower than its forward pass: XLA turns it into a convolution
with an H x W window over transposed operands), but no formulation tried here (im2col, 9 shifted matmuls, batch
folding) beat it. `launch/benchmark.py` re-measures `im2col` against `xla` and checks their equality, so the
choice can be revisited on another backend or XLA version.
"""
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("xla", "im2col")


def patches_3x3(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """B x H x W x 9C: at each pixel its 3x3 neighbourhood (zero outside the image), row-major over the window
  and channels last, the order of an HWIO kernel reshaped to (9C, Cout)."""
  _, H, W, _ = x_BxHxWxC.shape
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, i:i + H, j:j + W] for i in range(3) for j in range(3)], axis=-1)


def conv3x3(x_BxHxWxC: jnp.ndarray, kernel_3x3xCxD: jnp.ndarray, impl: str = "xla") -> jnp.ndarray:
  """3x3 convolution with zero ('SAME') padding and stride 1: B x H x W x D."""
  if impl == "xla":
    return lax.conv_general_dilated(x_BxHxWxC, kernel_3x3xCxD, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if impl == "im2col":
    B, H, W, C = x_BxHxWxC.shape
    D = kernel_3x3xCxD.shape[-1]
    product = patches_3x3(x_BxHxWxC).reshape(B * H * W, 9 * C) @ kernel_3x3xCxD.reshape(9 * C, D)
    return product.reshape(B, H, W, D)
  raise ValueError(f"conv impl {impl!r}; valid values: {', '.join(CONV_IMPLS)}")
