"""The files a prediction leaves: per-image TIFFs and PNGs, the tables (through the project's one CSV writer),
about.txt and skipped.txt."""
import io
import os

import numpy as np

from copper_jax.store import tables, workdir

SUMMARY_FILE = "summary.csv"
SAMPLES_FILE = "samples.csv"
ABOUT_FILE = "about.txt"
SKIPPED_FILE = "skipped.txt"
# Names no image's outputs may take (`names.output_stems`).
RUN_FILES = (SUMMARY_FILE, SAMPLES_FILE, ABOUT_FILE, SKIPPED_FILE, workdir.MARK_FILE, workdir.LOCK_FILE)


def tiff_bytes(pixels_HxW: np.ndarray, pixel_size_nm: float | None) -> bytes:
  """A TIFF Fiji/ImageJ opens with its scale set when the pixel size is known."""
  import tifffile
  buffer = io.BytesIO()
  if pixel_size_nm:
    per_um = 1e3 / pixel_size_nm
    tifffile.imwrite(buffer, pixels_HxW, imagej=True, resolution=(per_um, per_um), metadata={"unit": "um"})
  else:
    tifffile.imwrite(buffer, pixels_HxW)
  return buffer.getvalue()


def number(value, digits: int = 6) -> str:
  return "" if value is None else f"{value:.{digits}g}"


def write_file(path: str, data: bytes) -> None:
  """One image's output file, in its (mirrored) sub-folder."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  workdir.atomic_write_bytes(path, data)


def write_summary(out_dir: str, header: list, rows: list) -> None:
  tables.write_csv(os.path.join(out_dir, SUMMARY_FILE), header, rows)


def write_about(out_dir: str, text: str | None) -> None:
  if text is not None:
    workdir.atomic_write_text(os.path.join(out_dir, ABOUT_FILE), text)


def write_skipped(out_dir: str, skipped: list) -> str:
  """skipped.txt listing `skipped`, or none: a list from an earlier run in this (copper_jax's own) folder would name
  files that are fine now. Returns its path."""
  path = os.path.join(out_dir, SKIPPED_FILE)
  if skipped:
    workdir.atomic_write_text(path, "".join(line + "\n" for line in skipped))
  elif os.path.exists(path):
    os.remove(path)
  return path
