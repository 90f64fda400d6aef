"""Every config key a job reads, declared once: its rule, whether it fixes a checkpoint, what its absence means.

A table maps a dotted key to a `Key`; `check(config, table)` walks it in order and raises a one-line ConfigError at
the first key that is missing or out of its domain. Numbers must be finite (NaN and infinity pass every sign test,
so a sign test alone is no check). The sweep, the classifier, the grid search, evaluation and prediction all check
their config against the tables here, so a value the sweep refuses is refused everywhere, and nowhere else.
Derived from the tables: each job's checkpoint fingerprint (`fingerprint_keys`) and the keys an older workdir may
lack (`optional_keys`), which `complete` fills in where a saved config is checked.

To add a key: give it its default in the config file (configs/base.py for the shared sections), and add it to the
job's table (`COMMON`, `SWEEP`, `CLASSIFIER`, `GRID`) as `Key(rule)`, `_fixes(rule)` when it changes what training
computes, with `absent=` the value workdirs saved before the key existed trained with.
"""
import contextlib
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
  searching = config_utils.get(config, "model.search.enabled") is True  # checked just before
  if points == [] and not searching:
    return None  # no candidates: what a workdir saved before the search existed holds
  if not points:
    return "give at least one (c, d, n, N) candidate, e.g. ((8, 2, 1, 1), (8, 3, 1, 1))"
  for p in points:
    if (not isinstance(p, (tuple, list)) or len(p) != 4
        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in p)):
      return f"{p!r} is not a candidate: each is (c, d, n, N), four whole numbers >= 1"
  patch = config_utils.get(config, "train.patch_size")  # checked earlier in the table
  if searching:
    for p in points:
      if patch < 2 ** p[1]:
        return f"has d={p[1]}, which needs train.patch_size >= {2 ** p[1]}; drop that candidate or enlarge the patch"
  return None


def _model_from_grid_problem(value, config) -> str | None:
  if not isinstance(value, str):
    return "must be a string"
  if value and config_utils.get(config, "model.search.enabled", False) is True:
    return ("and config.model.search.enabled both choose the net; set one of them (model_from_grid='' to search, "
            "model.search.enabled=False to take the grid's best)")
  return None


def _search_enabled_problem(value, config) -> str | None:
  problem = Flag().problem(value, config)
  if problem or not value:
    return problem
  if config_utils.get(config, "control.permutations") < 1:  # checked earlier in the table
    return ("keeps candidates by their permuted-target control: set config.control.permutations to at least 1 "
            "(2 is the default)")
  return None


def _synthetic_labels_problem(value, config) -> str | None:
  problem = _whole(lo=0, hi=1000).problem(value, config)
  if problem:
    return problem + " (0: the preset's value)"
  return "a sweep or classifier needs at least 2 stress times; use 0 (the preset's) or >= 2" if value == 1 else None


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key's declaration: its rule, whether it fixes a checkpoint, and what its absence means.

  `fixes_checkpoint`: the key changes what training computes, so it is part of the checkpoint's fingerprint and a
  resume with another value is refused. `absent`: the value a workdir saved before the key existed trained with;
  `REQUIRED` (the default) when every saved config has the key. The key's default lives in the config file.
  """
  rule: Any
  fixes_checkpoint: bool = False
  absent: Any = _MISSING


REQUIRED = _MISSING


def _fixes(rule, absent=REQUIRED) -> Key:
  return Key(rule, fixes_checkpoint=True, absent=absent)


def _duration_problem(value, config) -> str | None:
  problem = _whole(lo=0, hi=1_000_000).problem(value, config)
  if problem:
    return problem
  steps = config_utils.get(config, "train.num_steps")  # checked just before, so a whole number >= 0
  if (steps > 0) == (value > 0):
    return (f"and config.train.num_steps={steps}: set exactly one of them > 0 (the duration, stated once) and the "
            "other to 0")
  return None


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


# Keys every training job reads: data, model, optimizer, duration. The data section is checked against the data
# itself (data_summary.json's identity), so only the standardisation is part of the fingerprint.
COMMON = {
    "preset": Key(Text()),
    "seed": _fixes(_whole(lo=0, hi=_MAX_SEED)),
    "deterministic": Key(Flag()),
    "data.root": Key(Text()),
    "data.crop_bottom": Key(Custom(_crop_bottom_problem)),
    "data.page": Key(_whole(lo=0, hi=2 ** 31), absent=0),
    "data.pixel_size_nm": Key(Custom(_pixel_size_problem), absent=0.0),
    "data.skip_unreadable": Key(Flag()),
    "data.max_pixels": Key(_whole(lo=1, hi=2 ** 40, unit="pixels"), absent=folder.MAX_PIXELS),
    "data.standardise": _fixes(OneOf(folder.STANDARDISE_MODES)),
    "data.synthetic.preset": Key(OneOf(tuple(synthetic.PRESETS))),
    "data.synthetic.f_true": Key(OneOf(tuple(synthetic.F_TRUE))),
    "data.synthetic.confounded": Key(Flag()),
    "data.synthetic.seed": Key(_whole(lo=0, hi=_MAX_SEED)),
    "data.synthetic.num_labels": Key(Custom(_synthetic_labels_problem)),
    "data.synthetic.images_per_label": Key(_whole(lo=0, hi=100_000)),
    "data.synthetic.fraction_jitter": Key(Number(lo=0, hi=0.25), absent=0.0),
    "data.synthetic.drift_brightness": Key(Number(lo=-0.5, hi=0.5), absent=0.0),
    "data.synthetic.drift_blur": Key(Number(lo=0, hi=20, unit="pixels"), absent=0.0),
    "data.mixed_pixel_sizes": Key(OneOf(("refuse", "allow")), absent="refuse"),
    "data.synthetic.texture": Key(OneOf(synthetic.TEXTURES), absent="copper"),
    "data.synthetic.size": Key(Custom(lambda v, c: _whole(lo=0, hi=2 ** 15).problem(v, c) or (
        "use 0 (the preset's) or at least 16 pixels" if 0 < v < 16 else None))),
    "model.c": _fixes(_whole(lo=1, hi=4096)),
    "model.d": _fixes(_whole(lo=1, hi=16)),
    "model.n": _fixes(_whole(lo=1, hi=64)),
    "model.N": _fixes(_whole(lo=1, hi=64)),
    "model.norm": _fixes(OneOf(NORMS)),
    "model.dtype": _fixes(OneOf(tuple(DTYPES))),
    # Applied in float32: a larger rate (1e300) overflows to infinity. Large finite rates stay allowed, so a run
    # that diverges is stopped by the non-finite-loss check, naming the step.
    "optim.learning_rate": _fixes(Number(lo=0, hi=_FLOAT32_MAX, lo_open=True)),
    # Adam's moment decays: 1 would never forget, and 1/(1 - b**t) divides by zero.
    "optim.b1": _fixes(Number(lo=0, hi=1, hi_open=True)),
    "optim.b2": _fixes(Number(lo=0, hi=1, hi_open=True)),
    # eps > 0 keeps a zero gradient from giving 0/0.
    "optim.eps": _fixes(Number(lo=0, hi=1, lo_open=True)),
    "optim.schedule": _fixes(OneOf(optim.SCHEDULES)),
    "optim.warmup_steps": _fixes(_whole(lo=0, hi=_MAX_STEPS, unit="steps")),
    "train.patch_size": _fixes(Custom(_patch_problem)),
    "train.batch_size": _fixes(_whole(lo=1, hi=_MAX_BATCH)),
    # The duration does not fix a checkpoint: a finished run can be extended (a cosine decay then stretches).
    "train.num_steps": Key(_whole(lo=0, hi=_MAX_STEPS)),
    "train.num_epochs": Key(Custom(_duration_problem)),
    "train.flips": _fixes(Flag()),
    "train.rot90": _fixes(Flag()),
    "train.log_every": Key(_whole(lo=1, hi=_MAX_STEPS, unit="steps")),
    "eval.batch_size": Key(_whole(lo=1, hi=_MAX_BATCH)),
}

SWEEP = {
    **COMMON,
    "data.split": Key(Custom(lambda v, c: _split_problem(v, held_out=("val", "test")))),
    "hypotheses": _fixes(Custom(_hypotheses_problem)),
    "num_seeds": _fixes(_whole(lo=1)),  # its upper limit is memory: check_memory names it
    "loss.kind": _fixes(OneOf(("mse", "bce", "interval"))),
    "loss.tolerance": _fixes(Number(lo=0, hi=1)),
    # The penalty s(1-s) is at most 0.25 a pixel and the proportion loss below 1: weights past 100 leave only the
    # penalty to learn.
    "loss.binarise_weight": _fixes(Number(lo=0, hi=100)),
    "loss.consistency_weight": _fixes(Custom(_consistency_problem), absent=0.0),
    "train.checkpoint_every": Key(_whole(lo=1, hi=_MAX_STEPS, unit="steps")),
    "members.strategy": Key(OneOf(members.STRATEGIES)),
    # 0 turns off the only check that the model reads the smoothed area and not some other cue of t.
    "control.permutations": _fixes(_whole(lo=0, hi=8, unit="control members per seed")),
    # Where the net comes from does not fix a checkpoint: what it chose (model.*) does.
    "model_from_grid": Key(Custom(_model_from_grid_problem), absent=""),
    "model.search.enabled": Key(Custom(_search_enabled_problem), absent=False),
    "model.search.points": Key(Custom(_search_points_problem), absent=()),
    "model.search.num_steps": Key(_whole(lo=0, hi=_MAX_STEPS, unit="steps"), absent=0),
    "model.search.memory_mb": Key(Number(lo=0, unit="MiB"), absent=0.0),
    "members.chunk": Key(_whole(lo=0, hi=_MAX_BATCH)),
    "members.shard": Key(Flag()),
    "eval.num_overlays": Key(_whole(lo=1, hi=10_000, unit="held-out images")),
    "eval.report": Key(Flag()),
    "eval.classifier_workdir": Key(Text()),
}

CLASSIFIER = {
    **COMMON,
    "data.split": Key(Custom(lambda v, c: _split_problem(v, held_out=()))),
    "train.eval_every_epochs": Key(_whole(lo=1, hi=1_000_000, unit="epochs")),
    "eval.split": Key(Custom(_eval_split_problem)),
    "eval.checkpoint": Key(OneOf(("best", "latest"))),
    "eval.num_cam": Key(_whole(lo=0, hi=10_000)),
}

GRID = {
    **CLASSIFIER,
    "grid.budget_mb": Key(Number(lo=0, lo_open=True, unit="MiB")),
}


def fingerprint_keys(table: dict) -> list[str]:
  """The keys of `table` that fix a checkpoint, in the table's order."""
  return [key for key, declared in table.items() if declared.fixes_checkpoint]


def optional_keys(table: dict) -> frozenset:
  """The keys of `table` that a workdir saved before they existed may lack."""
  return frozenset(key for key, declared in table.items() if declared.absent is not REQUIRED)


# Keys a workdir saved before they existed may lack; `complete` gives them the value such a workdir trained with.
OPTIONAL = optional_keys(SWEEP) | optional_keys(GRID)


def complete(config, table: dict) -> None:
  """Fills in place every key of `table` that `config` (e.g. an older workdir's config.json) lacks and that has an
  `absent` value, so code reads `config.loss.consistency_weight` and never needs a fallback."""
  for key, declared in table.items():
    if declared.absent is REQUIRED or config_utils.get(config, key, _MISSING) is not _MISSING:
      continue
    *parents, leaf = key.split(".")
    node = config
    with config.unlocked() if isinstance(config, ml_collections.ConfigDict) else contextlib.nullcontext():
      for part in parents:
        if part not in node:
          node[part] = ml_collections.ConfigDict()
        node = node[part]
      node[leaf] = declared.absent


def check(config, table: dict, where: str = "") -> None:
  """ConfigError for the first key of `table` missing from `config` or outside its rule's domain.

  `where` names the config's source in messages (e.g. "runs/x/config.json"); the command-line config by default.
  """
  for key, declared in table.items():
    rule = declared.rule
    value = config_utils.get(config, key, _MISSING)
    if value is _MISSING:
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
