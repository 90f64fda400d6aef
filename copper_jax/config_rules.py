"""Every config key a job reads, with the values it accepts: one declaration, checked before anything is written.

A table maps a dotted key to a rule; `check(config, table)` walks it in order and raises a one-line ConfigError at
the first key that is missing or out of its domain. Numbers must be finite (NaN and infinity pass every sign test,
so a sign test alone is no check). The sweep, the classifier, the grid search, evaluation and prediction all check
their config against the tables here, so a value the sweep refuses is refused everywhere.

To add a key: add it to the job's table (`SWEEP`, `CLASSIFIER`, `GRID`), and to `OPTIONAL` if workdirs saved before
the key existed must still load.
"""
import dataclasses
import math
from typing import Any, Callable

import ml_collections
import numpy as np

from copper_jax import config_utils, members, optim
from copper_jax.data import folder, sem_metadata, synthetic
from copper_jax.errors import ConfigError
from copper_jax.models import DTYPES
from copper_jax.models.layers import NORMS

_MISSING = object()
# jax.random.key takes a 32-bit seed without folding; larger ones would silently alias.
_MAX_SEED = 2 ** 32 - 1
# optax counts steps in int32.
_MAX_STEPS = 2 ** 31 - 1
# Far beyond any device's memory for a batch, yet small enough that sizes computed from it stay exact.
_MAX_BATCH = 2 ** 16
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Number:
  """A finite number (a whole one when `whole`) in [lo, hi], with open ends when `lo_open` / `hi_open`."""
  lo: float | None = None
  hi: float | None = None
  whole: bool = False
  lo_open: bool = False
  hi_open: bool = False
  unit: str = ""

  def domain(self) -> str:
    kind = "a whole number" if self.whole else "a finite number"
    bounds = []
    if self.lo is not None:
      bounds.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
    if self.hi is not None:
      bounds.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
    return f"{kind}{' of ' + self.unit if self.unit else ''}{' ' + ' and '.join(bounds) if bounds else ''}"

  def problem(self, value, config) -> str | None:
    del config
    numeric = (int, np.integer) if self.whole else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numeric):
      return f"must be {self.domain()}"
    if not math.isfinite(float(value)):
      return f"must be {self.domain()}, not {value}"
    if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
      return f"must be {self.domain()}"
    if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
      return f"must be {self.domain()}"
    return None


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of a fixed set of values."""
  choices: tuple

  def problem(self, value, config) -> str | None:
    del config
    ok = any(type(value) is type(c) and value == c for c in self.choices)
    return None if ok else f"use one of {', '.join(map(str, self.choices))}"


@dataclasses.dataclass(frozen=True)
class Flag:
  """True or False."""

  def problem(self, value, config) -> str | None:
    del config
    return None if isinstance(value, (bool, np.bool_)) else "must be True or False"


@dataclasses.dataclass(frozen=True)
class Text:
  """A string (which may be empty: the key's documented "none")."""

  def problem(self, value, config) -> str | None:
    del config
    return None if isinstance(value, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class Custom:
  """`check(value, config)` returns None when the value is fine, else what is wrong and the fix."""
  check: Callable[[Any, Any], str | None]

  def problem(self, value, config) -> str | None:
    return self.check(value, config)


def _whole(lo=None, hi=None, unit=""):
  return Number(lo=lo, hi=hi, whole=True, unit=unit)


def _split_sizes(value) -> tuple[dict, bool] | str:
  """({name: size}, are fractions) of a data.split value, or what is wrong with it."""
  if not isinstance(value, (ml_collections.ConfigDict, dict)) or not len(value):
    return "must be a mapping like {'train': 40, 'val': 5, 'test': 5} (images per label) or fractions"
  sizes = dict(value.items())
  values = list(sizes.values())
  if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
    if min(values) < 0:
      return "image counts per label must be whole numbers >= 0"
    return sizes, False
  if all(isinstance(v, (float, np.floating)) for v in values):
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in values) or sum(values) > 1 + 1e-9:
      return "fractions must be finite, >= 0 and sum to at most 1"
    return sizes, True
  return "use all whole numbers (images per label) or all fractions of each label, not a mix"


def _split_problem(value, held_out: tuple) -> str | None:
  checked = _split_sizes(value)
  if isinstance(checked, str):
    return checked
  sizes, _ = checked
  if not sizes.get("train"):
    return "needs a train split with images, e.g. train=8"
  if held_out and not any(sizes.get(name) for name in held_out):
    return (f"needs a held-out split with images ({' or '.join(held_out)}) to evaluate on; e.g. "
            f"{held_out[0]}=2")
  return None


def _patch_problem(value, config) -> str | None:
  depth = config_utils.get(config, "model.d", None)
  smallest = 2 ** depth if isinstance(depth, int) and 1 <= depth <= 16 else 1
  problem = _whole(lo=smallest, unit="pixels").problem(value, config)
  return problem and f"{problem} (2**model.d)"


def _consistency_problem(value, config) -> str | None:
  # As binarise_weight: past 100 the term alone steers training, and a constant mask meets it.
  problem = Number(lo=0, hi=100).problem(value, config)
  if problem or value == 0:
    return problem
  # model.d and train.patch_size come earlier in the table, so they are already whole numbers in range here.
  period = 2 ** config_utils.get(config, "model.d")
  if config_utils.get(config, "train.patch_size") <= period:
    return (f"needs train.patch_size > 2**model.d = {period} to crop a shifted patch: raise train.patch_size or "
            "set loss.consistency_weight=0")
  return None


def _hypotheses_problem(value, config) -> str | None:
  del config
  specs = (value,) if isinstance(value, str) else value
  if not isinstance(specs, (tuple, list)) or not all(isinstance(s, str) for s in specs):
    return "must be a list of hypothesis strings, e.g. ('linear', 'power(gamma=0.5)')"
  return None


def _eval_split_problem(value, config) -> str | None:
  checked = _split_sizes(config_utils.get(config, "data.split", None))
  if isinstance(checked, str):
    return None  # data.split's own rule reports it
  sizes, _ = checked
  if not isinstance(value, str) or value not in sizes:
    return f"use one of the splits {', '.join(sizes)}"
  if not sizes[value]:
    return f"the {value} split is empty (data.split.{value}=0); choose a split with images"
  return None


def _search_points_problem(value, config) -> str | None:
  points = list(value) if isinstance(value, (tuple, list)) else None
  if not points:
    return "give at least one (c, d, n, N) candidate, e.g. ((8, 2, 1, 1), (8, 3, 1, 1))"
  for p in points:
    if (not isinstance(p, (tuple, list)) or len(p) != 4
        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in p)):
      return f"{p!r} is not a candidate: each is (c, d, n, N), four whole numbers >= 1"
  return None


def _synthetic_labels_problem(value, config) -> str | None:
  problem = _whole(lo=0, hi=1000).problem(value, config)
  if problem:
    return problem + " (0: the preset's value)"
  return "a sweep or classifier needs at least 2 stress times; use 0 (the preset's) or >= 2" if value == 1 else None


def _crop_bottom_problem(value, config) -> str | None:
  if value == folder.AUTO_CROP:
    return None
  problem = _whole(lo=0, hi=2 ** 31, unit="pixels").problem(value, config)
  return problem + ", or 'auto' (each file's recorded info bar)" if problem else None


def _pixel_size_problem(value, config) -> str | None:
  lo, hi = sem_metadata.PIXEL_SIZE_RANGE_NM
  problem = Number(lo=0, hi=hi, unit="nm").problem(value, config)
  if problem or 0 < value < lo:
    return f"must be 0 (keep each image's pixels) or a pixel size from {lo:g} to {hi:g} nm"
  return None


# Keys every training job reads: data, model, optimizer, duration.
COMMON = {
    "preset": Text(),
    "seed": _whole(lo=0, hi=_MAX_SEED),
    "deterministic": Flag(),
    "data.root": Text(),
    "data.crop_bottom": Custom(_crop_bottom_problem),
    "data.page": _whole(lo=0, hi=2 ** 31),
    "data.pixel_size_nm": Custom(_pixel_size_problem),
    "data.skip_unreadable": Flag(),
    "data.max_pixels": _whole(lo=1, hi=2 ** 40, unit="pixels"),
    "data.standardise": OneOf(folder.STANDARDISE_MODES),
    "data.synthetic.preset": OneOf(tuple(synthetic.PRESETS)),
    "data.synthetic.f_true": OneOf(tuple(synthetic.F_TRUE)),
    "data.synthetic.confounded": Flag(),
    "data.synthetic.seed": _whole(lo=0, hi=_MAX_SEED),
    "data.synthetic.num_labels": Custom(_synthetic_labels_problem),
    "data.synthetic.images_per_label": _whole(lo=0, hi=100_000),
    "data.synthetic.fraction_jitter": Number(lo=0, hi=0.25),
    "data.synthetic.drift_brightness": Number(lo=-0.5, hi=0.5),
    "data.synthetic.drift_blur": Number(lo=0, hi=20, unit="pixels"),
    "data.mixed_pixel_sizes": OneOf(("refuse", "allow")),
    "data.synthetic.texture": OneOf(synthetic.TEXTURES),
    "data.synthetic.size": Custom(lambda v, c: _whole(lo=0, hi=2 ** 15).problem(v, c) or (
        "use 0 (the preset's) or at least 16 pixels" if 0 < v < 16 else None)),
    "model.c": _whole(lo=1, hi=4096),
    "model.d": _whole(lo=1, hi=16),
    "model.n": _whole(lo=1, hi=64),
    "model.N": _whole(lo=1, hi=64),
    "model.norm": OneOf(NORMS),
    "model.dtype": OneOf(tuple(DTYPES)),
    # Applied in float32: a larger rate (1e300) overflows to infinity. Large finite rates stay allowed, so a run
    # that diverges is stopped by the non-finite-loss check, naming the step.
    "optim.learning_rate": Number(lo=0, hi=_FLOAT32_MAX, lo_open=True),
    # Adam's moment decays: 1 would never forget, and 1/(1 - b**t) divides by zero.
    "optim.b1": Number(lo=0, hi=1, hi_open=True),
    "optim.b2": Number(lo=0, hi=1, hi_open=True),
    # eps > 0 keeps a zero gradient from giving 0/0.
    "optim.eps": Number(lo=0, hi=1, lo_open=True),
    "optim.schedule": OneOf(optim.SCHEDULES),
    "optim.warmup_steps": _whole(lo=0, hi=_MAX_STEPS, unit="steps"),
    "train.patch_size": Custom(_patch_problem),
    "train.batch_size": _whole(lo=1, hi=_MAX_BATCH),
    "train.num_steps": _whole(lo=0, hi=_MAX_STEPS),
    "train.num_epochs": _whole(lo=0, hi=1_000_000),
    "train.flips": Flag(),
    "train.rot90": Flag(),
    "train.log_every": _whole(lo=1, hi=_MAX_STEPS, unit="steps"),
    "eval.batch_size": _whole(lo=1, hi=_MAX_BATCH),
}

SWEEP = {
    **COMMON,
    "data.split": Custom(lambda v, c: _split_problem(v, held_out=("val", "test"))),
    "hypotheses": Custom(_hypotheses_problem),
    "num_seeds": _whole(lo=1),  # its upper limit is memory: check_memory names it
    "loss.kind": OneOf(("mse", "bce", "interval")),
    "loss.tolerance": Number(lo=0, hi=1),
    # The penalty s(1-s) is at most 0.25 a pixel and the proportion loss below 1: weights past 100 leave only the
    # penalty to learn.
    "loss.binarise_weight": Number(lo=0, hi=100),
    "loss.consistency_weight": Custom(_consistency_problem),
    "train.checkpoint_every": _whole(lo=1, hi=_MAX_STEPS, unit="steps"),
    "members.strategy": OneOf(members.STRATEGIES),
    # 0 turns off the only check that the model reads the smoothed area and not some other cue of t.
    "control.permutations": _whole(lo=0, hi=8, unit="control members per seed"),
    "model_from_grid": Text(),
    "model.search.enabled": Flag(),
    "model.search.points": Custom(_search_points_problem),
    "model.search.num_steps": _whole(lo=0, hi=_MAX_STEPS, unit="steps"),
    "model.search.memory_mb": Number(lo=0, unit="MiB"),
    "members.chunk": _whole(lo=0, hi=_MAX_BATCH),
    "members.shard": Flag(),
    "eval.num_overlays": _whole(lo=1, hi=10_000, unit="held-out images"),
    "eval.report": Flag(),
    "eval.classifier_workdir": Text(),
}

CLASSIFIER = {
    **COMMON,
    "data.split": Custom(lambda v, c: _split_problem(v, held_out=())),
    "train.eval_every_epochs": _whole(lo=1, hi=1_000_000, unit="epochs"),
    "eval.split": Custom(_eval_split_problem),
    "eval.checkpoint": OneOf(("best", "latest")),
    "eval.num_cam": _whole(lo=0, hi=10_000),
}

GRID = {
    **CLASSIFIER,
    "grid.budget_mb": Number(lo=0, lo_open=True, unit="MiB"),
}

# Keys a workdir saved before they existed may lack; the code then uses their documented default.
OPTIONAL = frozenset({"data.page", "data.pixel_size_nm",
                      "data.max_pixels", "data.mixed_pixel_sizes", "data.synthetic.fraction_jitter",
                      "data.synthetic.drift_brightness", "data.synthetic.drift_blur", "model_from_grid",
                      "data.synthetic.texture", "model.search.enabled", "model.search.points",
                      "model.search.num_steps", "model.search.memory_mb", "loss.consistency_weight"})


def check(config, table: dict, where: str = "") -> None:
  """ConfigError for the first key of `table` missing from `config` or outside its rule's domain.

  `where` names the config's source in messages (e.g. "runs/x/config.json"); the command-line config by default.
  """
  for key, rule in table.items():
    value = config_utils.get(config, key, _MISSING)
    if value is _MISSING:
      if key in OPTIONAL:
        continue
      source = f" from {where}" if where else ""
      raise ConfigError(f"config.{key} is missing{source}: add it (see the config file for its default)")
    if isinstance(value, ml_collections.FieldReference):
      value = value.get()
    try:
      problem = rule.problem(value, config)
    except Exception as e:  # noqa: BLE001 -- a rule that cannot judge a value has found a bad one
      problem = f"cannot be checked ({type(e).__name__}); use a value of the default's type"
    if problem:
      shown = repr(value) if not isinstance(value, (ml_collections.ConfigDict, dict)) else repr(dict(value))
      raise ConfigError(f"config.{key}={shown[:80]}: {problem}")
