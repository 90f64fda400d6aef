"""How fast training, sweeps, prediction and the input pipeline run here, against this machine's matmul peak, K
separate runs and (optionally) PyTorch: what `launch/benchmark.py` runs.

PyTorch: given an interpreter with torch (`torch_python`), the same steps run in PyTorch too, in a subprocess
(`torch_worker.py`, beside this file) whose items interleave with ours: `torch_nets.py` holds PyTorch twins of
copper_jax's two nets (same layers, same parameter counts, checked in `checks`), their training step with Adam
and the same loss, whole-image inference and single convolution passes. Nothing outside the repository is used.

Timing: the items of a group (say every training shape of both models, the peak matmul and PyTorch's steps) run
round-robin, one repeat of each per round, so a shared machine's changing load hits all of them alike; each item
reports the median, min and max over the rounds (seconds per step), after warm-up, with compile time apart. A
repeat runs enough steps to last about `min_repeat_s`. Ratios between two items of a group are also taken round by
round (paired), and their median reported, which is the figure least moved by load.

Speed never comes from skipping work: `checks` holds the fast paths compared with the plain ones (the layers'
pooling and upsampling against nn.max_pool and jax.image.resize, the im2col convolution against XLA's, each lifted
member against its single-member step, tiled against whole-image prediction; with PyTorch, also the twins'
parameter counts against ours); the launcher fails when one differs.
"""
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax

from benchmarks import conv
from copper_jax import host_memory, members, optim
from copper_jax.prediction import sweep as prediction_sweep
from copper_jax.prediction import tiling
from copper_jax.classifier import steps as clf_steps
from copper_jax.data import folder, sampler, synthetic
from copper_jax.models import describe, layers, make_model
from copper_jax.sweep import steps as seg_steps

NUM_CLASSES = 16  # stress-time labels of the paper's data; also the PyTorch twin's classifier head


@dataclasses.dataclass(frozen=True)
class Shape:
  """A model size (c, d, n, N) trained on batches of `batch` square patches of side `patch`."""
  name: str
  c: int
  d: int
  n: int
  N: int
  patch: int
  batch: int
  dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """Members-axis measurement: every strategy in `strategies` at every K in `members`, at `shape`."""
  shape: Shape
  strategies: tuple
  members: tuple
  chunk: int = 0


@dataclasses.dataclass(frozen=True)
class Preset:
  shapes: tuple                   # training throughput of both models
  sweeps: tuple                   # SweepSpec per members measurement
  predict_shape: Shape            # model of the full-resolution prediction
  predict_hw: tuple               # (H, W) of the predicted image
  pipeline_images_per_label: int  # synthetic images written per label for the input pipeline
  pipeline_preset: str            # synthetic preset of those images
  pipeline_shape: Shape           # patch and batch size the pipeline delivers
  conv_shapes: tuple              # shapes whose first-level convolution is timed in both formulations
  peak_n: int                     # side of the square matmul that measures the peak
  peak_dtypes: tuple
  repeats: int
  min_repeat_s: float
  paper_sweep: dict | None = None  # projection of a paper-scale sweep: members, images, epochs, batch


SMALL = Shape("small", 8, 2, 1, 1, 64, 16)
MEDIUM = Shape("medium", 16, 3, 2, 1, 128, 16)
LARGE = Shape("large", 32, 4, 2, 1, 128, 8)
PAPER_256 = Shape("paper256", 32, 3, 2, 1, 256, 64, "bfloat16")
PAPER_512 = Shape("paper512", 32, 3, 2, 1, 512, 64, "bfloat16")
PAPER_SWEEP = Shape("paper_sweep", 32, 3, 2, 1, 256, 32, "bfloat16")  # configs/sweep.py:paper
TINY = Shape("tiny", 4, 1, 1, 1, 16, 2)
STRATEGIES = ("unrolled", "vmap", "map")

PRESETS = {
    # On CPU, vmap and map at medium take seconds per step (grouped convolutions, convolutions in loops), so only
    # the unrolled strategy is measured there.
    "cpu": Preset(shapes=(SMALL, MEDIUM, LARGE),
                  sweeps=(SweepSpec(SMALL, STRATEGIES, (1, 4, 8)), SweepSpec(MEDIUM, ("unrolled",), (1, 4, 8))),
                  predict_shape=MEDIUM, predict_hw=(960, 1280), pipeline_images_per_label=2,
                  pipeline_preset="paper", pipeline_shape=MEDIUM, conv_shapes=(MEDIUM, LARGE), peak_n=2048,
                  peak_dtypes=("float32",), repeats=5, min_repeat_s=0.5),
    "gpu": Preset(shapes=(SMALL, MEDIUM, LARGE, PAPER_256, PAPER_512),
                  # an unrolled program grows with K: compile time limits it to small K
                  sweeps=(SweepSpec(SMALL, STRATEGIES, (1, 4, 8, 16), chunk=8),
                          SweepSpec(SMALL, ("vmap", "map"), (64,), chunk=16),
                          SweepSpec(PAPER_SWEEP, ("vmap", "map"), (1, 4, 8, 16), chunk=8),
                          SweepSpec(PAPER_SWEEP, ("unrolled",), (1, 4))),
                  predict_shape=MEDIUM, predict_hw=(960, 1280), pipeline_images_per_label=2,
                  pipeline_preset="paper", pipeline_shape=PAPER_SWEEP, conv_shapes=(MEDIUM, LARGE, PAPER_256),
                  peak_n=8192, peak_dtypes=("float32", "bfloat16"), repeats=5, min_repeat_s=0.5,
                  paper_sweep={"members": 16, "images": 640, "epochs": 200, "batch": PAPER_SWEEP.batch}),
}
QUICK = Preset(shapes=(TINY,), sweeps=(SweepSpec(TINY, STRATEGIES, (2,)),), predict_shape=TINY,
               predict_hw=(40, 56), pipeline_images_per_label=1, pipeline_preset="tiny", pipeline_shape=TINY,
               conv_shapes=(TINY,), peak_n=64, peak_dtypes=("float32",), repeats=2, min_repeat_s=0.0)


# ---------------------------------------------------------------------------------------------------------------
# analytic FLOPs


def conv_flops(kind: str, shape: Shape, height: int | None = None, width: int | None = None) -> dict:
  """FLOPs (multiply-add = 2) of the convolutions and the dense head for ONE image: forward, and a training step.

  A k x k convolution from Cin to Cout channels on an H x W map costs 2*H*W*Cin*Cout*k*k forward; its two
  gradients (input and weights) cost the same each, except that the stem needs no input gradient. Pooling, norms,
  activations and the optimizer are left out (memory-bound, not FLOP-bound).
  """
  H = height or shape.patch
  W = width or shape.patch
  c = shape.c
  stem = 2 * H * W * 1 * c * 9
  body = 0
  for level in range(shape.d):
    h, w = H // 2 ** level, W // 2 ** level
    paths = 2 if kind == "segmentation" else 1  # descending and ascending stages
    body += paths * shape.N * shape.n * 2 * h * w * c * c * 9
  head = 2 * H * W * c if kind == "segmentation" else 2 * c * NUM_CLASSES
  forward = stem + body + head
  return {"forward": forward, "train": 3 * forward - stem}


# ---------------------------------------------------------------------------------------------------------------
# timing


@dataclasses.dataclass
class Item:
  """One measured thing: `run(steps)` does `steps` steps and returns their wall time, finished, in seconds.

  `faults_per_step`: this process's minor page faults per step in each repeat, which shows whether freed memory
  was reused (see `copper_jax.host_memory`); work done in another process (PyTorch's) counts none here.
  `info`: what the PyTorch worker answered when it set the item up."""
  name: str
  run: Callable[[int], float]
  steps: int = 1
  per_step_s: list = dataclasses.field(default_factory=list)
  faults_per_step: list = dataclasses.field(default_factory=list)
  info: dict = dataclasses.field(default_factory=dict)


def _minor_faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def summary(values) -> dict:
  values = [float(v) for v in values]
  return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def interleave(items, repeats: int, min_repeat_s: float, log=print) -> None:
  """Calibrates each item's steps per repeat (after one warm-up step), then runs `repeats` rounds, each item once
  per round, appending seconds per step to `item.per_step_s`."""
  for item in items:
    one = item.run(1)
    item.steps = max(1, math.ceil(min_repeat_s / max(one, 1e-9)))
  for round_ in range(repeats):
    for item in items:
      faults = _minor_faults()
      item.per_step_s.append(item.run(item.steps) / item.steps)
      item.faults_per_step.append((_minor_faults() - faults) / item.steps)
    log(f"  round {round_ + 1}/{repeats}: " + ", ".join(f"{item.name} {item.per_step_s[-1] * 1e3:.0f} ms"
                                                         for item in items))


def paired_ratio(numerator: Item, denominator: Item) -> dict:
  """numerator/denominator of seconds per step, round by round."""
  return summary([a / b for a, b in zip(numerator.per_step_s, denominator.per_step_s)])


def _clock(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _memory(compiled) -> dict:
  """XLA's compiled memory analysis in bytes; `peak_bytes` = arguments + outputs + temporaries - aliased."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
            "generated_code_size_in_bytes", "peak_memory_in_bytes")
  out = {name: int(getattr(analysis, name)) for name in fields if hasattr(analysis, name)}
  out["peak_bytes"] = (out.get("argument_size_in_bytes", 0) + out.get("output_size_in_bytes", 0)
                       + out.get("temp_size_in_bytes", 0) - out.get("alias_size_in_bytes", 0))
  return out


# ---------------------------------------------------------------------------------------------------------------
# the JAX programs


def _model(kind: str, shape: Shape):
  config = ml_collections.ConfigDict({"c": shape.c, "d": shape.d, "n": shape.n, "N": shape.N, "norm": "batch",
                                      "dtype": shape.dtype})
  return make_model(kind, config, NUM_CLASSES if kind == "classifier" else None)


def _optimizer():
  return optim.make_optimizer(ml_collections.ConfigDict({"learning_rate": 1e-3, "schedule": "constant", "b1": 0.9,
                                                         "b2": 0.999, "eps": 1e-8, "warmup_steps": 0}), 1)


def _batch(shape: Shape, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(shape.batch, shape.patch, shape.patch, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, NUM_CLASSES, shape.batch), jnp.int32)}


def _member(m: int) -> dict:
  """A fixed hypothesis per member (distinct targets), as `seg_steps` expects."""
  return {"targets": jnp.linspace(0.05, 0.95, NUM_CLASSES) ** (1.0 + 0.25 * m), "learn_g": jnp.asarray(False),
          "g_lo": jnp.asarray(0.0), "g_hi": jnp.asarray(1.0)}


def _seg_step(model, optimizer):
  # configs/sweep.py's default loss
  return functools.partial(seg_steps.train_step, model=model, optimizer=optimizer, loss_kind="mse", tolerance=0.05,
                           binarise_weight=0.1)


@functools.lru_cache(maxsize=None)
def _init_fn(kind: str, shape: Shape):
  """Jitted state initialiser of one model (Flax's eager init costs seconds per call on CPU)."""
  model, optimizer = _model(kind, shape), _optimizer()
  if kind == "segmentation":
    return jax.jit(lambda key: seg_steps.init_state(model, optimizer, key, (shape.patch, shape.patch), NUM_CLASSES))
  return jax.jit(lambda key: clf_steps.init_state(model, optimizer, key, shape.patch))


class TooLarge(Exception):
  """The compiled program needs more memory than the device has."""


def _device_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() if hasattr(jax.devices()[0], "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


class Program:
  """A compiled, donated step with its live state: `run(steps)` advances it and returns the seconds taken.

  Raises TooLarge, before running, when XLA's memory analysis says it would not fit in the device's memory."""

  def __init__(self, fn, state, *rest):
    lowered = jax.jit(fn, donate_argnums=(0,)).lower(state, *rest)
    start = time.perf_counter()
    self._compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.memory = _memory(self._compiled)
    limit = _device_memory_bytes()
    if limit and self.memory.get("peak_bytes", 0) > 0.9 * limit:
      raise TooLarge(f"needs {self.memory['peak_bytes'] / 2 ** 30:.1f} GiB of the device's {limit / 2 ** 30:.1f}")
    self._state, self._rest = state, rest
    start = time.perf_counter()
    self._state, outputs = self._compiled(self._state, *self._rest)
    self.first_outputs = jax.device_get(outputs)
    self.first_step_s = time.perf_counter() - start

  def run(self, steps: int) -> float:
    def go():
      outputs = None
      for _ in range(steps):
        self._state, outputs = self._compiled(self._state, *self._rest)
      jax.block_until_ready(outputs)
    return _clock(go)


def train_program(kind: str, shape: Shape) -> Program:
  model, optimizer = _model(kind, shape), _optimizer()
  state = _init_fn(kind, shape)(jax.random.key(0))
  if kind == "segmentation":
    return Program(_seg_step(model, optimizer), state, _member(0), _batch(shape))
  return Program(functools.partial(clf_steps.train_step, model=model, optimizer=optimizer), state, _batch(shape))


def sweep_program(shape: Shape, strategy: str, num_members: int, chunk: int) -> Program:
  """The segmentation step of `num_members` members lifted by `strategy`; every member starts from its own
  weights (seed m) and regresses to its own targets."""

  model, optimizer = _model("segmentation", shape), _optimizer()
  init = _init_fn("segmentation", shape)
  states = members.stack_members([init(jax.random.key(m)) for m in range(num_members)])
  member_arrays = members.stack_members([_member(m) for m in range(num_members)])
  lifted = members.lift(_seg_step(model, optimizer), strategy, num_members, chunk=chunk)
  return Program(lifted, states, member_arrays, _batch(shape))


# ---------------------------------------------------------------------------------------------------------------
# the PyTorch twins (benchmarks/torch_nets.py), in a process of its own so their steps interleave with ours

TORCH_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_worker.py")


class TorchWorker:
  """`torch_worker.py` run by `python` (an interpreter with torch and numpy) in a subprocess answering one JSON
  line per request; `reuse_memory` applies `host_memory.SETTINGS` there too."""
  def __init__(self, python: str, reuse_memory: bool):
    self.command = [python, "-u", TORCH_WORKER, json.dumps(host_memory.SETTINGS if reuse_memory else [])]
    self._process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self._next_id = 0
    self.info = self.request({"op": "hello"})

  def request(self, command: dict) -> dict:
    self._process.stdin.write(json.dumps(command) + "\n")
    self._process.stdin.flush()
    line = self._process.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker exited (status {self._process.wait()}); run {' '.join(self.command)} "
                         "alone to see why")
    reply = json.loads(line)
    if "error" in reply:
      raise RuntimeError(f"PyTorch worker: {reply['error']}")
    return reply

  def item(self, name: str, op: str, **args) -> Item:
    """A timed item of a training bench (op "train"), whole-image inference ("infer") or a conv pass ("conv");
    the worker's answer to setting it up (its first step's time, the model's parameter count) is `item.info`."""
    ident = self._next_id
    self._next_id += 1
    reply = self.request({"op": op, "id": ident, "args": args})
    return Item(name, lambda steps: self.request({"op": "run", "id": ident, "steps": steps})["seconds"], info=reply)

  def close(self):
    self._process.stdin.close()
    self._process.wait()


# ---------------------------------------------------------------------------------------------------------------
# sections


def _peak_items(preset: Preset):
  items = []
  for dtype in preset.peak_dtypes:
    n = preset.peak_n
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((n, n)), dtype) for _ in range(2))
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))

    def run(steps, a=a, b=b, matmul=matmul):
      def go():
        out = None
        for _ in range(steps):
          out = matmul(a, b)
        jax.block_until_ready(out)
      return _clock(go)
    items.append(Item(f"matmul_{dtype}", run))
  return items


def measure_training(preset: Preset, torch: TorchWorker | None, log) -> dict:
  """Training steps of both models at every shape, the peak matmul and PyTorch's steps, interleaved."""
  peak_items = _peak_items(preset)
  rows, items, skipped = [], list(peak_items), []
  for shape in preset.shapes:
    for kind in ("segmentation", "classifier"):
      log(f"compiling {kind} {shape.name}")
      try:
        program = train_program(kind, shape)
      except TooLarge as e:
        skipped.append({"kind": kind, "shape": dataclasses.asdict(shape), "skipped": str(e)})
        continue
      item = Item(f"{kind[:3]}_{shape.name}", program.run)
      torch_item = None
      if torch is not None and shape.dtype == "float32":
        torch_item = torch.item(f"torch_{kind[:3]}_{shape.name}", "train", kind=kind, c=shape.c, d=shape.d,
                                n=shape.n, N=shape.N, batch=shape.batch, patch=shape.patch)
      rows.append((kind, shape, program, item, torch_item))
      items += [item] + ([torch_item] if torch_item else [])
  log(f"timing {len(items)} items, {preset.repeats} rounds")
  interleave(items, preset.repeats, preset.min_repeat_s, log)
  peaks = {item.name.split("_", 1)[1]: summary(2 * preset.peak_n ** 3 / t / 1e9 for t in item.per_step_s)
           for item in peak_items}
  out = []
  for kind, shape, program, item, torch_item in rows:
    flops = conv_flops(kind, shape)["train"] * shape.batch
    peak = peaks.get(shape.dtype, peaks["float32"])["median"]
    row = {"kind": kind, "shape": dataclasses.asdict(shape), "compile_s": program.compile_s,
           "first_step_s": program.first_step_s, "steps_per_repeat": item.steps, "step_s": summary(item.per_step_s),
           "images_per_s": summary(shape.batch / t for t in item.per_step_s),
           "megapixels_per_s": summary(shape.batch * shape.patch ** 2 / t / 1e6 for t in item.per_step_s),
           "params": describe(kind, shape.c, shape.d, shape.n, shape.N, NUM_CLASSES)["params"],
           "gflop_per_step": flops / 1e9,
           "gflop_s": summary(flops / t / 1e9 for t in item.per_step_s),
           "minor_faults_per_step": summary(item.faults_per_step), "memory": program.memory}
    row["fraction_of_peak"] = row["gflop_s"]["median"] / peak
    if torch_item is not None:
      row["torch"] = {"params": torch_item.info["params"], "step_s": summary(torch_item.per_step_s),
                      "images_per_s": summary(shape.batch / t for t in torch_item.per_step_s),
                      "gflop_s": summary(flops / t / 1e9 for t in torch_item.per_step_s)}
      # JAX images/s over PyTorch's: paired round by round, of the medians, and of the best rounds
      paired = paired_ratio(torch_item, item)
      row["jax_over_torch"] = {"paired_median": paired["median"], "paired_min": paired["min"],
                               "paired_max": paired["max"],
                               "of_medians": statistics.median(torch_item.per_step_s) / statistics.median(
                                   item.per_step_s),
                               "of_best": min(torch_item.per_step_s) / min(item.per_step_s)}
    out.append(row)
  return {"peak_gflop_s": peaks, "peak_matmul_n": preset.peak_n, "rows": out, "skipped": skipped}


def _losses_close(a, b, tolerance: float) -> dict:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
  return {"max_rel_diff": rel, "tolerance": tolerance, "passed": bool(rel <= tolerance)}


def measure_sweeps(preset: Preset, log) -> tuple:
  """Members strategies x K, each against the single-member step; returns (sections, checks)."""
  sections, checks = [], {}
  for spec in preset.sweeps:
    shape = spec.shape
    log(f"compiling the members sweep at {shape.name}")
    model, optimizer = _model("segmentation", shape), _optimizer()
    init = _init_fn("segmentation", shape)
    single = Program(_seg_step(model, optimizer), init(jax.random.key(0)), _member(0), _batch(shape))
    one = Item("K1_single", single.run)
    programs, skipped = {}, []
    for num_members in spec.members:
      for strategy in spec.strategies:
        log(f"  {strategy} K={num_members}")
        try:
          programs[(strategy, num_members)] = sweep_program(shape, strategy, num_members, spec.chunk)
        except TooLarge as e:
          skipped.append({"strategy": strategy, "members": num_members, "skipped": str(e)})
    # each member stepped alone from the same start: the reference losses of the lifted first steps
    alone = jax.jit(_seg_step(model, optimizer))
    separate = [float(alone(init(jax.random.key(m)), _member(m), _batch(shape))[1]["loss_sum"])
                for m in range(max(spec.members))]
    for (strategy, num_members), program in programs.items():
      checks[f"members_{shape.name}_{strategy}_K{num_members}_vs_separate"] = _losses_close(
          program.first_outputs["loss_sum"], separate[:num_members], 1e-4)
    items = [one] + [Item(f"{s}_K{k}", p.run) for (s, k), p in programs.items()]
    log(f"timing {len(items)} items, {preset.repeats} rounds")
    interleave(items, preset.repeats, preset.min_repeat_s, log)
    rows = []
    for ((strategy, num_members), program), item in zip(programs.items(), items[1:]):
      efficiency = summary(num_members * a / b for a, b in zip(one.per_step_s, item.per_step_s))
      rows.append({"strategy": strategy, "members": num_members, "compile_s": program.compile_s,
                   "step_s": summary(item.per_step_s), "efficiency": efficiency,
                   "minor_faults_per_step": summary(item.faults_per_step), "memory": program.memory})
    fastest = {}
    for num_members in spec.members:
      candidates = [row for row in rows if row["members"] == num_members]
      if candidates:
        fastest[str(num_members)] = min(candidates, key=lambda row: row["step_s"]["median"])["strategy"]
    sections.append({"shape": dataclasses.asdict(shape), "chunk": spec.chunk, "single_step_s": summary(one.per_step_s),
                     "rows": rows, "fastest": fastest, "skipped": skipped})
  return sections, checks


def measure_prediction(preset: Preset, torch: TorchWorker | None, log) -> tuple:
  """One image of `predict_hw` through `tiling.predict_tiled`: whole, and in the default tiles."""
  shape = preset.predict_shape
  model = _model("segmentation", shape)
  state = _init_fn("segmentation", shape)(jax.random.key(0))
  # Generic weights and a random head (the zero-initialised head would make every mask 0.5 and the tiling check
  # empty), small enough to keep the logits near their trained range: float32 rounding grows with their size.
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: p + jnp.asarray(0.05 * rng.normal(size=p.shape), p.dtype), state.params)
  head = params["net"]["head"]
  params["net"]["head"] = {**head, "kernel": jnp.asarray(rng.normal(size=head["kernel"].shape) / math.sqrt(shape.c),
                                                         jnp.float32)}
  state = state.replace(params=params)
  masks = jax.jit(lambda state, image: seg_steps.predict_masks(state, {"image": image}, model=model))
  logits = jax.jit(lambda state, image: model.apply({"params": state.params["net"], "batch_stats": state.batch_stats},
                                                    image, False, method=type(model).mask_logits))
  image = np.random.default_rng(0).normal(size=preset.predict_hw).astype(np.float32)
  tile, margin, multiple = tiling.tile_geometry(ml_collections.ConfigDict(
      {"c": shape.c, "d": shape.d, "n": shape.n, "N": shape.N, "norm": "batch"}), prediction_sweep.FALLBACK_TILE)
  items, first = [], {}
  for name, side in (("whole", 0), ("tiled", tile)):
    def run(steps, side=side):
      def go():
        for _ in range(steps):
          tiling.predict_tiled(lambda x: masks(state, jnp.asarray(x)), image, side, margin, multiple)
      return _clock(go)
    first[name] = run(1)
    items.append(Item(name, run))
  torch_item = None
  if torch is not None:
    torch_item = torch.item("torch_whole", "infer", c=shape.c, d=shape.d, n=shape.n, N=shape.N,
                            height=preset.predict_hw[0], width=preset.predict_hw[1])
    items.append(torch_item)
  log(f"timing prediction, {preset.repeats} rounds")
  interleave(items, preset.repeats, 0.0, log)
  # the tiles must give the whole image's logits (the mask's sigmoid hides differences where it saturates)
  whole, tiled = (tiling.predict_tiled(lambda x: logits(state, jnp.asarray(x)), image, side, margin, multiple)
                  for side in (0, tile))
  diff = float(np.max(np.abs(tiled - whole)) / max(float(np.max(np.abs(whole))), 1e-12))
  check = {"max_rel_diff": diff, "tolerance": 1e-5, "passed": bool(diff <= 1e-5)}
  result = {"shape": dataclasses.asdict(shape), "height": preset.predict_hw[0], "width": preset.predict_hw[1],
            "tile": tile, "margin": margin, "gflop_forward": conv_flops("segmentation", shape, *preset.predict_hw)[
                "forward"] / 1e9}
  for item in items[:2]:
    result[item.name] = {"first_s": first[item.name], "s_per_image": summary(item.per_step_s)}
  if torch_item is not None:
    result["torch_whole"] = {"s_per_image": summary(torch_item.per_step_s)}
    result["jax_over_torch"] = {name: {"paired_median": paired_ratio(torch_item, item)["median"],
                                       "of_best": min(torch_item.per_step_s) / min(item.per_step_s)}
                                for name, item in zip(("whole", "tiled"), items)}
  return result, {"prediction_tiled_vs_whole": check}


def measure_pipeline(preset: Preset, log) -> dict:
  """Patches per second from `PatchSampler.iterate` on a synthetic set written to and read back from disk."""
  shape = preset.pipeline_shape
  with tempfile.TemporaryDirectory() as root:
    log(f"writing {preset.pipeline_preset} synthetic images to {root}")
    generate_s = _clock(lambda: synthetic.generate(root, preset=preset.pipeline_preset,
                                                   images_per_label=preset.pipeline_images_per_label))
    loaded = {}
    load_s = _clock(lambda: loaded.setdefault("dataset", folder.load_folder(root)))
    dataset = loaded["dataset"]
    patches = sampler.PatchSampler(dataset, np.arange(len(dataset.images)), shape.patch, shape.batch, seed=0)
    position = [0]

    def run(steps):
      def go():
        for _ in patches.iterate(position[0], steps):
          pass
        position[0] += steps
      return _clock(go)
    item = Item("pipeline", run)
    interleave([item], preset.repeats, preset.min_repeat_s, log)
  return {"images": len(dataset.images), "image_shape": list(dataset.image_shape), "generate_s": generate_s,
          "load_s": load_s, "patch": shape.patch, "batch": shape.batch, "steps_per_repeat": item.steps,
          "patches_per_s": summary(shape.batch / t for t in item.per_step_s)}


def measure_layers(preset: Preset, log) -> tuple:
  """The layers' pooling and upsampling against `nn.max_pool` and `jax.image.resize`, and the im2col convolution
  against XLA's: forward and gradients, equality and time, at each conv shape's first level."""
  def plain_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

  def plain_upsample(x):
    B, H, W, C = x.shape
    return jax.image.resize(x, (B, 2 * H, 2 * W, C), "bilinear")

  def value_and_grads(fn, *args):
    # the output weighted by a fixed random array, so that every output element's gradient matters
    out_shape = jax.eval_shape(fn, *args)
    weights = jnp.asarray(np.random.default_rng(7).normal(size=out_shape.shape), out_shape.dtype)
    return jax.jit(lambda *a: jax.value_and_grad(lambda *b: jnp.sum(fn(*b) * weights),
                                                 argnums=tuple(range(len(a))))(*a))

  checks, rows = {}, []
  for shape in preset.conv_shapes:
    rng = np.random.default_rng(0)
    # continuous values: no ties within a pooling window, where the two poolings' gradients differ by convention
    # (a max through a reshape shares a tie's gradient, reduce_window gives it to one element)
    x = jnp.asarray(rng.normal(size=(shape.batch, shape.patch, shape.patch, shape.c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, shape.c, shape.c)) / (3 * math.sqrt(shape.c)), jnp.float32)
    pairs = {"max_pool": ((layers.max_pool_2x2, plain_pool), (x,)),
             "upsample": ((layers.upsample_bilinear_2x, plain_upsample), (x[:, ::2, ::2],)),
             "conv3x3": ((functools.partial(conv.conv3x3, impl="im2col"), functools.partial(conv.conv3x3,
                                                                                              impl="xla")),
                         (x, kernel))}
    items = []
    for name, ((ours, reference), args) in pairs.items():
      ours_fn, reference_fn = value_and_grads(ours, *args), value_and_grads(reference, *args)
      (ours_value, ours_grads), (reference_value, reference_grads) = ours_fn(*args), reference_fn(*args)
      scale = max(float(jnp.max(jnp.abs(g))) for g in reference_grads)
      diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ours_grads, reference_grads)) / scale
      value_diff = abs(float(ours_value) - float(reference_value)) / max(abs(float(reference_value)), 1e-12)
      tolerance = 1e-5
      checks[f"{name}_{shape.name}"] = {"max_rel_diff": max(diff, value_diff), "tolerance": tolerance,
                                        "passed": bool(max(diff, value_diff) <= tolerance)}
      for label, fn in (("ours", ours_fn), ("reference", reference_fn)):
        items.append(Item(f"{name}_{label}", lambda steps, fn=fn, args=args: _clock(
            lambda: jax.block_until_ready([fn(*args) for _ in range(steps)]))))
    log(f"timing layer formulations at {shape.name}'s first level, {preset.repeats} rounds")
    interleave(items, preset.repeats, preset.min_repeat_s / 5, log)
    for ours, reference in zip(items[::2], items[1::2]):
      rows.append({"op": ours.name[:-len("_ours")], "shape": shape.name,
                   "input": [shape.batch, shape.patch, shape.patch, shape.c],
                   "ours_s": summary(ours.per_step_s), "reference_s": summary(reference.per_step_s),
                   "speedup": paired_ratio(reference, ours)})
  return {"note": "forward + gradients, seconds per call; ours = copper_jax's max_pool_2x2 and "
                  "upsample_bilinear_2x, and the im2col convolution; reference = nn.max_pool, jax.image.resize "
                  "and XLA's convolution (the one the layers use)", "rows": rows}, checks


CONV_PASSES = ("forward", "input_grad", "weight_grad")


def measure_conv_passes(preset: Preset, torch: TorchWorker | None, log) -> dict:
  """Where a training step's convolution time goes: one 3x3 convolution's forward pass, input gradient and weight
  gradient timed apart at each conv shape's first level (the largest maps), and PyTorch's, interleaved."""
  rows = []
  for shape in preset.conv_shapes:
    rng = np.random.default_rng(0)
    size = (shape.batch, shape.patch, shape.patch, shape.c)
    x, dy = (jnp.asarray(rng.normal(size=size), jnp.float32) for _ in range(2))
    kernel = jnp.asarray(rng.normal(size=(3, 3, shape.c, shape.c)) / (3 * math.sqrt(shape.c)), jnp.float32)

    def forward(x, kernel):
      return conv.conv3x3(x, kernel, impl="xla")

    # the forward pass is dead code in each gradient's program: XLA drops it
    fns = {"forward": (jax.jit(forward), (x, kernel)),
           "input_grad": (jax.jit(lambda x, k, dy: jax.vjp(forward, x, k)[1](dy)[0]), (x, kernel, dy)),
           "weight_grad": (jax.jit(lambda x, k, dy: jax.vjp(forward, x, k)[1](dy)[1]), (x, kernel, dy))}
    items = {}
    for which, (fn, args) in fns.items():
      items[which] = Item(f"{which}", lambda steps, fn=fn, args=args: _clock(
          lambda: jax.block_until_ready([fn(*args) for _ in range(steps)])))
      if torch is not None:
        items[f"torch_{which}"] = torch.item(f"torch_{which}", "conv", batch=shape.batch, size=shape.patch,
                                             c=shape.c, which=which)
    log(f"timing convolution passes at {shape.name}'s first level, {preset.repeats} rounds")
    interleave(list(items.values()), preset.repeats, preset.min_repeat_s / 5, log)
    gflop = 2 * shape.batch * shape.patch ** 2 * shape.c ** 2 * 9 / 1e9
    row = {"shape": shape.name, "input": list(size), "gflop_per_pass": gflop}
    for which in CONV_PASSES:
      seconds = summary(items[which].per_step_s)
      row[which] = {"jax_s": seconds, "jax_gflop_s": gflop / seconds["median"]}
      if torch is not None:
        torch_seconds = summary(items[f"torch_{which}"].per_step_s)
        row[which].update(torch_s=torch_seconds, torch_gflop_s=gflop / torch_seconds["median"],
                          jax_over_torch=paired_ratio(items[f"torch_{which}"], items[which]))
    rows.append(row)
  return {"note": "seconds per call of one 3x3 convolution pass, the same FLOPs each; jax_over_torch > 1 means JAX "
                  "is faster", "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# the whole benchmark


SECTIONS = ("training", "sweep", "prediction", "pipeline", "layers", "conv_passes")


def _versions() -> dict:
  return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__}


def _machine() -> dict:
  device = jax.devices()[0]
  out = {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
         "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
         "xla_flags": os.environ.get("XLA_FLAGS", "")}
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    out["device_memory_bytes"] = int(stats["bytes_limit"])
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _load_average():
  return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_benchmark(preset_name: str, quick: bool = False, torch_python: str | None = None,
                  reused_freed_memory: bool = False, torch_reuses_freed_memory: bool | None = None,
                  sections=SECTIONS, log=print) -> dict:
  """Runs the benchmark and returns its results (see the module docstring). `torch_python`: an interpreter with
  torch and numpy, to time the PyTorch twins (`torch_worker.py`) alongside; None leaves PyTorch out.
  `reused_freed_memory` only records whether the caller called `host_memory.reuse_freed_memory()` first; the
  PyTorch worker does the same unless `torch_reuses_freed_memory` says otherwise."""
  if preset_name not in PRESETS:
    raise ValueError(f"preset {preset_name!r}; valid values: {', '.join(PRESETS)}")
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise ValueError(f"sections {sorted(unknown)}; valid values: {', '.join(SECTIONS)}")
  preset = QUICK if quick else PRESETS[preset_name]
  result = {"schema": 1, "preset": preset_name, "quick": quick,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "versions": _versions(),
            "machine": _machine(), "reuse_freed_memory": reused_freed_memory, "load_average_start": _load_average(),
            "repeats": preset.repeats, "min_repeat_s": preset.min_repeat_s}
  if torch_reuses_freed_memory is None:
    torch_reuses_freed_memory = reused_freed_memory
  torch = TorchWorker(torch_python, torch_reuses_freed_memory) if torch_python else None
  if torch is not None:
    result["versions"]["torch"] = torch.info["torch"]
    result["torch_threads"] = torch.info["threads"]
    result["torch_reuse_freed_memory"] = torch_reuses_freed_memory
  checks = {}
  started = time.perf_counter()
  try:
    if "training" in sections:
      result["training"] = measure_training(preset, torch, log)
      for row in result["training"]["rows"]:
        if "torch" in row:  # the twins are the same nets: the same parameters
          checks[f"torch_params_{row['kind']}_{row['shape']['name']}"] = {
              "jax": row["params"], "torch": row["torch"]["params"], "passed": row["params"] == row["torch"]["params"]}
    if "sweep" in sections:
      result["sweep"], sweep_checks = measure_sweeps(preset, log)
      checks.update(sweep_checks)
      if preset.paper_sweep:
        result["paper_sweep_projection"] = _project_paper_sweep(preset, result["sweep"])
    if "prediction" in sections:
      result["prediction"], predict_checks = measure_prediction(preset, torch, log)
      checks.update(predict_checks)
    if "pipeline" in sections:
      result["pipeline"] = measure_pipeline(preset, log)
      consumed = [row for row in result.get("training", {}).get("rows", [])
                  if row["kind"] == "segmentation" and row["shape"]["name"] == preset.pipeline_shape.name]
      if consumed:
        result["pipeline"]["training_consumes_patches_per_s"] = consumed[0]["images_per_s"]["median"]
        result["pipeline"]["headroom"] = (result["pipeline"]["patches_per_s"]["median"]
                                          / consumed[0]["images_per_s"]["median"])
    if "layers" in sections:
      result["layers"], layer_checks = measure_layers(preset, log)
      checks.update(layer_checks)
    if "conv_passes" in sections:
      result["conv_passes"] = measure_conv_passes(preset, torch, log)
  finally:
    if torch is not None:
      torch.close()
  result["checks"] = checks
  result["all_checks_passed"] = all(check["passed"] for check in checks.values())
  result["load_average_end"] = _load_average()
  result["wall_s"] = time.perf_counter() - started
  return result


def _project_paper_sweep(preset: Preset, sweeps: list) -> dict:
  """Hours of a paper-scale sweep (members x epochs over the training images) at the fastest strategy measured
  for that many members at the paper's sweep shape."""
  plan = preset.paper_sweep
  rows = [row for section in sweeps if section["shape"]["name"] == PAPER_SWEEP.name for row in section["rows"]
          if row["members"] == plan["members"]]
  if not rows:
    return {"plan": plan, "note": "no measurement at that many members"}
  best = min(rows, key=lambda row: row["step_s"]["median"])
  steps = math.ceil(plan["images"] / plan["batch"]) * plan["epochs"]
  return {"plan": plan, "strategy": best["strategy"], "steps": steps,
          "hours": steps * best["step_s"]["median"] / 3600}


def table(result: dict) -> str:
  """A short human-readable summary of `run_benchmark`'s result."""
  lines = [f"copper_jax benchmark, preset {result['preset']}{' (quick)' if result['quick'] else ''}, "
           f"{result['date']}, {result['machine']['backend']} {result['machine']['device_kind']}, "
           f"jax {result['versions']['jax']}, reuse_freed_memory={result['reuse_freed_memory']}"
           + (f" (torch: {result['torch_reuse_freed_memory']})" if "torch_reuse_freed_memory" in result else "")
           + f", load average {result['load_average_start']}"]
  if "training" in result:
    training = result["training"]
    peaks = ", ".join(f"{k} {v['median']:.0f}" for k, v in training["peak_gflop_s"].items())
    lines.append(f"matmul peak GFLOP/s (median): {peaks}")
    lines.append(f"{'model':<13}{'shape':<10}{'img/s':>8}{'[min,max]':>16}{'GFLOP/s':>9}{'peak%':>7}"
                 f"{'compile s':>10}{'MiB':>7}{'faults':>8}{'torch img/s':>13}{'jax/torch':>10}")
    for row in training["rows"]:
      ips = row["images_per_s"]
      torch = row.get("torch", {}).get("images_per_s", {}).get("median")
      ratio = row.get("jax_over_torch", {}).get("paired_median")
      lines.append(f"{row['kind']:<13}{row['shape']['name']:<10}{ips['median']:>8.1f}"
                   f"{'[%.1f, %.1f]' % (ips['min'], ips['max']):>16}{row['gflop_s']['median']:>9.1f}"
                   f"{100 * row['fraction_of_peak']:>6.1f}%{row['compile_s']:>10.1f}"
                   f"{row['memory'].get('peak_bytes', 0) / 2 ** 20:>7.0f}"
                   f"{row['minor_faults_per_step']['median']:>8.0f}"
                   f"{(f'{torch:.1f}' if torch else '-'):>13}{(f'{ratio:.2f}x' if ratio else '-'):>10}")
  for section in result.get("sweep", []):
    lines.append(f"members at {section['shape']['name']} (one member {section['single_step_s']['median'] * 1e3:.0f}"
                 f" ms/step): efficiency = K x one-member time / K-member time")
    for row in section["rows"]:
      eff = row["efficiency"]
      lines.append(f"  {row['strategy']:<9} K={row['members']:<3} {row['step_s']['median'] * 1e3:>8.0f} ms  "
                   f"efficiency {eff['median']:.2f} [{eff['min']:.2f}, {eff['max']:.2f}]")
    lines.append(f"  fastest: {section['fastest']}")
  if "paper_sweep_projection" in result:
    lines.append(f"paper sweep projection: {result['paper_sweep_projection']}")
  if "prediction" in result:
    p = result["prediction"]
    text = ", ".join(f"{name} {p[name]['s_per_image']['median']:.3f} s" for name in ("whole", "tiled", "torch_whole")
                     if name in p)
    lines.append(f"prediction {p['height']}x{p['width']} (tile {p['tile']}): {text}"
                 + (f"; jax/torch whole {p['jax_over_torch']['whole']['paired_median']:.2f}x, tiled "
                    f"{p['jax_over_torch']['tiled']['paired_median']:.2f}x" if "jax_over_torch" in p else ""))
  if "pipeline" in result:
    p = result["pipeline"]
    lines.append(f"input pipeline: {p['patches_per_s']['median']:.0f} patches/s of {p['patch']}x{p['patch']} from "
                 f"{p['images']} images {p['image_shape']}" + (f", {p['headroom']:.0f}x what training consumes"
                                                              if "headroom" in p else ""))
  for row in result.get("layers", {}).get("rows", []):
    lines.append(f"{row['op']:<9} at {row['shape']:<8}: ours {row['ours_s']['median'] * 1e3:7.2f} ms, reference "
                 f"{row['reference_s']['median'] * 1e3:7.2f} ms, speedup {row['speedup']['median']:.2f}x")
  for row in result.get("conv_passes", {}).get("rows", []):
    text = []
    for which in CONV_PASSES:
      p = row[which]
      text.append(f"{which} {p['jax_s']['median'] * 1e3:.2f} ms ({p['jax_gflop_s']:.0f} GFLOP/s)"
                  + (f" vs torch {p['torch_s']['median'] * 1e3:.2f} ms, {p['jax_over_torch']['median']:.2f}x"
                     if "torch_s" in p else ""))
    lines.append(f"conv3x3 at {row['shape']:<8}: " + "; ".join(text))
  failed = [name for name, check in result["checks"].items() if not check["passed"]]
  lines.append(f"checks: {len(result['checks'])} run, " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
  return "\n".join(lines)
