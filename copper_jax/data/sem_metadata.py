"""What an SEM image file says about how it was taken: pixel size (and where it came from), instrument,
magnification, detector, voltage, and the info bar's height.

tifffile decodes the vendors' TIFF tags: FEI/Thermo Fisher (34682, an INI text; `TiffFile.fei_metadata`), Zeiss
SmartSEM (34118; `TiffFile.sem_metadata`) and Fiji/ImageJ (`imagej_metadata` with the XResolution tag). Read here,
because no Apache-compatible maintained reader does it (docs/guide.md, "Instrument files"): TESCAN's tag 50431, a
sequence of binary chunks (a thumbnail, then `MAIN` and `SEM` chunks of key=value lines) or its `.hdr` sidecar,
and the JEOL and Hitachi `<stem>.txt` sidecars. Every pixel size passes a plausibility check (finite, 0.01 nm to 1 mm per pixel); one
outside it is dropped with a line in `problems`. A file without metadata gives an `SEMMetadata` with every field
None: metadata is optional, the pixels are what the model needs.

`detect_info_bar_rows` finds an info bar from the pixels when no metadata gives its height.
"""
import dataclasses
import math
import os
import re
import struct

import numpy as np

from copper_jax.data import image_reader

# Pixel sizes closer than this (relative) count as the same: vendors round the value they store.
SAME_PIXEL_SIZE_RTOL = 0.01
# A plausible pixel, in nm: from atomic-resolution imaging to a low-magnification overview of a centimetre.
PIXEL_SIZE_RANGE_NM = (0.01, 1e6)
# An info bar is at most this share of the image height (instruments use 5-14%): a taller one, from metadata or
# from the pixels, is a misread, not a bar.
MAX_BAR_SHARE = 0.25
# A bottom row is part of an info bar when at least this share of its pixels has the row's most common value:
# the bar is a flat background with text, while an SEM surface rarely repeats one value over a third of a row.
_FLAT_ROW_SHARE = 0.3
# Zeiss draws its data zone a few rows above the bottom edge, over rows of image: up to this many bottom rows that
# are not flat may lie below a bar (they are cropped with it).
_ROWS_BELOW_BAR = 3
# Sidecar text files are read only up to this size (a JEOL or Hitachi sidecar is a few KiB).
SIDECAR_MAX_BYTES = 1 << 20
_TESCAN_TAG = 50431
_TESCAN_CHUNKS = {2: "MAIN", 3: "SEM"}  # chunk kind -> section; kind 1 is the thumbnail
# A Zeiss `ap_pixel_size` (and the struct's first entry) refer to a frame 1024 pixels wide.
_ZEISS_REFERENCE_WIDTH = 1024
_LENGTH_TO_NM = {"m": 1e9, "cm": 1e7, "mm": 1e6, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3,
                 "micrometer": 1e3, "micrometre": 1e3, "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "pm": 1e-3,
                 "å": 0.1, "angstrom": 0.1, "inch": 2.54e7, "in": 2.54e7, "\"": 2.54e7}
_NUMBER_AND_UNIT = re.compile(r"^\s*([+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")


@dataclasses.dataclass(frozen=True)
class SEMMetadata:
  """How one image was taken, as far as its file says; None where it does not say."""
  vendor: str | None = None             # "FEI/Thermo", "Zeiss", "TESCAN", "JEOL", "Hitachi", "ImageJ"
  instrument: str | None = None         # model or serial number as the file names it
  pixel_size_nm: float | None = None    # size of one pixel on the sample, in nanometres
  pixel_size_source: str | None = None  # the tag and key (or calibration) it was read from
  magnification: str | None = None      # as the instrument wrote it (e.g. "5.00 K X", "5000")
  detector: str | None = None           # e.g. "ETD", "InLens", "SE"
  voltage_kv: float | None = None       # accelerating voltage, kV
  info_bar_rows: int | None = None      # rows below the scanned area (the info bar), where the vendor records it
  info_bar_source: str | None = None
  problems: tuple = ()                  # values found but not used, and why (one line each)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["problems"] = list(self.problems)
    return out


def read_sem_metadata(path: str, height: int | None = None, width: int | None = None) -> SEMMetadata:
  """The metadata of the image file at `path` (see module docstring); `height` and `width` are the image's size in
  pixels (read from the file when not given), used to turn recorded sizes into info-bar rows and pixel sizes."""
  found = SEMMetadata()
  try:
    with image_reader.open_tiff(path) as tif:
      if tif is not None:
        page = tif.pages.first
        height = height or int(page.shape[0])
        width = width or int(page.shape[1])
        found = _from_tiff(tif, page, height, width)
  except image_reader.Unreadable:
    return found
  except Exception as e:  # tifffile raises many types on odd tags; the pixels are read (and checked) elsewhere
    found = SEMMetadata(problems=(f"metadata unreadable ({image_reader.first_line(e)})",))
  if found.vendor is None:
    found = _from_sidecar(path, height) or found
  return found


def _from_tiff(tif, page, height: int, width: int) -> SEMMetadata:
  if tif.is_fei:
    return _from_fei(tif.fei_metadata or {}, height, width)
  if tif.is_sem:
    return _from_zeiss(tif.sem_metadata or {}, width)
  if _TESCAN_TAG in page.tags:
    return _from_tescan(_tescan_sections(page.tags[_TESCAN_TAG].value), height)
  if tif.is_imagej:
    return _from_imagej(tif.imagej_metadata or {}, page)
  return SEMMetadata()


def parse_number(value) -> float | None:
  """A number from a metadata value: ints, floats, and text with a decimal point or comma and an exponent
  ("2.5012e-006", "1,25"); None when there is none. Infinity and NaN are returned as such, for the caller to
  refuse with the value."""
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  match = _NUMBER_AND_UNIT.match(str(value))
  return float(match.group(1).replace(",", ".")) if match else None


def parse_length_nm(value, unit: str = "") -> float | None:
  """`value` (a number, or text holding a number and perhaps its unit) in `unit`, in nanometres; None when the
  number or the unit is not understood. Units: m, cm, mm, µm/um/micron, nm, pm, Å, inch."""
  text_unit = ""
  if isinstance(value, str):
    match = _NUMBER_AND_UNIT.match(value)
    if not match:
      return None
    text_unit = match.group(2)
  number = parse_number(value)
  name = (unit or text_unit or "").strip().lower().replace("\\u00b5", "µ")
  scale = _LENGTH_TO_NM.get(name)
  return number * scale if number is not None and scale is not None else None


def _plausible_size(nm: float | None, source: str, problems: list, raw=None) -> float | None:
  """`nm` when it is a finite pixel size within PIXEL_SIZE_RANGE_NM; else None, with a line in `problems` naming
  the value as the file holds it (`raw`)."""
  if nm is None:
    return None
  lo, hi = PIXEL_SIZE_RANGE_NM
  if math.isfinite(nm) and lo <= nm <= hi:
    return nm
  held = f" ({raw!r} in the file)" if raw is not None else ""
  problems.append(f"{source} gives a pixel of {nm:.4g} nm{held}, outside {lo:g} nm to 1 mm: not plausible, ignored")
  return None


def _recorded_bar(bar: float | None, height: int | None, source: str, problems: list) -> int | None:
  """Info-bar rows recorded by the vendor when plausible (whole, >= 0, at most MAX_BAR_SHARE of the height)."""
  if bar is None or height is None:  # no image height to judge a bar against: none is taken
    return None
  if not math.isfinite(bar) or bar != int(bar) or not 0 <= bar <= MAX_BAR_SHARE * height:
    problems.append(f"{source} gives an info bar of {bar:g} rows on a {height}-row image: not plausible, ignored")
    return None
  return int(bar)


def _text(value) -> str | None:
  text = str(value).strip() if value is not None else ""
  return text or None


def _kv(volts: float | None) -> float | None:
  return volts / 1e3 if volts is not None and math.isfinite(volts) and volts > 0 else None


def _from_fei(meta: dict, height: int, width: int) -> SEMMetadata:
  """FEI/Thermo: `[Scan] PixelWidth` (m), else the scan named by `[Beam] Scan` (EScan, IScan), else the beam's
  horizontal field width over the recorded width (`[IRBeam] HFW / [Image] ResolutionX` on a nav-camera); the info
  bar is the rows below `[Image] ResolutionY`."""
  problems = []
  beam, image = meta.get("Beam", {}), meta.get("Image", {})
  # [Beam] names the beam and scan sections in use (EBeam/EScan, IBeam/IScan, IRBeam on a nav-camera); files
  # without it are e-beam images.
  beam_name = _text(beam.get("Beam")) or ("EBeam" if "EBeam" in meta else None)
  scan_name = _text(beam.get("Scan")) or ("EScan" if "EScan" in meta else None)
  pixel_nm, source = None, None
  for section in dict.fromkeys(s for s in ("Scan", scan_name) if s):
    metres = parse_number(meta.get(section, {}).get("PixelWidth"))
    if metres is not None:
      source = f"FEI tag 34682 [{section}] PixelWidth"
      pixel_nm = _plausible_size(metres * 1e9, source, problems, meta[section]["PixelWidth"])
      break
  hfw = parse_number(meta.get(beam_name, {}).get("HFW")) if beam_name else None
  if pixel_nm is None and source is None and hfw is not None:
    across = parse_number(image.get("ResolutionX")) or width
    source = f"FEI tag 34682 [{beam_name}] HFW / [Image] ResolutionX"
    pixel_nm = _plausible_size(hfw * 1e9 / across, source, problems)
  volts = parse_number(meta.get(beam_name, {}).get("HV")) if beam_name else None
  volts = volts if volts is not None else parse_number(beam.get("HV"))
  canvas = parse_number(image.get("MagCanvasRealWidth"))
  # FEI's own magnification: the display canvas width over the horizontal field width.
  magnification = f"{canvas / hfw:.4g} x" if canvas and hfw and math.isfinite(canvas / hfw) else None
  scanned = parse_number(image.get("ResolutionY"))
  bar = _recorded_bar(height - scanned if scanned is not None else None, height,
                      "FEI tag 34682 [Image] ResolutionY", problems)
  return SEMMetadata(vendor="FEI/Thermo", instrument=_text(meta.get("System", {}).get("SystemType")),
                     pixel_size_nm=pixel_nm, pixel_size_source=source if pixel_nm else None,
                     magnification=magnification, detector=_text(meta.get("Detectors", {}).get("Name")),
                     voltage_kv=_kv(volts), info_bar_rows=bar,
                     info_bar_source="FEI tag 34682 [Image] ResolutionY" if bar is not None else None,
                     problems=tuple(problems))


def _zeiss_entry(meta: dict, key: str):
  """(value, unit) of a Zeiss SmartSEM entry, which tifffile parses to (name, value[, unit])."""
  entry = meta.get(key)
  if not isinstance(entry, tuple) or len(entry) < 2:
    return None, ""
  return entry[1], entry[2] if len(entry) > 2 else ""


def _from_zeiss(meta: dict, width: int) -> SEMMetadata:
  """Zeiss: `ap_image_pixel_size` (this image's pixels) where present, else `ap_pixel_size` or the struct's first
  entry (metres), which refer to a 1024-pixel-wide frame and are scaled to the image's width. Zeiss records no
  data-zone height: the pixel rule finds it."""
  problems = []
  pixel_nm, source = None, None
  # The struct's first entry (metres, for a 1024-pixel frame) is what SmartSEM computed; the named entries are that
  # value as its panel shows it, rounded (2.615 um for 2.614514 um).
  struct_ = meta.get("")
  metres = parse_number(struct_[3]) if isinstance(struct_, tuple) and len(struct_) > 3 else None
  from_struct = metres * 1e9 * _ZEISS_REFERENCE_WIDTH / width if metres is not None and metres > 0 else None
  size, unit = _zeiss_entry(meta, "ap_image_pixel_size")
  if size is not None:
    source = "Zeiss tag 34118 ap_image_pixel_size"
    pixel_nm = parse_length_nm(size, unit)
  if pixel_nm is None:
    size, unit = _zeiss_entry(meta, "ap_pixel_size")
    reference = parse_length_nm(size, unit) if size is not None else None
    source = "Zeiss tag 34118 ap_pixel_size x 1024 / width"
    pixel_nm = reference * _ZEISS_REFERENCE_WIDTH / width if reference is not None else None
  if pixel_nm is None and from_struct is not None:
    pixel_nm, source = from_struct, "Zeiss tag 34118 first struct entry x 1024 / width"
  elif pixel_nm is not None and from_struct is not None and abs(from_struct - pixel_nm) <= 5e-3 * pixel_nm:
    # The same size to the panel's rounding: keep the unrounded one.
    named = source.split(" x ")[0].split()[-1]
    pixel_nm, source = from_struct, f"Zeiss tag 34118 first struct entry x 1024 / width (agrees with {named})"
  if pixel_nm is None and size is not None:
    problems.append(f"Zeiss pixel size {size!r} {unit} not understood: ignored")
  pixel_nm = _plausible_size(pixel_nm, source, problems, size)
  kv, kv_unit = _zeiss_entry(meta, "ap_actualkv")
  voltage = parse_number(kv)
  if voltage is not None and str(kv_unit).strip().lower() == "v":
    voltage /= 1e3
  mag, mag_unit = _zeiss_entry(meta, "ap_mag")
  detector, _ = _zeiss_entry(meta, "dp_detector_channel")
  instrument, _ = _zeiss_entry(meta, "sv_serial_number")
  return SEMMetadata(vendor="Zeiss", instrument=_text(instrument), pixel_size_nm=pixel_nm,
                     pixel_size_source=source if pixel_nm else None,
                     magnification=_text(f"{mag} {mag_unit}" if mag is not None and mag_unit else mag),
                     detector=_text(detector),
                     voltage_kv=voltage if voltage is not None and math.isfinite(voltage) and voltage > 0 else None,
                     problems=tuple(problems))


def _key_values(text: str) -> dict:
  """{key: value} of `key=value` lines."""
  out = {}
  for line in text.replace("\x00", "\n").splitlines():
    key, sep, value = line.partition("=")
    if sep and key.strip() and key.strip().isprintable():
      out[key.strip()] = value.strip()
  return out


def _tescan_sections(value) -> dict:
  """{"MAIN": {...}, "SEM": {...}} of TESCAN's tag 50431: chunks of (uint32 length, uint16 kind, data); kind 2 is
  MAIN and 3 SEM, both key=value lines. Text that is not chunked (or `[MAIN]` INI text) is read as one section."""
  data = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
  sections, offset = {}, 0
  while offset + 6 <= len(data):
    length, kind = struct.unpack_from("<IH", data, offset)
    if offset + 6 + length > len(data):
      sections = {}
      break
    if kind in _TESCAN_CHUNKS:
      sections[_TESCAN_CHUNKS[kind]] = _key_values(data[offset + 6:offset + 6 + length].decode("latin-1"))
    offset += 6 + length
  if not sections:
    text = data.decode("latin-1")
    current = "MAIN"
    for line in text.replace("\x00", "\n").splitlines():
      line = line.strip()
      if line.startswith("[") and line.endswith("]"):
        current = line[1:-1]
      else:
        sections.setdefault(current, {}).update(_key_values(line))
  return sections


def _from_tescan(sections: dict, height: int | None) -> SEMMetadata:
  """TESCAN: `PixelSizeX` (m) and `ImageStripSize` (the info bar's rows) in MAIN, `HV` (V) and `Detector` in SEM."""
  main, sem = sections.get("MAIN", {}), sections.get("SEM", {})
  either = {**sem, **main}
  problems = []
  metres = parse_number(either.get("PixelSizeX"))
  source = "TESCAN tag 50431 MAIN PixelSizeX"
  pixel_nm = _plausible_size(metres * 1e9 if metres is not None else None, source, problems,
                             either.get("PixelSizeX"))
  bar = _recorded_bar(parse_number(either.get("ImageStripSize")), height, "TESCAN tag 50431 MAIN ImageStripSize",
                      problems)
  return SEMMetadata(vendor="TESCAN", instrument=_text(either.get("Device")), pixel_size_nm=pixel_nm,
                     pixel_size_source=source if pixel_nm else None, magnification=_text(either.get("Magnification")),
                     detector=_text(either.get("Detector")), voltage_kv=_kv(parse_number(either.get("HV"))),
                     info_bar_rows=bar, info_bar_source="TESCAN tag 50431 MAIN ImageStripSize" if bar is not None
                     else None, problems=tuple(problems))


def _from_imagej(meta: dict, page) -> SEMMetadata:
  """Fiji/ImageJ: the description's `unit` with the XResolution tag (pixels per unit)."""
  unit = meta.get("unit")
  resolution = page.tags.get(282)
  if not unit or resolution is None:
    return SEMMetadata()
  numerator, denominator = resolution.value
  problems = []
  if not numerator or not denominator:
    return SEMMetadata()
  unit = str(unit).replace("\\u00B5", "µ").replace("\\u00b5", "µ")
  nm = parse_length_nm(denominator / numerator, unit)
  source = f"ImageJ calibration (XResolution, unit {unit})"
  if nm is None:
    problems.append(f"ImageJ unit {unit!r} is not a length: no pixel size")
  nm = _plausible_size(nm, source, problems)
  return SEMMetadata(vendor="ImageJ", instrument=_text(f"ImageJ {meta['ImageJ']}" if meta.get("ImageJ") else None),
                     pixel_size_nm=nm, pixel_size_source=source if nm else None, problems=tuple(problems))


_JEOL_LINE = re.compile(r"^\$+(\S+)\s+(.*)$")


def _read_sidecar(sidecar: str) -> str | None:
  """The text of the file `sidecar` when it is a regular file under SIDECAR_MAX_BYTES; else None."""
  if not os.path.lexists(sidecar):
    return None
  try:
    with image_reader.open_regular(sidecar, SIDECAR_MAX_BYTES) as f:
      return f.read(SIDECAR_MAX_BYTES + 1).decode("latin-1")
  except (image_reader.Unreadable, OSError):
    return None


def _from_sidecar(path: str, height: int | None) -> SEMMetadata | None:
  """JEOL or Hitachi `<stem>.txt`, or a TESCAN `<stem>-<ext>.hdr` / `<stem>.hdr` ([MAIN] and [SEM] sections)."""
  stem, ext = os.path.splitext(path)
  text = _read_sidecar(stem + ".txt")
  if text is not None:
    jeol = {m.group(1): m.group(2).strip() for m in map(_JEOL_LINE.match, text.splitlines()) if m}
    if "CM_MAG" in jeol or "SM_MICRON_BAR" in jeol:
      return _from_jeol(jeol)
    hitachi = _key_values(text)
    if "PixelSize" in hitachi and ("InstructName" in hitachi or "[SemImageFile]" in text):
      return _from_hitachi(hitachi)
  for header in (f"{stem}-{ext.lstrip('.')}.hdr", stem + ".hdr"):
    text = _read_sidecar(header)
    if text is not None and "PixelSizeX" in text:
      return _from_tescan(_tescan_sections(text.encode("latin-1")), height)
  return None


def _from_jeol(entries: dict) -> SEMMetadata:
  """JEOL's sidecar: `$CM_MAG 5000`, `$CM_ACCEL_VOLT 15.00`, `$CM_SIGNAL SEI`, and the scale bar
  `$$SM_MICRON_BAR 120` (pixels) for `$$SM_MICRON_MARKER 1um`."""
  problems = []
  bar_px = parse_number(entries.get("SM_MICRON_BAR"))
  marker = parse_length_nm(entries.get("SM_MICRON_MARKER", ""))
  source = "JEOL sidecar $$SM_MICRON_MARKER / $$SM_MICRON_BAR"
  nm = marker / bar_px if marker is not None and bar_px else None
  nm = _plausible_size(nm, source, problems)
  kv = parse_number(entries.get("CM_ACCEL_VOLT"))
  return SEMMetadata(vendor="JEOL", instrument=_text(entries.get("CM_INSTRUMENT")), pixel_size_nm=nm,
                     pixel_size_source=source if nm else None, magnification=_text(entries.get("CM_MAG")),
                     detector=_text(entries.get("CM_SIGNAL")),
                     voltage_kv=kv if kv is not None and math.isfinite(kv) and kv > 0 else None,
                     problems=tuple(problems))


def _from_hitachi(entries: dict) -> SEMMetadata:
  """Hitachi's sidecar ([SemImageFile]): `PixelSize` in nm, `AcceleratingVoltage` in volts."""
  problems = []
  source = "Hitachi sidecar PixelSize"
  nm = _plausible_size(parse_number(entries.get("PixelSize")), source, problems)
  return SEMMetadata(vendor="Hitachi", instrument=_text(entries.get("InstructName")), pixel_size_nm=nm,
                     pixel_size_source=source if nm else None, magnification=_text(entries.get("Magnification")),
                     detector=_text(entries.get("SignalName")),
                     voltage_kv=_kv(parse_number(entries.get("AcceleratingVoltage"))), problems=tuple(problems))


def detect_info_bar_rows(pixels_HxW: np.ndarray) -> int:
  """Rows at the bottom of an image that look like an instrument's info bar (flat background, some text): a run of
  bottom rows in which each row's most common value fills at least 30% of it, above at most a few rows of image
  (cropped with it); 0 when there is none, or when the flat rows run on past a plausible bar (MAX_BAR_SHARE of
  the height), where a dark surround or a saturated surface cannot be told from a bar."""
  height, width = pixels_HxW.shape
  limit = int(height * MAX_BAR_SHARE)

  def flat(r):
    _, counts = np.unique(pixels_HxW[r], return_counts=True)
    return counts.max() >= _FLAT_ROW_SHARE * width

  below = 0
  while below < _ROWS_BELOW_BAR and below < limit and not flat(height - 1 - below):
    below += 1
  rows = below
  while rows < limit and flat(height - 1 - rows):
    rows += 1
  if rows >= limit or rows - below < 2:
    return 0
  return rows


def info_bar(meta: SEMMetadata, pixels_HxW: np.ndarray) -> tuple[int, str]:
  """(rows, where they came from): the vendor's record where it has one, else the pixel rule."""
  if meta.info_bar_rows is not None:
    return meta.info_bar_rows, meta.info_bar_source
  return detect_info_bar_rows(pixels_HxW), "pixels"


def same_pixel_size(a: float, b: float) -> bool:
  return abs(a - b) <= SAME_PIXEL_SIZE_RTOL * max(a, b)
