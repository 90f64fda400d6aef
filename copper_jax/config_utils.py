"""Config helpers that fail early, with one-line messages naming the key and the fix.

Config files return `ml_collections.ConfigDict`s and launchers lock them, so misspelt command-line overrides
already fail; these helpers cover what locking cannot: dotted look-ups, configs reloaded from a workdir, the training duration and a
canonical JSON form for hashing. Each key's rule is in `config_rules`.
"""
import difflib
import json
import math
from typing import Any

import ml_collections
import numpy as np

from copper_jax.errors import ConfigError, DataError

_MISSING = object()

def get(config, dotted_key: str, default: Any = _MISSING) -> Any:
  """Value of `dotted_key` (e.g. "model.channels") in a ConfigDict or dict; `default` if given and missing."""
  node = config
  for part in dotted_key.split("."):
    if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
      node = node[part]
    elif default is not _MISSING:
      return default
    else:
      raise ConfigError(f"config.{dotted_key} does not exist: check the key's spelling against the config file")
  return node


def flatten(config, prefix: str = "") -> dict[str, Any]:
  """Leaf values keyed by dotted path; empty sub-configs are kept as leaves so they are not lost."""
  items = config.items() if isinstance(config, (ml_collections.ConfigDict, dict)) else ()
  flat = {}
  for key, value in items:
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and len(value):
      flat.update(flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def to_jsonable(value: Any, key: str = "") -> Any:
  """`value` as plain JSON types (tuples -> lists, numpy scalars -> Python); ConfigError naming `key` otherwise."""
  if isinstance(value, ml_collections.FieldReference):
    value = value.get()
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    items = value.items()
    return {str(k): to_jsonable(v, f"{key}.{k}" if key else str(k)) for k, v in items}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist(), key)
  if isinstance(value, np.generic):
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise ConfigError(f"config.{key}={value!r}: not JSON-serialisable; use a number, string, bool, None, list or dict")


def config_to_json(config, indent: int | None = None) -> str:
  """Canonical JSON (sorted keys; compact unless `indent`) of a ConfigDict or dict."""
  separators = (",", ":") if indent is None else (",", ": ")
  return json.dumps(to_jsonable(config), sort_keys=True, indent=indent, separators=separators)


def check_keys(config, reference) -> None:
  """ConfigError unless `config` has exactly the dotted keys of `reference` (e.g. a reloaded config.json)."""
  have, want = flatten(config), flatten(reference)
  for key in have:
    if key not in want:
      close = difflib.get_close_matches(key, list(want), n=1)
      hint = f"did you mean config.{close[0]}? " if close else ""
      raise ConfigError(f"config.{key} is not a known key: {hint}fix the spelling or remove it")
  for key in want:
    if key not in have:
      raise ConfigError(f"config.{key} is missing: add it (the default config has {want[key]!r})")


def _count(train_config, name: str, prefix: str) -> int:
  value = train_config[name]
  if value is None:
    return 0
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ConfigError(f"config.{prefix}{name}={value!r}: must be a whole number >= 0")
  return int(value)


def total_steps(train_config, num_train_images: int, prefix: str = "train.", patches_per_image: int = 1) -> int:
  """Number of optimiser steps; the duration is set once, by `num_steps` or by `num_epochs`.

  An epoch covers every training image's area once in patches: ceil(num_train_images * patches_per_image /
  batch_size) steps, `patches_per_image` being ceil(H * W / patch_size**2) (data.sampler.patches_per_image).
  `prefix` is where `train_config` sits in the full config, for messages.
  """
  num_steps = _count(train_config, "num_steps", prefix)
  num_epochs = _count(train_config, "num_epochs", prefix)
  if (num_steps > 0) == (num_epochs > 0):
    raise ConfigError(
        f"config.{prefix}num_steps={num_steps} and config.{prefix}num_epochs={num_epochs}: set exactly one of "
        "them > 0 and the other to 0")
  if num_steps:
    return num_steps
  batch_size = train_config["batch_size"]
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ConfigError(f"config.{prefix}batch_size={batch_size!r}: must be a whole number > 0")
  if num_train_images <= 0:
    raise DataError(f"no training images (num_train_images={num_train_images}) to count epochs over: "
                    "point the data config at a folder with images")
  return num_epochs * math.ceil(num_train_images * int(patches_per_image) / int(batch_size))
