"""What the loader sees in a folder of images, before any training: one row per file, and what a run would refuse.

`inspect_folder(root)` reads every image file under `root` (any depth; hidden entries skipped) with the loader's
own reader and metadata parser, decoding each file's pixels once (the pixel rule for info bars needs them), and
returns the rows and a short summary. `launch/inspect.py` prints them, and writes the rows as CSV.
"""
import os

import numpy as np

from copper_jax.data import image_reader, sem_metadata
from copper_jax.store import tables

COLUMNS = ("path", "readable", "height", "width", "dtype", "pages", "vendor", "instrument", "pixel_size_nm",
           "pixel_size_source", "voltage_kv", "magnification", "detector", "info_bar_rows", "info_bar_source",
           "problems")


def image_files(root: str) -> list[str]:
  """Sorted paths (relative to `root`, posix) of the image files under it; hidden entries and links to folders are
  not entered."""
  found = []
  for folder, dirs, files in os.walk(root, followlinks=False):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in files:
      if not name.startswith(".") and os.path.splitext(name)[1].lower() in image_reader.IMAGE_EXTENSIONS:
        found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
  return sorted(found)


def inspect_file(path: str, page: int = 0, max_pixels: int = image_reader.MAX_PIXELS) -> dict:
  """One row (COLUMNS; None where unknown) for the image file at `path`, as the loader reads page `page`."""
  row = dict.fromkeys(COLUMNS)
  row.update(path=path, readable=False)
  problems = []
  try:
    info = image_reader.read_info(path, page, max_pixels)
    pixels = image_reader.read_gray(path, page, max_pixels)
  except image_reader.Unreadable as e:
    row["problems"] = str(e)
    return row
  row.update(readable=True, height=pixels.shape[0], width=pixels.shape[1], dtype=pixels.dtype.name,
             pages=info.pages)
  if info.pages > 1:
    problems.append(f"{info.pages} pages: page {page} is read (data.page chooses another)")
  if info.channels > 1:
    problems.append(f"{info.channels} channels: read as gray (luminance)")
  meta = sem_metadata.read_sem_metadata(path, *pixels.shape)
  rows, source = sem_metadata.info_bar(meta, pixels)
  row.update(vendor=meta.vendor, instrument=meta.instrument, pixel_size_nm=meta.pixel_size_nm,
             pixel_size_source=meta.pixel_size_source, voltage_kv=meta.voltage_kv, magnification=meta.magnification,
             detector=meta.detector, info_bar_rows=rows, info_bar_source=source)
  problems.extend(meta.problems)
  row["problems"] = "; ".join(problems) or None
  return row


def _size_groups(sizes: list[float]) -> list[list[float]]:
  """Pixel sizes grouped so that each group holds one size (within sem_metadata.SAME_PIXEL_SIZE_RTOL)."""
  groups = []
  for size in sorted(sizes):
    if groups and sem_metadata.same_pixel_size(groups[-1][0], size):
      groups[-1].append(size)
    else:
      groups.append([size])
  return groups


def _is_stress_time(name: str) -> bool:
  try:
    return np.isfinite(float(name))
  except ValueError:
    return False


def summary_lines(root: str, rows: list[dict]) -> list[str]:
  """A few lines: how many files, which pixel sizes and info bars, and what a sweep on `root` would refuse."""
  readable = [r for r in rows if r["readable"]]
  lines = [f"{len(rows)} image file(s) under {image_reader.show(root)}, {len(readable)} readable"]
  sizes = [r["pixel_size_nm"] for r in readable if r["pixel_size_nm"]]
  groups = _size_groups(sizes)
  if groups:
    shown = ", ".join(f"{np.median(g):.4g} nm ({len(g)} file(s))" for g in groups)
    lines.append(f"pixel sizes: {shown}; {len(readable) - len(sizes)} file(s) without one")
  else:
    lines.append("pixel sizes: no file records one")
  bars = sorted({(r["info_bar_rows"], r["info_bar_source"]) for r in readable if r["info_bar_rows"]})
  if bars:
    lines.append("info bars: " + ", ".join(f"{b} rows ({s})" for b, s in bars) +
                 "; data.crop_bottom=auto crops what each file records, data.crop_bottom=N crops N rows of all")
  multipage = [r for r in readable if (r["pages"] or 1) > 1]
  if multipage:
    lines.append(f"{len(multipage)} multi-page file(s): page 0 is read unless data.page says otherwise")
  refusals = []
  if len(readable) < len(rows):
    refusals.append(f"{len(rows) - len(readable)} unreadable file(s) (data.skip_unreadable=True skips them)")
  if len(groups) > 1:
    refusals.append("mixed pixel sizes (set data.pixel_size_nm=X to resample all to X nm, or "
                    "data.mixed_pixel_sizes=allow)")
  shapes = {(r["height"], r["width"]) for r in readable}
  if len(shapes) > 1:
    refusals.append(f"{len(shapes)} image sizes (H x W) (data.pixel_size_nm resamples and cuts them to one)")
  dtypes = {r["dtype"] for r in readable}
  if len(dtypes) > 1:
    refusals.append(f"pixel types {', '.join(sorted(dtypes))} (convert to one)")
  tops = {r["path"].split("/")[0] for r in rows if "/" in r["path"]}
  labels = [t for t in tops if _is_stress_time(t)]
  if len(labels) < 2 or len(labels) < len(tops) or any("/" not in r["path"] for r in rows):
    refusals.append("the layout: a dataset is one sub-folder per stress time, named by the time (0/, 2.5/, 10/), "
                    f"at least two, with the images inside (found {len(labels)} stress-time folder(s))")
  lines.append("a sweep on this folder would refuse: " + "; ".join(refusals) if refusals else
               "a sweep on this folder would load it")
  return lines


def inspect_folder(root: str, page: int = 0, max_pixels: int = image_reader.MAX_PIXELS):
  """(rows, summary lines) for every image file under `root`; row paths are relative to `root`."""
  rows = []
  for rel in image_files(root):
    row = inspect_file(os.path.join(root, rel), page, max_pixels)
    row["path"] = rel
    rows.append(row)
  return rows, summary_lines(root, rows)


def _cell(value):
  return f"{value:.6g}" if isinstance(value, float) else value


def rows_csv(rows: list[dict]) -> str:
  """The rows as CSV text with a header of COLUMNS (empty cells where unknown), through the project's one CSV
  writer: a file name a spreadsheet would evaluate is shown, not run."""
  return tables.csv_text(list(COLUMNS), [[_cell(row[c]) for c in COLUMNS] for row in rows])
