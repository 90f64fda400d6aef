"""Masks from a sweep workdir: one hypothesis of its latest checkpoint, every (or one) trained seed."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax import device_memory, members, sample_estimates as samples
from copper_jax.data import prepare, sem_metadata
from copper_jax.errors import CheckpointError, UserError
from copper_jax.prediction import reader as reader_lib
from copper_jax.prediction import tiling, writers
from copper_jax.store import tables, workdir
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import steps as sweep_steps
from copper_jax.viz import pixels

# 0: whole images, one call each (faster than tiles: no overlap computed twice, docs/performance.md), unless XLA's
# memory analysis says the whole image would not fit; then tiles of FALLBACK_TILE pixels.
DEFAULT_TILE = 0
FALLBACK_TILE = 512

HEADER = ["path", "output", "sample", "height", "width", "smoothed_fraction_on_g_scale", "seed_sd", "seed_min",
          "seed_max", "num_seeds", "equivalent_stress_time", "pixel_size_nm", "flags", "hypothesis", "seeds",
          "checkpoint_step"]
SAMPLE_HEADER = ["sample", "num_fields", "num_seeds", "mean_smoothed_fraction_on_g_scale", "ci95_low", "ci95_high",
                 "interval_over", "equivalent_stress_time", "stress_time_ci95_low", "stress_time_ci95_high",
                 "stress_time_note", "flagged_fields", "hypothesis"]


def training_data(config, work_dir: str) -> prepare.DataSummary:
  """What the workdir's model needs of its training data: the stress times, image size and standardisation."""
  if not os.path.isdir(os.path.join(work_dir, "checkpoints")):
    raise CheckpointError(f"no checkpoints in {work_dir}: train first (launch/sweep.py or launch/train.py)")
  return prepare.load_summary(config, work_dir)


def _sample_of(stem: str) -> str:
  """The sample an output stem belongs to: its folder below the input folder ("." for files directly in it)."""
  return os.path.dirname(stem).replace(os.sep, "/") or "."


def _top_ranked(work_dir: str, names: list) -> str:
  path = os.path.join(work_dir, "sweep.json")
  results = workdir.read_json(path, None, fix="rerun launch/evaluate.py on the workdir, or pass --member")
  if not isinstance(results, dict):
    raise UserError(f"{work_dir} has no ranking (sweep.json) yet: pass --member, one of {', '.join(names)}")
  ranking = results.get("ranking")
  if not ranking:
    raise UserError(f"{work_dir}: no hypothesis was ranked ({results.get('verdict', 'every one diverged')}); "
                    f"retrain with a lower optim.learning_rate, or pass --member to use one anyway")
  if not isinstance(ranking, list) or not isinstance(ranking[0], str):
    raise UserError(f"{path}: its ranking is not a list of hypothesis names; rerun launch/evaluate.py on the "
                    f"workdir, or pass --member")
  return ranking[0]


class SweepPredictor:
  """One hypothesis of a sweep workdir's latest checkpoint, with one or all of its trained seeds, predicting masks
  of any size. `state` is the first seed's; `masks` gives every seed's."""

  header = HEADER

  def __init__(self, work_dir: str, member: str | None = None, seed: int | None = 0, tile: int = DEFAULT_TILE):
    work_dir = os.path.abspath(work_dir)
    config = workdir.load_config(work_dir)
    sweep_program.validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
    data = training_data(config, work_dir)
    sweep = sweep_program.build(config, data)
    names = [h.name for h in sweep.hypotheses]
    if member is None:
      member = _top_ranked(work_dir, names)
    if member not in names:
      raise UserError(f"--member={member!r} is not a hypothesis of {work_dir}; use one of {', '.join(names)}")
    if seed is not None and not 0 <= seed < config.num_seeds:
      raise UserError(f"--seed={seed}: {work_dir} trained seeds 0..{config.num_seeds - 1}")
    states, self.step = sweep_program.restore(work_dir, sweep)
    if states is None:
      raise CheckpointError(f"no checkpoint in {work_dir}/checkpoints: train first with launch/sweep.py")
    k = names.index(member)
    rows = {s: members.member_index(k, s, config.num_seeds) for s in
            ([seed] if seed is not None else range(config.num_seeds))}
    self.seed_states = {s: members.member_slice(states, m) for s, m in rows.items()}
    diverged = [s for s, state in self.seed_states.items() if bool(state.diverged)]
    if seed is not None and diverged:
      raise UserError(f"member {member} seed {seed} diverged in training; choose another --member or --seed")
    for s in diverged:
      del self.seed_states[s]
    if not self.seed_states:
      raise UserError(f"every seed of member {member} diverged in training; choose another --member")
    self.seeds = sorted(self.seed_states)
    self.state = self.seed_states[self.seeds[0]]
    self.seed = self.seeds[0]
    self.member = member
    # g at the labels, as trained (the learned g is each seed's own): what a fraction is inverted through.
    targets_MxT = np.asarray(jax.device_get(sweep.program.final_targets(states, sweep.member_arrays)))
    self.g_T = targets_MxT[[rows[s] for s in self.seeds]].mean(0)
    self.stress_times = data.stress_times
    self.data = data
    self.reader = reader_lib.Reader(config, data)
    self.tile, self.margin, self.multiple = tiling.tile_geometry(config.model, tile)
    self.depth = config.model.d
    # Whole images (tile=0) fall back to tiles when they would not fit; GroupNorm models cannot be tiled.
    self.fallback_tile = 0
    if self.tile == 0 and config.model.norm != "group":
      self.fallback_tile = tiling.tile_geometry(config.model, max(FALLBACK_TILE, 2 * self.margin + self.multiple))[0]
    model = sweep.program.model
    self._predict = jax.jit(lambda state, image: sweep_steps.predict_masks(state, {"image": image}, model=model))
    self._compiled = {}  # input shape -> executable: the whole-image memory check and the call share one compile
    self._records = []

  def _executable(self, shape):
    if shape not in self._compiled:
      self._compiled[shape] = self._predict.lower(self.state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
    return self._compiled[shape]

  def _run(self, image_1xHxWx1: np.ndarray, state=None):
    state = self.state if state is None else state
    return self._executable(image_1xHxWx1.shape)(state, jnp.asarray(image_1xHxWx1, jnp.float32))

  def tile_for(self, height: int, width: int) -> int:
    """The tile side for an (height, width) surface: `self.tile`, or with tile=0 the whole image when XLA's memory
    analysis of its program fits in the memory available now, else the fallback tile."""
    if self.tile or not self.fallback_tile:
      return self.tile
    shape = (1, -(-height // self.multiple) * self.multiple, -(-width // self.multiple) * self.multiple, 1)
    available = device_memory.available_memory_bytes()
    if available is None or device_memory.compiled_bytes(self._executable(shape)) <= available:
      return 0
    del self._compiled[shape]
    return self.fallback_tile

  def mask(self, pixels_HxW: np.ndarray, state=None) -> np.ndarray:
    """float32 (H, W) mask in [0, 1] of an image as read by `reader.read`, by `state` (default: the first seed's);
    info-bar rows are 0 (not surface)."""
    surface = self.reader.standardise(pixels_HxW)
    run = self._run if state is None else functools.partial(self._run, state=state)
    mask = tiling.predict_tiled(run, surface, self.tile_for(*surface.shape), self.margin, self.multiple)
    return np.pad(mask, ((0, self.reader.crop_bottom), (0, 0)))

  def masks(self, pixels_HxW: np.ndarray) -> np.ndarray:
    """float32 (S, H, W): `mask` of every seed in `seeds`."""
    return np.stack([self.mask(pixels_HxW, self.seed_states[s]) for s in self.seeds])

  # The interface `copper_jax.predict` drives, the same for every kind.

  def describe(self) -> str:
    return f"masks of hypothesis {self.member} (seeds {', '.join(map(str, self.seeds))}, checkpoint step {self.step})"

  def check_size(self, file: str, image: np.ndarray) -> None:
    """UserError when the image is too small for the net: below one pooling period (2^d) the reflect padding that
    puts it on the pooling grid has nothing to reflect."""
    reader_lib.check_size(file, image, self.reader.crop_bottom, max(self.multiple, 2),
                          f"the segmentation net (depth d={self.depth}, pooling period {self.multiple})")

  def about_text(self) -> str:
    return _about_text(self)

  def predict_file(self, file: str, stem: str, image: np.ndarray, out_dir: str) -> list:
    """Writes one image's mask files under `out_dir`; returns its summary row (and keeps its record for the
    per-sample table)."""
    target = os.path.join(out_dir, stem)
    H, W = image.shape
    crop = self.reader.crop_bottom
    meta = self.reader.metadata(file, H)
    masks_SxHxW = self.masks(image)
    probability = masks_SxHxW.mean(0)
    fraction_S = masks_SxHxW[:, :H - crop].mean(axis=(1, 2), dtype=np.float64)
    bar = meta.info_bar_rows if meta.info_bar_rows is not None else sem_metadata.detect_info_bar_rows(image)
    flags = samples.distribution_flags(image[:H - crop], meta.pixel_size_nm, self.data, bar, crop)
    writers.write_file(target + "_mask.tif", writers.tiff_bytes(
        np.where(probability >= 0.5, 255, 0).astype(np.uint8), meta.pixel_size_nm))
    writers.write_file(target + "_probability.tif", writers.tiff_bytes(probability.astype(np.float32),
                                                                      meta.pixel_size_nm))
    writers.write_file(target + "_overlay.png",
                       pixels.png_bytes(pixels.mask_overlay(pixels.display_gray(image), probability)))
    fraction = float(fraction_S.mean())
    t, _ = samples.equivalent_stress_time(fraction, self.g_T, self.stress_times)
    self._records.append({"sample": _sample_of(stem), "fraction_S": fraction_S, "flags": flags})
    number = writers.number
    return [file, stem, _sample_of(stem), H, W, f"{fraction:.6f}",
            number(float(fraction_S.std(ddof=1)) if len(fraction_S) > 1 else None),
            f"{fraction_S.min():.6f}", f"{fraction_S.max():.6f}", len(fraction_S), number(t),
            number(meta.pixel_size_nm), "; ".join(flags), self.member, " ".join(map(str, self.seeds)), self.step]

  def write_tables(self, out_dir: str) -> list:
    """samples.csv from the images predicted so far; returns its rows."""
    if not self._records:
      return []
    rows = samples.sample_rows(self._records, self.g_T, self.stress_times)
    number = writers.number
    tables.write_csv(os.path.join(out_dir, writers.SAMPLES_FILE), SAMPLE_HEADER, [
        [r["sample"], r["num_fields"], r["num_seeds"], f"{r['mean']:.6f}", number(r["ci95_low"]),
         number(r["ci95_high"]), r["interval_over"], number(r["stress_time"]), number(r["stress_time_low"]),
         number(r["stress_time_high"]), r["stress_time_note"] or "", r["flagged_fields"], self.member]
        for r in rows])
    return rows

  def flagged(self) -> int:
    """Images predicted so far that look unlike the training images."""
    return sum(1 for r in self._records if r["flags"])


def _about_text(model) -> str:
  g = ", ".join(f"g({t:g})={v:.3f}" for t, v in zip(model.stress_times, model.g_T))
  return f"""Predictions of hypothesis {model.member} (seeds {' '.join(map(str, model.seeds))}, checkpoint step {model.step}).

Scale: every fraction here is on the hypothesis's scale, where g(t_min) = 0 and g(t_max) = 1 by construction: it
says how far an image's smoothed-looking area lies between the least and the most etched training images, not
what share of the surface is smoothed in absolute terms. It is a learned proxy from SEM intensity and texture,
not an ISO 25178 roughness measurement (Sdr needs a height map).
g at the training stress times: {g}

{writers.SUMMARY_FILE}   one row per image: smoothed_fraction_on_g_scale (mean over seeds), its spread over seeds
              (seed_sd, seed_min, seed_max), the equivalent stress time (the t at which g reaches that fraction;
              empty when g has no inverse), the pixel size from the file's metadata, and flags when the image is
              unlike the training images (pixel size, brightness, contrast, info bar).
{writers.SAMPLES_FILE}   one row per sample (sub-folder): the mean over its fields of view and seeds with a 95% Student t
              interval over both (interval_over says which varied), and the equivalent stress time of the mean
              and of the interval's ends. Fields of view of one specimen are not independent draws of the
              process: the interval says how well this sample is measured, not how the process varies.
<stem>_mask.tif         8-bit mask, 255 = smoothed (seed-mean probability >= 0.5), opens in Fiji/ImageJ
<stem>_probability.tif  32-bit float probability in [0, 1] (mean over seeds); info-bar rows are 0
<stem>_overlay.png      the mask drawn on the image, to check it by eye
Text cells that a spreadsheet would read as a formula (starting with = + - @) begin with an apostrophe.
An output name that could not be the input's own (too long, or one of the files above) is a short name derived
from it; the path column holds the original.
"""
