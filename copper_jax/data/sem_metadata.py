"""What an SEM image file says about how it was taken: pixel size, magnification, detector, voltage, info bar.

Read from the vendors' TIFF tags through tifffile, which parses FEI/Thermo Fisher (tags 34680/34682, an INI text)
and Zeiss SmartSEM (tag 34118) metadata. tifffile has no parser for TESCAN, whose tag 50431 holds the same kind of
INI text, so that text is read here; JEOL writes no tags but a sidecar text file of the same stem (`$CM_MAG 5000`
lines), also read here. Fiji/ImageJ calibration (the ImageJ description's unit with the XResolution tag) is read
as a last resort. Any other file, or a tag that cannot be parsed, gives an `SEMMetadata` with every field None:
metadata is optional, the pixels are what the model needs.

`detect_info_bar_rows` finds an info bar from the pixels when the metadata does not give its height.
"""
import dataclasses
import math
import os
import re

import numpy as np

# Pixel sizes closer than this (relative) count as the same: vendors round the value they store.
SAME_PIXEL_SIZE_RTOL = 0.01
# A bottom row is part of an info bar when at least this share of its pixels has the row's most common value:
# the bar is a flat background with text, while an SEM surface rarely repeats one value over a third of a row.
_FLAT_ROW_SHARE = 0.3
# Only the bottom quarter of an image is searched for a bar, so a dark or saturated surface is not taken for one.
_MAX_BAR_SHARE = 0.25
_TESCAN_TAG = 50431
_LENGTH_TO_NM = {"m": 1e9, "mm": 1e6, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
                 "nm": 1.0, "pm": 1e-3}


@dataclasses.dataclass(frozen=True)
class SEMMetadata:
  """How one image was taken, as far as its file says; None where it does not say."""
  vendor: str | None = None          # "FEI/Thermo", "Zeiss", "TESCAN", "JEOL", "ImageJ"
  pixel_size_nm: float | None = None  # size of one pixel on the sample, in nanometres
  magnification: str | None = None   # as the instrument wrote it (e.g. "5.00 K X", "5000")
  detector: str | None = None        # e.g. "ETD", "InLens", "SE"
  voltage_kv: float | None = None    # accelerating voltage, kV
  info_bar_rows: int | None = None   # rows below the scanned area (the info bar), where the vendor records it

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def read_sem_metadata(path: str, height: int | None = None) -> SEMMetadata:
  """The metadata of the image file at `path` (see module docstring); `height` is the image's height in pixels,
  used to turn a vendor's scanned-area height into info-bar rows."""
  found = SEMMetadata()
  try:
    with open(path, "rb") as f:
      is_tiff = f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
  except OSError:
    return found
  if is_tiff:
    try:
      found = _from_tiff(path, height)
    except Exception:  # tifffile raises many types on odd files; the pixels were already read by the loader
      found = SEMMetadata()
  if found.vendor is None:
    found = _from_jeol_sidecar(path) or found
  return found


def _number(value) -> float | None:
  try:
    number = float(str(value).strip().split()[0])
  except (ValueError, IndexError):
    return None
  return number if math.isfinite(number) and number > 0 else None


def _length_nm(value, unit: str) -> float | None:
  number = _number(value)
  scale = _LENGTH_TO_NM.get(str(unit).strip().lower().replace("\\u00b5", "µ"))
  return number * scale if number is not None and scale is not None else None


def _text(value) -> str | None:
  text = str(value).strip() if value is not None else ""
  return text or None


def _from_tiff(path: str, height: int | None) -> SEMMetadata:
  import tifffile  # only when a TIFF is read
  with tifffile.TiffFile(path) as tif:
    page = tif.pages.first
    if tif.is_fei:
      return _from_fei(tif.fei_metadata or {}, height)
    if tif.is_sem:
      return _from_zeiss(tif.sem_metadata or {})
    if _TESCAN_TAG in page.tags:
      value = page.tags[_TESCAN_TAG].value
      text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
      return _from_tescan(_ini_sections(text))
    if tif.is_imagej:
      return _from_imagej(tif.imagej_metadata or {}, page)
  return SEMMetadata()


def _ini_sections(text: str) -> dict:
  """{section: {key: value text}} of INI-like text; keys before any section go under ""."""
  sections, current = {"": {}}, ""
  for line in text.replace("\x00", "").splitlines():
    line = line.strip()
    if line.startswith("[") and line.endswith("]"):
      current = line[1:-1]
      sections.setdefault(current, {})
    elif "=" in line:
      key, value = line.split("=", 1)
      sections[current][key.strip()] = value.strip()
  return sections


def _from_fei(meta: dict, height: int | None) -> SEMMetadata:
  scan, beam, image = meta.get("Scan", {}), meta.get("EBeam", {}), meta.get("Image", {})
  pixel_width_m = _number(scan.get("PixelWidth"))
  voltage_v = _number(beam.get("HV"))
  scanned_rows = _number(image.get("ResolutionY"))
  bar = None
  if height is not None and scanned_rows is not None and 0 <= height - scanned_rows < height:
    bar = int(height - scanned_rows)  # FEI appends its data bar below the ResolutionY scanned rows
  return SEMMetadata(vendor="FEI/Thermo", pixel_size_nm=pixel_width_m * 1e9 if pixel_width_m else None,
                     magnification=_text(image.get("Magnification") or meta.get("System", {}).get("Magnification")),
                     detector=_text(meta.get("Detectors", {}).get("Name")),
                     voltage_kv=voltage_v / 1e3 if voltage_v else None, info_bar_rows=bar)


def _zeiss_value(meta: dict, key: str):
  """(value, unit) of a Zeiss SmartSEM entry, which tifffile parses to (name, value[, unit])."""
  entry = meta.get(key)
  if not isinstance(entry, tuple) or len(entry) < 2:
    return None, ""
  return entry[1], entry[2] if len(entry) > 2 else ""


def _from_zeiss(meta: dict) -> SEMMetadata:
  size, size_unit = _zeiss_value(meta, "ap_image_pixel_size")
  if isinstance(size, str) and len(size.split()) == 2:  # "2.5 nm" left unsplit
    size, size_unit = size.split()
  kv, kv_unit = _zeiss_value(meta, "ap_actualkv")
  voltage = _number(kv)
  if voltage is not None and str(kv_unit).lower() == "v":
    voltage /= 1e3
  mag, _ = _zeiss_value(meta, "ap_mag")
  detector, _ = _zeiss_value(meta, "dp_detector_channel")
  return SEMMetadata(vendor="Zeiss", pixel_size_nm=_length_nm(size, size_unit), magnification=_text(mag),
                     detector=_text(detector), voltage_kv=voltage)


def _from_tescan(sections: dict) -> SEMMetadata:
  main = sections.get("MAIN", {})
  pixel_m = _number(main.get("PixelSizeX"))
  voltage_v = _number(main.get("HV"))
  return SEMMetadata(vendor="TESCAN", pixel_size_nm=pixel_m * 1e9 if pixel_m else None,
                     magnification=_text(main.get("Magnification")), detector=_text(main.get("Detector")),
                     voltage_kv=voltage_v / 1e3 if voltage_v else None)


def _from_imagej(meta: dict, page) -> SEMMetadata:
  unit = meta.get("unit")
  resolution = page.tags.get(282)  # XResolution: pixels per unit, as a fraction
  if not unit or resolution is None:
    return SEMMetadata()
  numerator, denominator = resolution.value
  if not numerator or not denominator:
    return SEMMetadata()
  unit = str(unit).replace("\\u00B5", "µ").replace("\\u00b5", "µ")
  return SEMMetadata(vendor="ImageJ", pixel_size_nm=_length_nm(denominator / numerator, unit))


_JEOL_LINE = re.compile(r"^\$+(\S+)\s+(.*)$")


def _from_jeol_sidecar(path: str) -> SEMMetadata | None:
  """JEOL's `<stem>.txt` beside the image: `$CM_MAG 5000`, `$CM_ACCEL_VOLT 15.00`, `$CM_SIGNAL SEI`, and the scale
  bar `$$SM_MICRON_BAR 120` (pixels) for `$$SM_MICRON_MARKER 1um`."""
  sidecar = os.path.splitext(path)[0] + ".txt"
  try:
    with open(sidecar, encoding="latin-1") as f:
      if os.fstat(f.fileno()).st_size > 1 << 20:
        return None
      entries = {m.group(1): m.group(2).strip() for m in map(_JEOL_LINE.match, f.read().splitlines()) if m}
  except OSError:
    return None
  if "CM_MAG" not in entries and "SM_MICRON_BAR" not in entries:
    return None
  pixel_size = None
  bar_px = _number(entries.get("SM_MICRON_BAR"))
  marker = re.match(r"^([0-9.]+)\s*([a-zµμ]+)$", entries.get("SM_MICRON_MARKER", "").strip(), re.IGNORECASE)
  if bar_px and marker:
    length = _length_nm(marker.group(1), marker.group(2))
    pixel_size = length / bar_px if length else None
  return SEMMetadata(vendor="JEOL", pixel_size_nm=pixel_size, magnification=_text(entries.get("CM_MAG")),
                     detector=_text(entries.get("CM_SIGNAL")), voltage_kv=_number(entries.get("CM_ACCEL_VOLT")))


def detect_info_bar_rows(pixels_HxW: np.ndarray) -> int:
  """Rows at the bottom of an image that look like an instrument's info bar (flat background, some text): the
  longest run of bottom rows in which each row's most common value fills at least 30% of it; 0 when none."""
  height = pixels_HxW.shape[0]
  rows = 0
  for r in range(height - 1, height - 1 - int(height * _MAX_BAR_SHARE), -1):
    _, counts = np.unique(pixels_HxW[r], return_counts=True)
    if counts.max() < _FLAT_ROW_SHARE * pixels_HxW.shape[1]:
      break
    rows += 1
  return rows if rows >= 2 else 0


def same_pixel_size(a: float, b: float) -> bool:
  return abs(a - b) <= SAME_PIXEL_SIZE_RTOL * max(a, b)
