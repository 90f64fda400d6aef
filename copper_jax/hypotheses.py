"""Hypotheses g(tau): monotone guesses of the smoothed-area fraction as a function of normalised stress time.

A hypothesis maps normalised time `tau` in [0, 1] to a fraction in [0, 1] (mask value 1 = smoothed, low adhesion,
so g rises with t). Every family is a pure JAX function normalised so that shape(0) = 0 and shape(1) = 1; the
endpoint offsets `lo` and `hi` then give g = lo + (hi - lo) * shape(tau).

A sweep is written as a tuple of spec strings, for example::

    ("linear", "power(gamma=[0.5, 2])", "sigmoid(slope=10, mid=0.5)", "table(values=[0, .2, .9, 1])", "learned")

A list value expands into one hypothesis per value (a parameter grid); all of them become one (K, T) table of
targets at the observed labels before anything is traced, so every family runs through one code path.
"""
import dataclasses
import itertools
import math
import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from copper_jax.errors import ConfigError


def _linear(tau):
  return tau


def _power(tau, gamma=0.5):
  return tau ** gamma


def _log(tau, alpha=10.0):
  return jnp.log1p(alpha * tau) / math.log1p(alpha)


def _saturating_exp(tau, beta=3.0):
  return (1.0 - jnp.exp(-beta * tau)) / (1.0 - math.exp(-beta))


def _sigmoid(tau, slope=10.0, mid=0.5):
  # Rescaled so the endpoints are exactly 0 and 1 whatever slope and mid are.
  s = lambda x: 1.0 / (1.0 + jnp.exp(-slope * (x - mid)))
  return (s(tau) - s(0.0)) / (s(1.0) - s(0.0))


def _step(tau, mid=0.5):
  return jnp.where(tau >= mid, 1.0, 0.0)


# name -> (function of tau and keyword parameters, default parameters, {parameter: its allowed range, in words})
FAMILIES: dict[str, tuple[Callable[..., Any], dict[str, float], dict[str, str]]] = {
    "linear": (_linear, {}, {}),
    "power": (_power, {"gamma": 0.5}, {"gamma": "> 0"}),
    "log": (_log, {"alpha": 10.0}, {"alpha": "> 0"}),
    "saturating_exp": (_saturating_exp, {"beta": 3.0}, {"beta": "> 0"}),
    "sigmoid": (_sigmoid, {"slope": 10.0, "mid": 0.5}, {"slope": "> 0"}),
    "step": (_step, {"mid": 0.5}, {"mid": "in (0, 1]"}),
}
_RANGES = {"> 0": lambda v: v > 0, "in (0, 1]": lambda v: 0 < v <= 1}
SPECIAL = ("table", "learned")
CONTROL = "permuted"  # the negative control's family: fixed targets scrambled over the labels, never a hypothesis
ENDPOINT_KEYS = ("lo", "hi")


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One hypothesis: a family, its parameters and its endpoints g(0) = lo, g(1) = hi."""
  family: str
  params: tuple[tuple[str, Any], ...] = ()
  lo: float = 0.0
  hi: float = 1.0

  @property
  def name(self) -> str:
    if self.control:
      return f"{CONTROL}({dict(self.params)['draw']})"
    items = list(self.params)
    if self.lo != 0.0:
      items.append(("lo", self.lo))
    if self.hi != 1.0:
      items.append(("hi", self.hi))
    if not items:
      return self.family
    def fmt(v):
      return "[" + ", ".join(f"{x:g}" for x in v) + "]" if isinstance(v, tuple) else f"{v:g}"
    return f"{self.family}(" + ", ".join(f"{k}={fmt(v)}" for k, v in items) + ")"

  @property
  def learned(self) -> bool:
    return self.family == "learned"

  @property
  def control(self) -> bool:
    return self.family == CONTROL

  def __call__(self, tau):
    """g(tau) as a JAX array; tau in [0, 1]. A table has values at the labels only: use `target_table`."""
    tau = jnp.asarray(tau, jnp.float32)
    params = dict(self.params)
    if self.family in ("table", CONTROL):
      raise ValueError(f"a {self.family} hypothesis is defined at the labels only; use target_table")
    if self.family == "learned":
      # Before training, the learned curve starts as the straight line between its pinned endpoints.
      shape = tau
    else:
      shape = FAMILIES[self.family][0](tau, **params)
    return self.lo + (self.hi - self.lo) * shape

  def to_json(self) -> dict:
    return {"name": self.name, "family": self.family, "params": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in self.params},
            "lo": self.lo, "hi": self.hi}


_SPEC_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$", re.S)
_KEY_RE = re.compile(r"[a-z_]+")
# A plain decimal number (no "nan", "inf", "1_0" or hex, which float() would also take).
_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _parse_number(text: str, spec: str) -> float:
  text = text.strip()
  value = float(text) if _NUMBER_RE.fullmatch(text) else None
  if value is None or not math.isfinite(value):
    raise ConfigError(f"hypothesis {spec!r}: cannot read value {text!r}; write finite numbers like 0.5 or "
                      f"lists like [0.25, 0.5, 2]")
  return value


def _parse_value(text: str, spec: str):
  text = text.strip()
  if text.startswith("[") or text.endswith("]"):
    if not (text.startswith("[") and text.endswith("]")) or "[" in text[1:-1] or "]" in text[1:-1]:
      raise ConfigError(f"hypothesis {spec!r}: cannot read value {text!r}; a list is [0.25, 0.5, 2], not nested")
    if not text[1:-1].strip():
      return []
    return [_parse_number(v, spec) for v in text[1:-1].split(",")]
  return _parse_number(text, spec)


def _split_args(body: str, spec: str) -> list[str]:
  """Splits 'a=1, b=[1, 2]' at the top-level commas; an empty argument (a stray comma) is refused."""
  parts, depth, current = [], 0, ""
  for ch in body:
    depth += ch == "["
    depth -= ch == "]"
    if ch == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += ch
  parts.append(current)
  if len(parts) == 1 and not current.strip():
    return []  # name() takes the defaults
  if any(not p.strip() for p in parts):
    raise ConfigError(f"hypothesis {spec!r}: an empty argument (a stray comma); write name(key=value, ...)")
  return parts


def parse(spec: str) -> list[Hypothesis]:
  """Expands one spec string into its hypotheses (one per point of its parameter grid).

  Strict: an unknown family or parameter, a parameter given twice, a value that is not a finite number and a
  value out of its family's range are each refused in one line.
  """
  valid = ", ".join(list(FAMILIES) + list(SPECIAL))
  if not isinstance(spec, str):
    raise ConfigError(f"hypothesis {spec!r} is not a string; write it as 'name' or 'name(key=value, ...)'")
  match = _SPEC_RE.match(spec)
  if not match:
    raise ConfigError(f"hypothesis {spec!r} is not of the form name or name(key=value, ...); families: {valid}")
  family, body = match.group(1), match.group(2) or ""
  if family not in FAMILIES and family not in SPECIAL:
    raise ConfigError(f"hypothesis {spec!r}: unknown family {family!r}; use one of: {valid}")
  args = {}
  for part in _split_args(body, spec):
    if "=" not in part:
      raise ConfigError(f"hypothesis {spec!r}: argument {part.strip()!r} needs the form key=value")
    key, value = part.split("=", 1)
    key = key.strip()
    if not _KEY_RE.fullmatch(key):
      raise ConfigError(f"hypothesis {spec!r}: {key!r} is not a parameter name; write key=value")
    if key in args:
      raise ConfigError(f"hypothesis {spec!r}: parameter {key!r} is given twice; give it once (a list makes a grid)")
    args[key] = _parse_value(value, spec)

  if family == "table":
    allowed = {"values"} | set(ENDPOINT_KEYS)
  elif family == "learned":
    allowed = set(ENDPOINT_KEYS)
  else:
    allowed = set(FAMILIES[family][1]) | set(ENDPOINT_KEYS)
  for key in args:
    if key not in allowed:
      raise ConfigError(f"hypothesis {spec!r}: unknown parameter {key!r}; {family} takes {sorted(allowed)}")

  if family == "table":
    if "values" not in args or not isinstance(args["values"], list):
      raise ConfigError(f"hypothesis {spec!r}: a table needs values=[...], one fraction per label")
    values = tuple(args.pop("values"))
    if any(not 0.0 <= v <= 1.0 for v in values):
      raise ConfigError(f"hypothesis {spec!r}: table values are fractions of area and must lie in [0, 1]")
    grid_keys, grid_values = [], []
    fixed = {"values": values}
  else:
    fixed = {}
    grid_keys = [k for k in args if isinstance(args[k], list)]
    for key in grid_keys:
      if not args[key]:
        # An empty grid axis would expand to no hypothesis at all, silently dropping the spec.
        raise ConfigError(f"hypothesis {spec!r}: {key}=[] lists no value; give at least one, e.g. {key}=[0.5, 2]")
    grid_values = [args[k] for k in grid_keys]
    fixed.update({k: v for k, v in args.items() if not isinstance(v, list)})

  hypotheses = []
  for combo in itertools.product(*grid_values):
    params = dict(fixed)
    params.update(zip(grid_keys, combo))
    lo = float(params.pop("lo", 0.0))
    hi = float(params.pop("hi", 1.0))
    if not (0.0 <= lo < hi <= 1.0):
      raise ConfigError(f"hypothesis {spec!r}: endpoints need 0 <= lo < hi <= 1, got lo={lo:g}, hi={hi:g}")
    if family in FAMILIES:
      defaults, checks = FAMILIES[family][1], FAMILIES[family][2]
      full = dict(defaults)
      full.update(params)
      for key, allowed_range in checks.items():
        if not _RANGES[allowed_range](full[key]):
          raise ConfigError(f"hypothesis {spec!r}: parameter {key}={full[key]:g} is out of range; it must be "
                            f"{allowed_range}")
      params = full
    hypotheses.append(Hypothesis(family, tuple(sorted(params.items())), lo, hi))
  return hypotheses


def expand(specs) -> list[Hypothesis]:
  """Expands all spec strings; names must come out unique."""
  if isinstance(specs, str):
    specs = (specs,)
  hypotheses = [h for spec in specs for h in parse(spec)]
  if not hypotheses:
    raise ConfigError("config.hypotheses is empty; give at least one, e.g. ('linear', 'power(gamma=0.5)')")
  names = [h.name for h in hypotheses]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f"config.hypotheses lists {duplicates} more than once; remove the repeats")
  return hypotheses


def target_table(hypotheses: list[Hypothesis], tau_T: np.ndarray) -> np.ndarray:
  """The (K, T) table of targets g_k(tau_t), validated: finite, within [0, 1], non-decreasing in t."""
  tau_T = np.asarray(tau_T, np.float64)
  rows = []
  for h in hypotheses:
    if h.family == "table" and len(dict(h.params)["values"]) != len(tau_T):
      raise ConfigError(f"hypothesis {h.name!r}: the table has {len(dict(h.params)['values'])} values but the "
                        f"data have {len(tau_T)} labels; give one value per label")
    if h.family in ("table", CONTROL):
      row = h.lo + (h.hi - h.lo) * np.asarray(dict(h.params)["values"], np.float64)
    else:
      row = np.asarray(h(tau_T), np.float64)
    if not np.all(np.isfinite(row)):
      raise ConfigError(f"hypothesis {h.name!r} gives non-finite values {row.tolist()}; fix its parameters")
    if row.min() < 0.0 or row.max() > 1.0:
      raise ConfigError(f"hypothesis {h.name!r} leaves [0, 1] (min {row.min():g}, max {row.max():g}); "
                        f"a fraction of area must lie in [0, 1]")
    if not h.control and np.any(np.diff(row) < -1e-9):
      t = int(np.argmax(np.diff(row) < -1e-9))
      raise ConfigError(f"hypothesis {h.name!r} is not monotone: it falls from {row[t]:g} at label {t} to "
                        f"{row[t + 1]:g} at label {t + 1}; a smoothed fraction must not decrease with stress time")
    rows.append(row)
  return np.stack(rows).astype(np.float32)


def _tent_ranks(num_labels: int) -> np.ndarray:
  """For each label, the rank of its target in a tent: rising to a peak at the middle stress time, then falling
  (ties between the two sides go to the earlier label)."""
  height = -np.abs(np.arange(num_labels) - (num_labels - 1) / 2.0) - 1e-3 * np.arange(num_labels)
  return np.argsort(np.argsort(height))


def permuted_controls(num_labels: int, count: int, seed: int, max_rank_correlation: float = 0.3) -> list:
  """`count` negative-control targets: the linear targets (evenly spaced over [0, 1]) in a label order that no
  monotone curve can follow.

  A model that only sees local texture gives a mean mask that is (close to) an affine function of the true fraction
  f(t), monotone in t, so it cannot follow such targets; a model that reads the stress time from any other cue
  (blur, brightness, ...) can, since any shape in t is then some function of that cue. The first control is the
  tent, a single peak at the middle stress time (one turn: the easiest non-monotone shape for a model reading a
  smooth cue such as brightness); the others are orders drawn from `seed`, each kept only if its Spearman
  correlation with the label order is at most `max_rank_correlation` in size (scrambled: the hardest). Returns []
  when fewer than 4 labels leave no such order.
  """
  if count <= 0 or num_labels < 4:
    return []
  values = np.linspace(0.0, 1.0, num_labels)
  rng = np.random.default_rng([seed, 0x5EED])
  ranks = np.arange(num_labels, dtype=np.float64)
  orders = [_tent_ranks(num_labels)]
  for _ in range(10_000):
    if len(orders) >= count:
      break
    order = rng.permutation(num_labels)
    rho = np.corrcoef(ranks, order.astype(np.float64))[0, 1]  # the ranks are the values: Pearson = Spearman
    if abs(rho) <= max_rank_correlation and not any(np.array_equal(order, o) for o in orders):
      orders.append(order)
  return [Hypothesis(CONTROL, (("draw", i + 1), ("values", tuple(values[order].tolist()))))
          for i, order in enumerate(orders[:count])]


def learned_curve(g_logits_Tm1, lo: float = 0.0, hi: float = 1.0):
  """A monotone curve at the T labels from T-1 free logits: softmax increments, endpoints pinned to lo and hi.

  Pinning both endpoints is what keeps the learned g and the mask from drifting together to a constant.
  """
  increments = jnp.exp(g_logits_Tm1 - jnp.max(g_logits_Tm1))
  increments = increments / jnp.sum(increments)
  cumulative = jnp.concatenate([jnp.zeros((1,), increments.dtype), jnp.cumsum(increments)])
  return lo + (hi - lo) * cumulative


def isotonic_fit(values_T: np.ndarray, weights_T: np.ndarray | None = None) -> np.ndarray:
  """Pool-adjacent-violators: the non-decreasing sequence closest to `values_T` in weighted least squares.

  With the model fixed, this is the best monotone g for the observed per-label mean masks (docs/science.md), and so a
  check on the gradient-learned curve.
  """
  values = np.asarray(values_T, np.float64)
  weights = np.ones_like(values) if weights_T is None else np.asarray(weights_T, np.float64)
  blocks = []  # [mean, weight, length]
  for v, w in zip(values, weights):
    blocks.append([v, w, 1])
    while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
      v2, w2, n2 = blocks.pop()
      v1, w1, n1 = blocks.pop()
      blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
  return np.concatenate([np.full(n, v) for v, _, n in blocks])
