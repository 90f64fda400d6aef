"""PyTorch twins of copper_jax's two models, and the PyTorch side of `launch/benchmark.py`.

Runs in an interpreter with torch (and numpy), not in the project's JAX environment: `torch_worker.py` imports it
from this folder. Nothing here imports copper_jax.

The nets follow copper_jax/models/ layer for layer (channels first, NCHW):
- `ResNetClassifier`: 3x3 stem conv (1 -> c, bias), d stages of (N residual blocks, 2x2 max-pool), global average
  pool, linear c -> K. A residual block is x + n x (3x3 conv without bias, norm, ReLU), c channels throughout.
- `SegmentationNet`: the same stem and descending stages, each keeping a skip before its pooling; then d ascending
  stages, each on (bilinear 2x upsampling + the skip of that resolution); a zero-initialised 1x1 head c -> 1 and a
  sigmoid. Inputs whose sides are not multiples of 2^d are reflect-padded at the bottom and right and the mask is
  cropped back.
Convolutions are zero-padded to keep the size ('SAME'); max-pooling drops an odd last row or column; upsampling is
half-pixel bilinear (`align_corners=False`), the same as copper_jax's `upsample_bilinear_2x`. BatchNorm has
momentum 0.1 in PyTorch's convention (0.9 in Flax's) and epsilon 1e-5; GroupNorm uses the largest divisor of c up
to 8 as its group count. Weights start as Flax's do: LeCun-normal (truncated) kernels, zero biases, unit norm
scales, a zero head kernel in the segmentation net. So the parameter counts equal the JAX models', and with the
same weights (`load_flax_arrays`) the outputs agree up to float rounding. One known difference: PyTorch's running
variance uses the unbiased batch variance, Flax's the biased one; training-mode outputs do not depend on it.

Benches (`run(steps)` returns the wall seconds of `steps` steps):
- `TrainBench`: one Adam step (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, as `benchmark._optimizer`) on a fixed random
  batch, with the loss of the JAX step it is timed against: softmax cross entropy for the classifier; for the
  segmentation net, the squared error between each image's mean mask and its label's target plus 0.1 x the
  binarisation penalty mean(s(1 - s)), averaged over the batch (`benchmark._seg_step`, configs/sweep.py's default).
- `InferBench`: the segmentation net's mask of one whole image in eval mode.
- `ConvPass`: one 3x3 convolution's forward pass, input gradient or weight gradient.
"""
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("classifier", "segmentation")
NORMS = ("batch", "group")
NUM_CLASSES = 16
_TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2], as in Flax's initialisers


def group_count(c: int) -> int:
  """Number of GroupNorm groups: the largest divisor of c that is at most 8."""
  return max(g for g in range(1, min(8, c) + 1) if c % g == 0)


def _lecun_normal_(weight: torch.Tensor, fan_in: int) -> None:
  """Flax's default kernel initialiser: normal of variance 1/fan_in, truncated at two standard deviations."""
  std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
  with torch.no_grad():
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _conv(c_in: int, c_out: int, size: int, bias: bool) -> nn.Conv2d:
  conv = nn.Conv2d(c_in, c_out, size, padding=size // 2, bias=bias)
  _lecun_normal_(conv.weight, c_in * size * size)
  if bias:
    nn.init.zeros_(conv.bias)
  return conv


def _norm(norm: str, c: int) -> nn.Module:
  if norm not in NORMS:
    raise ValueError(f"norm is {norm!r}; valid values: {', '.join(NORMS)}")
  if norm == "batch":
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
  return nn.GroupNorm(group_count(c), c, eps=1e-5)


def stem_conv(c: int) -> nn.Conv2d:
  """3x3 convolution from the grey-level image to c channels, with bias."""
  return _conv(1, c, 3, bias=True)


class ResidualBlock(nn.Module):
  """x + n x (3x3 conv without bias, norm, ReLU), c channels throughout, zero padding."""

  def __init__(self, c: int, n: int, norm: str = "batch"):
    super().__init__()
    self.convs = nn.ModuleList(_conv(c, c, 3, bias=False) for _ in range(n))
    self.norms = nn.ModuleList(_norm(norm, c) for _ in range(n))

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    y = x_BxCxHxW
    for conv, norm in zip(self.convs, self.norms):
      y = F.relu(norm(conv(y)))
    return x_BxCxHxW + y


class Stage(nn.Module):
  """N residual blocks at one resolution."""

  def __init__(self, c: int, n: int, N: int, norm: str = "batch"):
    super().__init__()
    self.blocks = nn.ModuleList(ResidualBlock(c, n, norm) for _ in range(N))

  def forward(self, x_BxCxHxW: torch.Tensor) -> torch.Tensor:
    for block in self.blocks:
      x_BxCxHxW = block(x_BxCxHxW)
    return x_BxCxHxW


def max_pool_2x2(x_BxCxHxW: torch.Tensor) -> torch.Tensor:
  """2x2 max-pooling with stride 2; an odd last row or column is dropped."""
  return F.max_pool2d(x_BxCxHxW, 2)


def upsample_bilinear_2x(x_BxCxHxW: torch.Tensor) -> torch.Tensor:
  """Bilinear 2x upsampling with half-pixel centres, edge-clamped."""
  return F.interpolate(x_BxCxHxW, scale_factor=2, mode="bilinear", align_corners=False)


class ResNetClassifier(nn.Module):
  """c: channels, d: stages (poolings), n: convs per residual block, N: blocks per stage, num_classes: K."""

  def __init__(self, c: int, d: int, n: int, N: int, num_classes: int = NUM_CLASSES, norm: str = "batch"):
    super().__init__()
    self.stem = stem_conv(c)
    self.stages = nn.ModuleList(Stage(c, n, N, norm) for _ in range(d))
    self.head = nn.Linear(c, num_classes)
    _lecun_normal_(self.head.weight, c)
    nn.init.zeros_(self.head.bias)

  def features(self, x_Bx1xHxW: torch.Tensor) -> torch.Tensor:
    """Final feature map before global pooling: B x c x H/2^d x W/2^d."""
    x = self.stem(x_Bx1xHxW)
    for stage in self.stages:
      x = max_pool_2x2(stage(x))
    return x

  def forward(self, x_Bx1xHxW: torch.Tensor) -> torch.Tensor:
    """Returns logits_BxK."""
    return self.head(self.features(x_Bx1xHxW).mean(dim=(2, 3)))


def _reflect_pad_bottom_right(x_BxCxHxW: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
  """Reflect padding (edge not repeated) at the bottom and right, by index as `jnp.pad(mode="reflect")` does, so
  that it also holds when a pad is not smaller than the side (where `F.pad` refuses)."""
  _, _, H, W = x_BxCxHxW.shape
  if pad_h:
    rows = torch.as_tensor(np.pad(np.arange(H), (0, pad_h), mode="reflect"))
    x_BxCxHxW = x_BxCxHxW.index_select(2, rows)
  if pad_w:
    cols = torch.as_tensor(np.pad(np.arange(W), (0, pad_w), mode="reflect"))
    x_BxCxHxW = x_BxCxHxW.index_select(3, cols)
  return x_BxCxHxW


class SegmentationNet(nn.Module):
  """c: channels, d: resolution levels (poolings), n: convs per residual block, N: blocks per stage."""

  def __init__(self, c: int, d: int, n: int, N: int, norm: str = "batch"):
    super().__init__()
    self.d = d
    self.stem = stem_conv(c)
    self.down = nn.ModuleList(Stage(c, n, N, norm) for _ in range(d))
    # up[d-1] runs first, at the coarsest level, as copper_jax's `reversed(self.up)`
    self.up = nn.ModuleList(Stage(c, n, N, norm) for _ in range(d))
    self.head = nn.Conv2d(c, 1, 1)
    nn.init.zeros_(self.head.weight)  # the mask starts at 0.5 everywhere, as copper_jax's
    nn.init.zeros_(self.head.bias)

  def features(self, x_Bx1xHxW: torch.Tensor) -> torch.Tensor:
    """Final feature map before the 1x1 head: B x c x H x W."""
    H, W = x_Bx1xHxW.shape[2:]
    multiple = 2 ** self.d
    x = _reflect_pad_bottom_right(x_Bx1xHxW, -H % multiple, -W % multiple)
    x = self.stem(x)
    skips = []
    for stage in self.down:
      x = stage(x)
      skips.append(x)
      x = max_pool_2x2(x)
    for stage, skip in zip(reversed(self.up), reversed(skips)):
      x = stage(upsample_bilinear_2x(x) + skip)
    return x[:, :, :H, :W]

  def mask_logits(self, x_Bx1xHxW: torch.Tensor) -> torch.Tensor:
    """The mask before the sigmoid: logits_BxHxW."""
    return self.head(self.features(x_Bx1xHxW))[:, 0]

  def forward(self, x_Bx1xHxW: torch.Tensor) -> torch.Tensor:
    """Returns mask_BxHxW in [0, 1]."""
    return torch.sigmoid(self.mask_logits(x_Bx1xHxW))


def make_model(kind: str, c: int, d: int, n: int, N: int, num_classes: int = NUM_CLASSES,
               norm: str = "batch") -> nn.Module:
  if kind == "classifier":
    return ResNetClassifier(c, d, n, N, num_classes, norm)
  if kind == "segmentation":
    return SegmentationNet(c, d, n, N, norm)
  raise ValueError(f"model kind is {kind!r}; valid values: {', '.join(KINDS)}")


def param_count(model: nn.Module) -> int:
  """Number of trainable scalars (BatchNorm's running statistics are buffers, as Flax's batch_stats)."""
  return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# weights from Flax


def _torch_name(flax_key: str) -> str:
  """'params/stages_0/ResidualBlock_1/Conv_0/kernel' -> 'stages.0.blocks.1.convs.0.weight'."""
  collection, *path, leaf = flax_key.split("/")
  parts = []
  for part in path:
    name, _, index = part.rpartition("_")
    if name in ("stages", "down", "up"):
      parts += [name, index]
    elif name == "ResidualBlock":
      parts += ["blocks", index]
    elif name == "Conv":
      parts += ["convs", index]
    elif name in ("BatchNorm", "GroupNorm"):
      parts += ["norms", index]
    else:
      parts.append(part)  # stem, head
  leaves = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
            ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
  return ".".join(parts + [leaves[(collection, leaf)]])


def load_flax_arrays(model: nn.Module, arrays: dict) -> None:
  """Loads a Flax model's variables, flattened to {'params/stem/kernel': array, 'batch_stats/...': array}, into
  its twin: HWIO kernels become OIHW, a dense (in, out) kernel becomes (out, in). Every parameter and running
  statistic of the twin must be given, and nothing else."""
  state = model.state_dict()
  expected = {name for name in state if not name.endswith("num_batches_tracked")}
  loaded = {}
  for key, value in arrays.items():
    value = torch.as_tensor(np.asarray(value, np.float32))
    if value.ndim == 4:
      value = value.permute(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    loaded[_torch_name(key)] = value
  if set(loaded) != expected:
    raise ValueError(f"missing {sorted(expected - set(loaded))}, unexpected {sorted(set(loaded) - expected)}")
  for name, value in loaded.items():
    if tuple(value.shape) != tuple(state[name].shape):
      raise ValueError(f"{name}: shape {tuple(value.shape)}, the twin's {tuple(state[name].shape)}")
  model.load_state_dict(loaded, strict=False)


def forward_npz(in_path: str, out_path: str) -> None:
  """Equality check helper: reads kind, c, d, n, N, num_classes, norm, the image (B x H x W x 1) and the Flax
  variables (other keys, flattened with '/') from `in_path`; writes the twin's eval-mode output ('logits' B x K
  for the classifier, 'mask_logits' B x H x W for the segmentation net) and its parameter count to `out_path`."""
  with np.load(in_path) as data:
    arrays = dict(data)
  meta = {key: arrays.pop(key) for key in ("kind", "c", "d", "n", "N", "num_classes", "norm", "image")}
  kind, norm = str(meta["kind"]), str(meta["norm"])
  model = make_model(kind, *(int(meta[key]) for key in ("c", "d", "n", "N", "num_classes")), norm=norm).eval()
  load_flax_arrays(model, arrays)
  x = torch.as_tensor(meta["image"]).permute(0, 3, 1, 2)
  with torch.no_grad():
    out = model(x) if kind == "classifier" else model.mask_logits(x)
  np.savez(out_path, **{"logits" if kind == "classifier" else "mask_logits": out.numpy(),
                        "params": param_count(model)})


# ---------------------------------------------------------------------------------------------------------------
# benches


def _clock(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


class TrainBench:
  """Training steps of one model on a fixed random batch (see the module docstring for the loss)."""

  def __init__(self, kind: str, c: int, d: int, n: int, N: int, batch: int, patch: int,
               num_classes: int = NUM_CLASSES, norm: str = "batch", binarise_weight: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    self.kind = kind
    self.model = make_model(kind, c, d, n, N, num_classes, norm).train()
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    self.image = torch.randn(batch, 1, patch, patch)
    self.label = torch.randint(0, num_classes, (batch,))
    # benchmark._member(0)'s targets: one per label
    self.target = torch.linspace(0.05, 0.95, num_classes)[self.label]
    self.binarise_weight = binarise_weight

  def loss(self) -> torch.Tensor:
    if self.kind == "classifier":
      return F.cross_entropy(self.model(self.image), self.label)
    mask_BxHxW = self.model(self.image)
    fraction_B = mask_BxHxW.mean(dim=(1, 2))
    binarise_B = (mask_BxHxW * (1.0 - mask_BxHxW)).mean(dim=(1, 2))
    return (torch.square(fraction_B - self.target) + self.binarise_weight * binarise_B).mean()

  def step(self) -> torch.Tensor:
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss()
    loss.backward()
    self.optimizer.step()
    return loss

  def run(self, steps: int) -> float:
    def go():
      for _ in range(steps):
        self.step()
    return _clock(go)


class InferBench:
  """The segmentation net's mask of one random height x width image, eval mode, no autograd."""

  def __init__(self, c: int, d: int, n: int, N: int, height: int, width: int, norm: str = "batch", seed: int = 0):
    torch.manual_seed(seed)
    self.model = SegmentationNet(c, d, n, N, norm).eval()
    self.image = torch.randn(1, 1, height, width)

  def run(self, steps: int) -> float:
    def go():
      with torch.inference_mode():
        for _ in range(steps):
          self.model(self.image)
    return _clock(go)


class ConvPass:
  """One 3x3 'SAME' convolution (c -> c, no bias) on batch x c x size x size: its forward pass ("forward"), input
  gradient ("input_grad") or weight gradient ("weight_grad") alone."""

  def __init__(self, batch: int, size: int, c: int, which: str, seed: int = 0):
    if which not in ("forward", "input_grad", "weight_grad"):
      raise ValueError(f"conv pass {which!r}; valid values: forward, input_grad, weight_grad")
    torch.manual_seed(seed)
    self.x, self.dy = torch.randn(batch, c, size, size), torch.randn(batch, c, size, size)
    self.w = torch.randn(c, c, 3, 3) / (3 * math.sqrt(c))
    self.which = which

  def run(self, steps: int) -> float:
    def go():
      with torch.no_grad():
        for _ in range(steps):
          if self.which == "forward":
            F.conv2d(self.x, self.w, padding=1)
          else:
            torch.ops.aten.convolution_backward(
                self.dy, self.x, self.w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [self.which == "input_grad", self.which == "weight_grad", False])
    return _clock(go)
