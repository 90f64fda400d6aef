"""Masks (sweep workdir) or stress-time probabilities (classifier workdir) for new SEM images, at full resolution.

`predict(work_dir, images, out_dir)` is what launch/predict.py calls. The model comes back through the same
strict restore as evaluation (config.json plus the latest checkpoint), and each image is read and standardised
exactly as the training images were: the folder loader's decoders (any bit depth, colour to luminance), the same
info-bar crop, and the training set's mean and std when the config standardised by dataset. What it needs of the
training data comes from W/data_summary.json (`prepare.DataSummary`), so the training images are not loaded.

Outputs under `out_dir`, mirroring the input's sub-folders and file stems:
  sweep:      <stem>_mask.tif (8-bit, 255 = smoothed), <stem>_probability.tif (float32 in [0, 1], the image's
              H x W, mean over seeds), <stem>_overlay.png; samples.csv one row per sample (sub-folder) with an
              interval and the equivalent stress time; about.txt what the columns mean and on what scale
  classifier: <stem>_cam.png (class activation map of the predicted stress time)
  summary.csv one row per image; skipped.txt the files that could not be used, and why.
"""
import csv
import functools
import io
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax import config_utils, members, samples
from copper_jax.classifier import program as classifier_program
from copper_jax.data import folder, prepare, sem_metadata
from copper_jax.errors import CheckpointError, ConfigError, UserError
from copper_jax.models import analysis
from copper_jax.store import workdir
from copper_jax.store.logs import Progress, log
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import steps as sweep_steps
from copper_jax.viz import pixels

SUMMARY_FILE = "summary.csv"
SAMPLES_FILE = "samples.csv"
ABOUT_FILE = "about.txt"
SKIPPED_FILE = "skipped.txt"
# 0: whole images, one call each (faster than tiles: no overlap computed twice, docs/performance.md), unless XLA's
# memory analysis says the whole image would not fit; then tiles of FALLBACK_TILE pixels.
DEFAULT_TILE = 0
FALLBACK_TILE = 512


class Reader:
  """Reads and standardises an image exactly as the model's training images were read and standardised."""

  def __init__(self, config, summary: prepare.DataSummary):
    self.mode = config.data.standardise
    self.page = config.data.get("page", 0)
    self.pixel_size_nm = config.data.get("pixel_size_nm", 0.0)
    self.crop_setting = config.data.crop_bottom
    # A per-file crop ("auto") or resampling happens in `read`, as in training: what it returns is the surface.
    self.prepares = self.crop_setting == folder.AUTO_CROP or bool(self.pixel_size_nm)
    self.crop_bottom = 0 if self.prepares else self.crop_setting
    self.mean, self.std = summary.mean, summary.std
    self.dtype = summary.dtype

  def read(self, path: str) -> np.ndarray:
    """(H, W) pixels in the file's native units, info bar kept (cut, and resampled, with crop_bottom="auto" or
    data.pixel_size_nm); raises UserError naming the file."""
    image = folder.read_image(path, page=self.page)
    if self.mode == "dataset" and image.dtype != self.dtype:
      # The training mean and std are in the training images' units; another bit depth would be misread.
      raise UserError(f"{path}: {image.dtype} pixels, but the model was trained on {self.dtype} images "
                      f"standardised by the training set; convert the image to {self.dtype}")
    if self.prepares:
      meta = sem_metadata.read_sem_metadata(path, *image.shape)
      image, _ = folder.prepare_surface(path, image, meta, self.crop_setting, self.pixel_size_nm)
    if self.crop_bottom >= image.shape[0]:
      raise UserError(f"{path}: {image.shape[0]} rows, not more than the info bar crop_bottom={self.crop_bottom}")
    return image

  def metadata(self, path: str, height: int) -> sem_metadata.SEMMetadata:
    """The file's metadata as it applies to the image `read` returned (`height` rows)."""
    if not self.prepares:
      return sem_metadata.read_sem_metadata(path, height)
    return folder.surface_metadata(sem_metadata.read_sem_metadata(path), self.crop_setting, self.pixel_size_nm)

  def standardise(self, pixels_HxW: np.ndarray) -> np.ndarray:
    """float32 surface (info bar cropped) standardised as in training."""
    surface = pixels_HxW[:pixels_HxW.shape[0] - self.crop_bottom]
    if self.mode == "image":
      return folder.standardise_pixels(surface, surface.mean(dtype=np.float64), surface.std(dtype=np.float64))
    return folder.standardise_pixels(surface, self.mean, self.std)


def tile_plan(size: int, tile: int, margin: int):
  """[(start, keep_from, keep_to)] along one axis of `size` pixels: tiles of `tile` pixels overlapping by at least
  2 * `margin`, each keeping pixels at least `margin` from its inner borders, together keeping every pixel once.

  When `size`, `tile` and `margin` are multiples of the pooling stride, so is every start.
  """
  if size <= tile:
    return [(0, 0, size)]
  step = tile - 2 * margin
  plan, kept_to = [], 0
  for s in list(range(0, size - tile, step)) + [size - tile]:
    # The last tile is flush with the border and may overlap its neighbour more; it keeps only what is new.
    plan.append((s, kept_to, size if s + tile == size else s + tile - margin))
    kept_to = plan[-1][2]
  return plan


def predict_tiled(predict_fn, image_HxW: np.ndarray, tile: int, margin: int, multiple: int) -> np.ndarray:
  """`predict_fn` ((1, h, w, 1) -> (1, h, w)) over a large image in tiles, equal to one whole-image call.

  The image is first reflect-padded at the bottom and right to a multiple of `multiple` (2^d), as the model
  itself would pad it, so every tile starts on the pooling grid and sees the same pixels as the whole image.
  An output pixel at least `margin` (the receptive field) from a tile's inner border does not see that border,
  so keeping tile centres gives the whole-image values with no blending and no seams. tile=0: one call.
  """
  H, W = image_HxW.shape
  padded = np.pad(image_HxW, ((0, -H % multiple), (0, -W % multiple)), mode="reflect")
  Hp, Wp = padded.shape
  if tile == 0 or (Hp <= tile and Wp <= tile):
    return np.asarray(predict_fn(padded[None, ..., None])[0])[:H, :W]
  out = np.empty((Hp, Wp), np.float32)
  for r0, keep_r0, keep_r1 in tile_plan(Hp, tile, margin):
    for c0, keep_c0, keep_c1 in tile_plan(Wp, tile, margin):
      piece = padded[r0:r0 + min(tile, Hp), c0:c0 + min(tile, Wp)]
      mask = np.asarray(predict_fn(piece[None, ..., None])[0])
      out[keep_r0:keep_r1, keep_c0:keep_c1] = mask[keep_r0 - r0:keep_r1 - r0, keep_c0 - c0:keep_c1 - c0]
  return out[:H, :W]


def tile_geometry(model_config, tile: int):
  """(tile, margin, multiple) in pixels for a segmentation model: the margin is its receptive field, both
  rounded to the pooling grid. tile=0 predicts whole images."""
  multiple = 2 ** model_config.d
  margin = -(-analysis.receptive_field("segmentation", model_config.c, model_config.d, model_config.n,
                                       model_config.N) // multiple) * multiple
  if tile < 0:
    raise ConfigError(f"tile={tile}: must be 0 (whole images) or a tile side in pixels")
  if model_config.norm == "group":
    return 0, margin, multiple  # GroupNorm statistics span the whole input, so tiles would change the mask
  tile = tile // multiple * multiple
  if tile and tile <= 2 * margin:
    raise ConfigError(f"tile={tile}: must exceed twice the receptive field ({2 * margin} pixels) so tile centres "
                      f"are exact; use at least {2 * margin + multiple}, or 0 for whole images")
  return tile, margin, multiple


def _training_data(config, work_dir: str) -> prepare.DataSummary:
  """What the workdir's model needs of its training data: the stress times, image size and standardisation."""
  if not os.path.isdir(os.path.join(work_dir, "checkpoints")):
    raise CheckpointError(f"no checkpoints in {work_dir}: train first (launch/sweep.py or launch/train.py)")
  return prepare.load_summary(config, work_dir)


class SweepPredictor:
  """One hypothesis of a sweep workdir's latest checkpoint, with one or all of its trained seeds, predicting masks
  of any size. `state` is the first seed's; `masks` gives every seed's."""

  def __init__(self, work_dir: str, member: str | None = None, seed: int | None = 0, tile: int = DEFAULT_TILE):
    work_dir = os.path.abspath(work_dir)
    config = workdir.load_config(work_dir)
    sweep_program.validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
    data = _training_data(config, work_dir)
    sweep = sweep_program.build(config, data)
    names = [h.name for h in sweep.hypotheses]
    if member is None:
      results = workdir.read_json(os.path.join(work_dir, "sweep.json"), None)
      if not isinstance(results, dict):
        raise UserError(f"{work_dir} has no ranking (sweep.json) yet: pass --member, one of {', '.join(names)}")
      if not results.get("ranking"):
        raise UserError(f"{work_dir}: no hypothesis was ranked ({results.get('verdict', 'every one diverged')}); "
                        f"retrain with a lower optim.learning_rate, or pass --member to use one anyway")
      member = results["ranking"][0]
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
    self.reader = Reader(config, data)
    self.tile, self.margin, self.multiple = tile_geometry(config.model, tile)
    # Whole images (tile=0) fall back to tiles when they would not fit; GroupNorm models cannot be tiled.
    self.fallback_tile = 0
    if self.tile == 0 and config.model.norm != "group":
      self.fallback_tile = tile_geometry(config.model, max(FALLBACK_TILE, 2 * self.margin + self.multiple))[0]
    model = sweep.program.model
    self._predict = jax.jit(lambda state, image: sweep_steps.predict_masks(state, {"image": image}, model=model))
    self._compiled = {}  # input shape -> executable: the whole-image memory check and the call share one compile

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
    available = config_utils.available_memory_bytes()
    if available is None or config_utils.compiled_bytes(self._executable(shape)) <= available:
      return 0
    del self._compiled[shape]
    return self.fallback_tile

  def mask(self, pixels_HxW: np.ndarray, state=None) -> np.ndarray:
    """float32 (H, W) mask in [0, 1] of an image as read by `reader.read`, by `state` (default: the first seed's);
    info-bar rows are 0 (not surface)."""
    surface = self.reader.standardise(pixels_HxW)
    run = self._run if state is None else functools.partial(self._run, state=state)
    mask = predict_tiled(run, surface, self.tile_for(*surface.shape), self.margin, self.multiple)
    return np.pad(mask, ((0, self.reader.crop_bottom), (0, 0)))

  def masks(self, pixels_HxW: np.ndarray) -> np.ndarray:
    """float32 (S, H, W): `mask` of every seed in `seeds`."""
    return np.stack([self.mask(pixels_HxW, self.seed_states[s]) for s in self.seeds])


class ClassifierPredictor:
  """A classifier workdir's evaluation checkpoint: class probabilities and the CAM of the predicted class.

  Whole images in one call, as the classifier is evaluated: global average pooling makes the logits a mean over
  the whole image.
  """

  def __init__(self, work_dir: str):
    work_dir = os.path.abspath(work_dir)
    config = workdir.load_config(work_dir)
    classifier_program.validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
    data = _training_data(config, work_dir)
    program = classifier_program.ClassifierProgram(config, data.num_classes, None)
    self.state, info = classifier_program.restore_for_eval(config, work_dir, data, data.split_sizes.get("val", 0) > 0, program,
                                                           config.eval.checkpoint)
    self.step = info["step"]
    self.stress_times = data.stress_times
    self.reader = Reader(config, data)
    self._classify = jax.jit(functools.partial(_logits_and_cam, program.model))

  def classify(self, pixels_HxW: np.ndarray):
    """(probabilities (K,), CAM of the predicted class (H_surface, W)) of an image as read by `reader.read`."""
    surface = self.reader.standardise(pixels_HxW)
    logits_K, cam_HxW = jax.device_get(self._classify(self.state, jnp.asarray(surface[None, ..., None])))
    logits = np.asarray(logits_K, np.float64)
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    return prob, np.asarray(cam_HxW)


def _logits_and_cam(model, state, image_1xHxWx1):
  """Logits (K,) of one image and the class map of its predicted class brought to the image (H, W)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits_K = model.apply(variables, image_1xHxWx1, train=False)[0]
  cam_1xhxwxK = analysis.class_activation_maps(model, variables, image_1xHxWx1)
  cam_1xhxwx1 = jax.lax.dynamic_slice_in_dim(cam_1xhxwxK, jnp.argmax(logits_K), 1, axis=-1)
  _, H, W, _ = image_1xHxWx1.shape
  return logits_K, analysis.upsample_maps(cam_1xhxwx1, H, W, model.d)[0, ..., 0]


def classifier_cams(classifier_dir: str, paths) -> dict:
  """{position in `paths`: (uint8 RGB CAM overlay, caption)} of a classifier workdir's predicted stress time."""
  model = ClassifierPredictor(classifier_dir)
  out = {}
  for j, path in enumerate(paths):
    image = model.reader.read(path)
    prob, cam = model.classify(image)
    gray = pixels.display_gray(image)[:cam.shape[0]]
    k = int(prob.argmax())
    out[j] = (pixels.cam_overlay(gray, cam), f"classifier: t={model.stress_times[k]:g} (p={prob[k]:.2f})")
  return out


def find_images(paths, out_dir: str) -> list:
  """[(file, output stem relative to the output folder)]: folders searched recursively (hidden entries, non-image
  files and `out_dir` left out), files taken as given; stems mirror the folder below the given folder, or below
  the files' common folder."""
  if not paths:
    raise UserError("no images given: pass --images=FOLDER or image files")
  out_dir = os.path.realpath(out_dir)
  found = []
  for path in paths:
    if os.path.isdir(path):
      for parent, dirs, files in os.walk(path):
        # An output folder inside the input folder would feed a rerun its own overlays.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(parent, d)) != out_dir)
        for name in sorted(files):
          if not name.startswith(".") and os.path.splitext(name)[1].lower() in folder.IMAGE_EXTENSIONS:
            file = os.path.join(parent, name)
            found.append((file, os.path.splitext(os.path.relpath(file, path))[0]))
    elif os.path.exists(path):
      found.append((path, None))
    else:
      raise UserError(f"--images={path}: no such file or folder")
  loose = [f for f, stem in found if stem is None]
  if loose:
    base = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in loose])
    stems = {f: os.path.splitext(os.path.relpath(os.path.abspath(f), base))[0] for f in loose}
    found = [(f, stem if stem is not None else stems[f]) for f, stem in found]
  return found


def check_out_folder(out_dir: str, images) -> str:
  """The absolute output folder, refused (UserError) before any work when it is unusable (see
  `workdir.check_output_folder`), when it is an input folder, or when an input lies inside it: its overlays and
  masks could then replace a user's file or be read as images by the next run. An output folder inside an input
  folder is fine: `find_images` leaves it out."""
  out_dir = workdir.check_output_folder(out_dir, "--out")
  real_out = os.path.realpath(out_dir)
  for path in images:
    real = os.path.realpath(path)
    if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
      raise UserError(f"--out={out_dir} {'is' if real == real_out else 'holds'} the input {path}: outputs would "
                      f"land among the images they are made from; choose an --out folder outside the inputs")
  return out_dir


def _tiff_bytes(pixels_HxW: np.ndarray, pixel_size_nm: float | None) -> bytes:
  """A TIFF Fiji/ImageJ opens with its scale set when the pixel size is known."""
  import tifffile
  buffer = io.BytesIO()
  if pixel_size_nm:
    per_um = 1e3 / pixel_size_nm
    tifffile.imwrite(buffer, pixels_HxW, imagej=True, resolution=(per_um, per_um), metadata={"unit": "um"})
  else:
    tifffile.imwrite(buffer, pixels_HxW)
  return buffer.getvalue()


def _write_csv(path: str, header: list, rows: list) -> None:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  workdir.atomic_write_text(path, text.getvalue())


def _number(value, digits: int = 6) -> str:
  return "" if value is None else f"{value:.{digits}g}"


def _sample_of(stem: str) -> str:
  """The sample an output stem belongs to: its folder below the input folder ("." for files directly in it)."""
  return os.path.dirname(stem).replace(os.sep, "/") or "."


SWEEP_HEADER = ["path", "output", "sample", "height", "width", "smoothed_fraction_on_g_scale", "seed_sd", "seed_min",
                "seed_max", "num_seeds", "equivalent_stress_time", "pixel_size_nm", "flags", "hypothesis", "seeds",
                "checkpoint_step"]
SAMPLE_HEADER = ["sample", "num_fields", "num_seeds", "mean_smoothed_fraction_on_g_scale", "ci95_low", "ci95_high",
                 "interval_over", "equivalent_stress_time", "stress_time_ci95_low", "stress_time_ci95_high",
                 "stress_time_note", "flagged_fields", "hypothesis"]


def _about_text(model) -> str:
  g = ", ".join(f"g({t:g})={v:.3f}" for t, v in zip(model.stress_times, model.g_T))
  return f"""Predictions of hypothesis {model.member} (seeds {' '.join(map(str, model.seeds))}, checkpoint step {model.step}).

Scale: every fraction here is on the hypothesis's scale, where g(t_min) = 0 and g(t_max) = 1 by construction: it
says how far an image's smoothed-looking area lies between the least and the most etched training images, not
what share of the surface is smoothed in absolute terms. It is a learned proxy from SEM intensity and texture,
not an ISO 25178 roughness measurement (Sdr needs a height map).
g at the training stress times: {g}

{SUMMARY_FILE}   one row per image: smoothed_fraction_on_g_scale (mean over seeds), its spread over seeds
              (seed_sd, seed_min, seed_max), the equivalent stress time (the t at which g reaches that fraction;
              empty when g has no inverse), the pixel size from the file's metadata, and flags when the image is
              unlike the training images (pixel size, brightness, contrast, info bar).
{SAMPLES_FILE}   one row per sample (sub-folder): the mean over its fields of view and seeds with a 95% Student t
              interval over both (interval_over says which varied), and the equivalent stress time of the mean
              and of the interval's ends. Fields of view of one specimen are not independent draws of the
              process: the interval says how well this sample is measured, not how the process varies.
<stem>_mask.tif         8-bit mask, 255 = smoothed (seed-mean probability >= 0.5), opens in Fiji/ImageJ
<stem>_probability.tif  32-bit float probability in [0, 1] (mean over seeds); info-bar rows are 0
<stem>_overlay.png      the mask drawn on the image, to check it by eye
"""


def _predict_sweep_image(model, file: str, stem: str, image: np.ndarray, target: str) -> tuple[list, dict]:
  """Writes one image's mask files; returns its summary row and its record for the per-sample table."""
  H, W = image.shape
  crop = model.reader.crop_bottom
  meta = model.reader.metadata(file, H)
  masks_SxHxW = model.masks(image)
  probability = masks_SxHxW.mean(0)
  fraction_S = masks_SxHxW[:, :H - crop].mean(axis=(1, 2), dtype=np.float64)
  bar = meta.info_bar_rows if meta.info_bar_rows is not None else sem_metadata.detect_info_bar_rows(image)
  flags = samples.distribution_flags(image[:H - crop], meta.pixel_size_nm, model.data, bar, crop)
  workdir.atomic_write_bytes(target + "_mask.tif", _tiff_bytes(np.where(probability >= 0.5, 255, 0).astype(np.uint8),
                                                               meta.pixel_size_nm))
  workdir.atomic_write_bytes(target + "_probability.tif", _tiff_bytes(probability.astype(np.float32),
                                                                      meta.pixel_size_nm))
  workdir.atomic_write_bytes(target + "_overlay.png",
                             pixels.png_bytes(pixels.mask_overlay(pixels.display_gray(image), probability)))
  fraction = float(fraction_S.mean())
  t, _ = samples.equivalent_stress_time(fraction, model.g_T, model.stress_times)
  row = [file, stem, _sample_of(stem), H, W, f"{fraction:.6f}",
         _number(float(fraction_S.std(ddof=1)) if len(fraction_S) > 1 else None),
         f"{fraction_S.min():.6f}", f"{fraction_S.max():.6f}", len(fraction_S), _number(t),
         _number(meta.pixel_size_nm), "; ".join(flags), model.member, " ".join(map(str, model.seeds)), model.step]
  return row, {"sample": _sample_of(stem), "fraction_S": fraction_S, "flags": flags}


def _write_samples(out_dir: str, model, records: list) -> list:
  rows = samples.sample_rows(records, model.g_T, model.stress_times)
  _write_csv(os.path.join(out_dir, SAMPLES_FILE), SAMPLE_HEADER, [
      [r["sample"], r["num_fields"], r["num_seeds"], f"{r['mean']:.6f}", _number(r["ci95_low"]),
       _number(r["ci95_high"]), r["interval_over"], _number(r["stress_time"]), _number(r["stress_time_low"]),
       _number(r["stress_time_high"]), r["stress_time_note"] or "", r["flagged_fields"], model.member]
      for r in rows])
  return rows


def predict(work_dir: str, images, out_dir: str, member: str | None = None, seed: int | None = None,
            tile: int = DEFAULT_TILE, quiet: bool = False) -> dict:
  """Predicts every image in `images` (folders and files) with the model of `work_dir` into `out_dir`.

  seed: sweep only: the one trained seed to use; None uses every seed that did not diverge, and reports their
    spread.
  Returns {"rows": summary rows as dicts, "samples": per-sample rows (sweep), "skipped": ["file: reason"],
  "kind": "sweep" | "classifier"}. Unreadable images are skipped (listed on stderr and in skipped.txt); the tables
  are rewritten after every image, so an interrupted run keeps the rows of the images it finished.
  """
  config = workdir.load_config(work_dir)
  kind = "sweep" if "hypotheses" in config else "classifier"
  if kind == "classifier" and member is not None:
    raise UserError(f"{work_dir} is a classifier workdir: --member only applies to a sweep")
  out_dir = check_out_folder(out_dir, images)
  found = find_images(images, out_dir)
  if not found:
    raise UserError(f"no image files ({'/'.join(folder.IMAGE_EXTENSIONS)}) in {', '.join(map(str, images))}: "
                    f"point --images at a folder holding SEM images")
  model = SweepPredictor(work_dir, member, seed, tile) if kind == "sweep" else ClassifierPredictor(work_dir)
  os.makedirs(out_dir, exist_ok=True)
  if kind == "sweep":
    log(f"masks of hypothesis {model.member} (seeds {', '.join(map(str, model.seeds))}, checkpoint step "
        f"{model.step})", quiet)
    header = SWEEP_HEADER
    workdir.atomic_write_text(os.path.join(out_dir, ABOUT_FILE), _about_text(model))
  else:
    log(f"stress times from the classifier (checkpoint step {model.step})", quiet)
    header = (["path", "output", "height", "width", "predicted_stress_time"]
              + [f"p_t={t:g}" for t in model.stress_times] + ["checkpoint_step"])
  rows, records, sample_table, skipped, taken = [], [], [], [], {}
  progress = Progress(len(found), "predict", quiet=quiet)
  try:
    for file, stem in found:
      progress.update(1)
      key = os.path.normcase(stem)
      if key in taken:
        skipped.append(f"{file}: same output name {stem} as {taken[key]}; rename one of them")
        continue
      try:
        image = model.reader.read(file)
      except UserError as e:
        skipped.append(str(e))
        continue
      taken[key] = file
      target = os.path.join(out_dir, stem)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      H, W = image.shape
      if kind == "sweep":
        row, record = _predict_sweep_image(model, file, stem, image, target)
        rows.append(row)
        records.append(record)
        sample_table = _write_samples(out_dir, model, records)
      else:
        prob, cam = model.classify(image)
        shown = pixels.cam_overlay(pixels.display_gray(image)[:cam.shape[0]], cam)
        workdir.atomic_write_bytes(target + "_cam.png", pixels.png_bytes(shown))
        rows.append([file, stem, H, W, f"{model.stress_times[int(prob.argmax())]:g}"]
                    + [f"{p:.6f}" for p in prob] + [model.step])
      _write_csv(os.path.join(out_dir, SUMMARY_FILE), header, rows)
  finally:
    progress.close()
  for line in skipped:
    print(f"skipped: {line}", file=sys.stderr)
  skipped_path = os.path.join(out_dir, SKIPPED_FILE)
  if skipped:
    workdir.atomic_write_text(skipped_path, "".join(line + "\n" for line in skipped))
  elif os.path.exists(skipped_path):
    os.remove(skipped_path)  # a stale list from an earlier run would name files that are fine now
  if not rows:
    raise UserError(f"none of the {len(found)} image file(s) could be used (see {skipped_path})")
  flagged = sum(1 for r in records if r["flags"])
  if flagged:
    log(f"{flagged} image(s) look unlike the training images: see the flags column of {SUMMARY_FILE}", quiet)
  return {"kind": kind, "rows": [dict(zip(header, r)) for r in rows], "samples": sample_table, "skipped": skipped}
