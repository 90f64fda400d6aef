"""Masks (sweep workdir) or stress-time probabilities (classifier workdir) for new SEM images, at full resolution.

`predict(work_dir, images, out_dir)` is what launch/predict.py calls. The workdir's kind comes from its ownership
mark (`store.workdir`), and each kind has one predictor with one interface (`prediction.sweep`,
`prediction.classifier`); the model comes back through the same strict restore as evaluation, and each image is
read and standardised exactly as the training images were (`prediction.reader`). What it needs of the training
data comes from W/data_summary.json (`prepare.DataSummary`), so the training images are not loaded.

Outputs under `out_dir`, mirroring the input's sub-folders and file stems (`prediction.names`):
  sweep:      <stem>_mask.tif (8-bit, 255 = smoothed), <stem>_probability.tif (float32 in [0, 1], the image's
              H x W, mean over seeds), <stem>_overlay.png; samples.csv one row per sample (sub-folder) with an
              interval and the equivalent stress time; about.txt what the columns mean and on what scale
  classifier: <stem>_cam.png (class activation map of the predicted stress time)
  summary.csv one row per image; skipped.txt the files that could not be used, and why.
"""
import sys

from copper_jax.data import folder
from copper_jax.errors import UserError
from copper_jax.prediction import names, writers
from copper_jax.prediction.classifier import ClassifierPredictor
from copper_jax.prediction.sweep import DEFAULT_TILE, SweepPredictor
from copper_jax.store import workdir
from copper_jax.store.logs import Progress, log

SUMMARY_FILE = writers.SUMMARY_FILE


def open_predictor(kind: str, work_dir: str, member: str | None = None, seed: int | None = None,
                   tile: int = DEFAULT_TILE):
  """The predictor of a workdir of `kind` (from its ownership mark); UserError for an option of the other kind."""
  if kind == workdir.CLASSIFIER:
    given = [flag for flag, value in (("--member", member), ("--seed", seed), ("--tile", tile or None))
             if value is not None]
    if given:
      raise UserError(f"{work_dir} is a classifier workdir: {', '.join(given)} only apply to a sweep")
    return ClassifierPredictor(work_dir)
  return SweepPredictor(work_dir, member, seed, tile)


def predict(work_dir: str, images, out_dir: str, member: str | None = None, seed: int | None = None,
            tile: int = DEFAULT_TILE, quiet: bool = False) -> dict:
  """Predicts every image in `images` (folders and files) with the model of `work_dir` into `out_dir`.

  seed: sweep only: the one trained seed to use; None uses every seed that did not diverge, and reports their
    spread.
  Returns {"rows": summary rows as dicts, "samples": per-sample rows (sweep), "skipped": ["file: reason"],
  "kind": "sweep" | "classifier"}. Unreadable images, and images too small for the net, are skipped (listed on
  stderr and in skipped.txt); the tables are rewritten after every image, so an interrupted run keeps the rows of
  the images it finished. `out_dir` must be new, empty or an earlier prediction's folder: nothing else is written
  into.
  """
  kind = workdir.require_kind(work_dir, "--workdir", (workdir.SWEEP, workdir.CLASSIFIER))
  out_dir = names.check_out_folder(out_dir, images)
  found = names.find_images(images, out_dir)
  if not found:
    raise UserError(f"no image files ({'/'.join(folder.IMAGE_EXTENSIONS)}) in {', '.join(map(str, images))}: "
                    f"point --images at a folder holding SEM images")
  found = names.output_stems(found, out_dir, writers.RUN_FILES)  # before any work: never a crash on a name
  model = open_predictor(kind, work_dir, member, seed, tile)
  workdir.claim(out_dir, workdir.PREDICTIONS, "--out")
  log(model.describe(), quiet)
  writers.write_about(out_dir, model.about_text())
  rows, sample_table, skipped = [], [], []
  progress = Progress(len(found), "predict", quiet=quiet)
  try:
    for file, stem in found:
      progress.update(1)
      try:
        image = model.reader.read(file)
        model.check_size(file, image)
      except UserError as e:
        skipped.append(str(e))
        continue
      rows.append(model.predict_file(file, stem, image, out_dir))
      sample_table = model.write_tables(out_dir)
      writers.write_summary(out_dir, model.header, rows)
  finally:
    progress.close()
  for line in skipped:
    print(f"skipped: {line}", file=sys.stderr)
  skipped_path = writers.write_skipped(out_dir, skipped)
  if not rows:
    raise UserError(f"none of the {len(found)} image file(s) could be used (see {skipped_path})")
  if model.flagged():
    log(f"{model.flagged()} image(s) look unlike the training images: see the flags column of {SUMMARY_FILE}",
        quiet)
  return {"kind": kind, "rows": [dict(zip(model.header, r)) for r in rows], "samples": sample_table,
          "skipped": skipped}
