"""Stratified train/val/test splits, saved by image path so a resumed run or an evaluation sees the same test set."""
import json
import os
import tempfile
import warnings

import numpy as np

from copper_jax.errors import ConfigError, DataError
from copper_jax.store import workdir as workdir_lib

SPLITS_FILE = "splits.json"
_RESPLIT_FIX = "restore the dataset or delete it to re-split (this changes the test set)"


# A label with at least this many specimens is split by specimen; with fewer, one specimen would have to fill a
# whole split (or be cut), so its images are split one by one as before.
MIN_SPECIMENS_TO_GROUP = 3


def make_splits(labels, num_classes: int, sizes, seed: int, label_names=None, specimens=None) -> dict:
  """Disjoint, stratified, seeded splits: {name: sorted (n,) int64 image indices}.

  sizes: {"train": 40, "val": 5, "test": 5} images per label (all ints), or fractions of each label (all floats,
    sum <= 1). With fractions every split with a fraction > 0 gets at least one image per label, and "train"
    absorbs the rounding.
  Each label is shuffled by its own generator seeded with (seed, label), and the non-train splits are drawn
  first in name order, so changing the train size or adding a label leaves val and test unchanged.
  label_names: folder names, only used to name a label in errors.
  specimens: one specimen name per image (`SEMDataset.specimens`), or None. In a label with at least
    MIN_SPECIMENS_TO_GROUP specimens, each specimen's images stay in one split: whole specimens, shuffled, are
    handed to each split until it holds at least its count of images (so a split may hold a few more), and a split
    that asks for images gets at least one specimen.
  """
  sizes, fractions = _check_sizes(sizes)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed={seed!r}: the split seed must be an integer >= 0")
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  order = sorted(k for k in sizes if k != "train") + (["train"] if "train" in sizes else [])
  picked = {k: [] for k in order}
  for label in range(num_classes):
    members = np.flatnonzero(labels == label)
    counts = _counts_for_label(len(members), sizes, fractions)
    if sum(counts.values()) > len(members):
      name = label_names[label] if label_names is not None else label
      asked = ", ".join(f"{k} {counts[k]}" for k in order)
      raise DataError(f"label folder {name!r} has {len(members)} images but the splits ask for "
                      f"{sum(counts.values())} ({asked}): lower the split sizes or add images")
    rng = np.random.default_rng([int(seed), label])
    if specimens is not None:
      groups = _specimen_groups(members, specimens)
      if len(groups) >= MIN_SPECIMENS_TO_GROUP:
        name = label_names[label] if label_names is not None else label
        shuffled_groups = [groups[i] for i in rng.permutation(len(groups))]
        for k, taken in _split_groups(shuffled_groups, counts, order, name, fractions):
          picked[k].append(taken)
        continue
    shuffled = rng.permutation(members)
    start = 0
    for k in order:
      picked[k].append(shuffled[start:start + counts[k]])
      start += counts[k]
  return {k: np.sort(np.concatenate(picked[k] or [np.zeros(0, np.int64)]).astype(np.int64)) for k in sizes}


def _specimen_groups(members, specimens) -> list:
  """The label's image indices grouped by specimen, in order of specimen name."""
  groups = {}
  for i in members:
    groups.setdefault(specimens[i], []).append(i)
  return [np.asarray(groups[name], np.int64) for name in sorted(groups)]


def _split_groups(groups, counts: dict, order: list, label_name, fractions: bool):
  """[(split, image indices)]: whole groups to each split in `order` until it holds at least its count. Fractions
  are approximate anyway, so there a split only needs one group; counts must be met."""
  start = 0
  for k in order:
    taken = []
    while sum(len(g) for g in taken) < counts[k] and start < len(groups):
      taken.append(groups[start])
      start += 1
    if counts[k] > 0 and (not taken if fractions else sum(len(g) for g in taken) < counts[k]):
      raise DataError(f"label folder {label_name!r}: its {len(groups)} specimens run out before split {k!r} gets "
                      f"{counts[k]} images (each specimen's images stay in one split); lower the split sizes or add "
                      f"specimens")
    yield k, np.concatenate(taken) if taken else np.zeros(0, np.int64)


def load_or_make_splits(workdir: str, dataset, sizes, seed: int) -> dict:
  """Splits of `dataset` (an SEMDataset) reused from workdir/splits.json by path, or made and saved there.

  The saved file wins over `sizes` and `seed` (a warning says when they differ), so the test images never move
  into training on resume or evaluation.
  """
  path = os.path.join(workdir, SPLITS_FILE)
  if os.path.exists(path):
    return _reuse(path, dataset, sizes, seed)
  if workdir_lib.has_checkpoints(workdir):
    # A new split would put some of the images the model was tested on into its training set, unnoticed.
    raise DataError(f"{path} is missing, but {workdir} holds checkpoints trained on the split it recorded: restore "
                    f"it from a backup (a new split would mix test images into training), or use a fresh --workdir")
  sizes, _ = _check_sizes(sizes)
  splits = make_splits(dataset.labels, dataset.num_classes, sizes, seed, dataset.label_names,
                       getattr(dataset, "specimens", None))
  content = {"seed": int(seed), "sizes": sizes,
             "splits": {k: [dataset.paths[i] for i in idx] for k, idx in splits.items()}}
  if not _write_new(path, content):
    return _reuse(path, dataset, sizes, seed)  # a concurrent run saved its splits first; use those
  return splits


def _check_sizes(sizes):
  """(sizes as a plain dict of int or float, True when they are fractions); ConfigError when unusable."""
  try:
    sizes = dict(sizes)
  except (TypeError, ValueError):
    raise ConfigError(f"split sizes {sizes!r}: must be a mapping like {{'train': 40, 'val': 5, 'test': 5}}") from None
  values = list(sizes.values())
  if not sizes or not all(isinstance(k, str) and k for k in sizes):
    raise ConfigError(f"split sizes {sizes!r}: need at least one split, named by a non-empty string")
  if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
    if min(values) < 0:
      raise ConfigError(f"split sizes {sizes!r}: image counts per label must be >= 0")
    return {k: int(v) for k, v in sizes.items()}, False
  if all(isinstance(v, (float, np.floating)) for v in values):
    if min(values) < 0 or sum(values) > 1 + 1e-9:
      raise ConfigError(f"split sizes {sizes!r}: fractions must be >= 0 and sum to at most 1")
    return {k: float(v) for k, v in sizes.items()}, True
  raise ConfigError(f"split sizes {sizes!r}: use all ints (images per label) or all floats (fractions of each "
                    f"label), not a mix")


def _counts_for_label(n: int, sizes: dict, fractions: bool) -> dict:
  """Images each split takes from a label of `n` images."""
  if not fractions:
    return dict(sizes)
  counts = {k: (max(1, round(f * n)) if f > 0 else 0) for k, f in sizes.items() if k != "train"}
  if "train" in sizes:
    unused = round((1.0 - sum(sizes.values())) * n)  # images no split asked for stay out
    rest = n - sum(counts.values()) - unused
    counts["train"] = max(rest, 1 if sizes["train"] > 0 else 0)
  return counts


def _reuse(path: str, dataset, sizes, seed) -> dict:
  """Indices of the paths saved in `path`; DataError when the file is unusable or lists a missing image."""
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    saved_splits = saved["splits"]
    if not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in saved_splits.values()):
      raise ValueError("every split must be a list of paths")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f"{path}: not a readable splits file ({type(e).__name__}: {e}); {_RESPLIT_FIX}") from None
  index_of = {p: i for i, p in enumerate(dataset.paths)}
  seen = {}
  splits = {}
  for name, paths in saved_splits.items():
    for p in paths:
      if p not in index_of:
        raise DataError(f"{path} lists {p!r} ({name}) which is not in {dataset.root} (missing or skipped); "
                        f"{_RESPLIT_FIX}")
      if p in seen:
        raise DataError(f"{path} lists {p!r} in both {seen[p]!r} and {name!r}; {_RESPLIT_FIX}")
      seen[p] = name
    splits[name] = np.sort(np.asarray([index_of[p] for p in paths], np.int64))
  requested, _ = _check_sizes(sizes)
  if saved.get("sizes") != requested or saved.get("seed") != seed:
    warnings.warn(f"{path} was made with seed={saved.get('seed')!r} sizes={saved.get('sizes')!r}, not the "
                  f"requested seed={seed!r} sizes={requested!r}; reusing the saved splits (delete the file to "
                  f"re-split)", stacklevel=3)
  return splits


def _write_new(path: str, content: dict) -> bool:
  """Writes `content` to `path` atomically; False (nothing written) when `path` appeared meanwhile."""
  folder = os.path.dirname(path) or "."
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".splits.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; a split is for everyone who reads the workdir
      json.dump(content, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    if os.path.exists(path):
      return False
    os.replace(tmp, path)
    tmp = None
    return True
  except OSError as e:
    raise ConfigError(f"workdir {folder}: cannot write {SPLITS_FILE} ({type(e).__name__}: {e}); check the "
                      f"workdir setting and its permissions") from None
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


def pick_overlay_images(labels_N, held_out_idx, count):
  """Up to `count` held-out images spread evenly over the labels (low to high stress time)."""
  held_out_idx = np.asarray(held_out_idx)
  order = held_out_idx[np.argsort(labels_N[held_out_idx], kind="stable")]
  if count >= len(order):
    return order
  return order[np.round(np.linspace(0, len(order) - 1, count)).astype(int)]
