"""Load a folder of SEM images, one sub-folder per stress time, into memory.

Layouts accepted by `load_folder(root)`:
  real:      root/<t>/<any name>.<tif|tiff|png|jpg|jpeg|bmp>, or root/<t>/<specimen>/<any name>.<ext> where each
             sub-folder of a stress-time folder holds the fields of view of one specimen (deeper folders belong to
             their top specimen folder; files directly under root/<t> form one specimen named "<t>")
  synthetic: root/images/<t>/<name>.png, root/masks/<t>/<name>.png, root/manifest.json
             (`root` may also be the `images` folder itself; masks and manifest are then its siblings)
`<t>` is the numeric stress time (`0`, `1`, `2.5`, `10`); folders sort numerically and the class index is the rank.

Each image's SEM metadata (pixel size, magnification, detector, voltage) is read where its file carries it
(`sem_metadata`); images of different pixel sizes are refused unless `mixed_pixel_sizes="allow"`, because the
model's receptive field and the surface's texture scale are both counted in pixels. An info bar left in the images
(seen in the metadata or in the pixels) is warned about, since its text may name the sample.
"""
import dataclasses
import json
import math
import os
import re
import stat
import struct
import warnings

import imageio.v3 as iio
import numpy as np

from copper_jax.data import sem_metadata
from copper_jax.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# ITU-R BT.601 luma weights, the same as Pillow's RGB -> L conversion.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Floor on the std used to standardise, in image units, so a constant image maps to zeros instead of NaN.
STD_EPS = 1e-6
STANDARDISE_MODES = ("image", "dataset")
MIXED_PIXEL_SIZE_MODES = ("refuse", "allow")
# Largest image accepted, in pixels (H x W), checked from the file header before anything is decoded, so a corrupt
# or hostile header cannot make the loader allocate gigabytes. 2**27 (e.g. 11585 x 11585) is far above any SEM
# frame and below Pillow's own refusal at about 1.8e8 pixels, which would otherwise answer first.
MAX_PIXELS = 2 ** 27
# Enough of a file to find the dimensions in its header; a JPEG can put large EXIF blocks before its frame header,
# and then the whole file is searched.
_HEADER_BYTES = 1 << 16

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_READ_FIX = "replace or delete the file, or load with skip_unreadable=True to skip it"


@dataclasses.dataclass(eq=False)
class SEMDataset:
  """All images of one dataset in memory, with their labels and per-image statistics.

  `root` is the images folder; `paths` are relative to it in posix form ("2.5/img_003.png"). Pixel values are in
  the files' native units (uint8, uint16 or float32); `mean` and `std` are in those units.
  """
  root: str
  stress_times: np.ndarray  # (T,) float64, ascending
  label_names: list[str]  # folder names, in stress-time order
  images: list[np.ndarray]  # (H, W) each, native dtype
  paths: list[str]
  labels: np.ndarray  # (N,) int32 class index
  masks: list[np.ndarray] | None  # (H, W) uint8 {0, 1}, only for the synthetic layout
  mean: np.ndarray  # (N,) float64
  std: np.ndarray  # (N,) float64
  manifest: dict | None
  skipped: list[str]  # "path: reason"
  # One per image: "<label folder>/<specimen folder>", or "<label folder>" for files directly under it. Fields of
  # view of one specimen share its etch and SEM session, so splits keep them together and statistics resample them.
  specimens: list[str]
  metadata: list[dict]  # one per image: `sem_metadata.SEMMetadata.to_json()`, None where the file does not say
  intensity_mean: np.ndarray  # (N,) float64 each image's own mean and std in pixel units, whatever `standardise`
  intensity_std: np.ndarray   # is: what new images are compared with to flag ones unlike the training set

  @property
  def num_classes(self) -> int:
    return len(self.stress_times)

  @property
  def tau(self) -> np.ndarray:
    return normalised_times(self.stress_times)

  @property
  def image_shape(self) -> tuple:
    """(H, W) in pixels, after `crop_bottom`."""
    return tuple(self.images[0].shape)

  @property
  def pixel_size_nm(self) -> float | None:
    """The images' pixel size in nanometres (median over the images whose metadata give it), or None."""
    known = [m["pixel_size_nm"] for m in self.metadata if m.get("pixel_size_nm")]
    return float(np.median(known)) if known else None

  def standardised(self, i: int) -> np.ndarray:
    """(H, W) float32 image `i` as (x - mean) / max(std, eps)."""
    return standardise_pixels(self.images[i], self.mean[i], self.std[i])


def normalised_times(stress_times: np.ndarray) -> np.ndarray:
  """(T,) float64 stress times (ascending) normalised to [0, 1]; all zeros when there is a single stress time."""
  t = np.asarray(stress_times, np.float64)
  span = t[-1] - t[0]
  return (t - t[0]) / span if span > 0 else np.zeros_like(t)


def standardise_pixels(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
  """float32 (pixels - mean) / max(std, STD_EPS); only the given pixels are converted, so pass a patch for speed."""
  out = pixels.astype(np.float32)
  out -= np.float32(mean)
  out *= np.float32(1.0 / max(std, STD_EPS))
  return out


def load_folder(root, crop_bottom: int = 0, skip_unreadable: bool = False,
                standardise: str = "image", max_pixels: int = MAX_PIXELS,
                mixed_pixel_sizes: str = "refuse") -> SEMDataset:
  """Loads every image under `root` (see module docstring for layouts).

  crop_bottom: rows (pixels) cut from the bottom of every image and mask, e.g. the SEM info bar.
  skip_unreadable: skip files that cannot be opened or decoded (listed in `dataset.skipped` and warned about)
    instead of raising DataError.
  standardise: "image" (each image's own mean/std) or "dataset" (the pooled mean/std of all images).
  max_pixels: largest H x W accepted, read from each file's header before decoding; a larger image is unreadable.
  mixed_pixel_sizes: "refuse" (DataError when the metadata give different pixel sizes) or "allow" (a warning).
  """
  if isinstance(crop_bottom, bool) or not isinstance(crop_bottom, (int, np.integer)) or crop_bottom < 0:
    raise ConfigError(f"crop_bottom={crop_bottom!r}: must be a whole number of pixels >= 0")
  _check_max_pixels(max_pixels)
  if standardise not in STANDARDISE_MODES:
    raise ConfigError(f"standardise={standardise!r}: must be one of {', '.join(STANDARDISE_MODES)}")
  if mixed_pixel_sizes not in MIXED_PIXEL_SIZE_MODES:
    raise ConfigError(f"mixed_pixel_sizes={mixed_pixel_sizes!r}: must be one of {', '.join(MIXED_PIXEL_SIZE_MODES)}")
  images_dir, masks_dir, manifest_path = _resolve_layout(os.fsdecode(os.fspath(root)))
  label_names, stress_times = _label_folders(images_dir)
  manifest = _read_manifest(manifest_path)
  _check_labels(images_dir, label_names, manifest, manifest_path)
  _check_files_reached_once(images_dir, {name: _image_files(images_dir, name) for name in label_names})
  skipped = []
  images, paths, labels, masks, metadata, bars = [], [], [], [], [], []
  first = None  # (path, raw shape) of the first image, to name both files when sizes differ
  for label, name in enumerate(label_names):
    files = _image_files(images_dir, name)
    if not files:
      raise DataError(f"{_show(os.path.join(images_dir, name))}: label folder has no images "
                      f"({'/'.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    loaded_in_label = 0
    for rel in files:
      path = os.path.join(images_dir, rel)
      try:
        image = _read_gray(path, max_pixels)
        mask = None if masks_dir is None else _read_mask(masks_dir, rel, image.shape, max_pixels)
      except _Unreadable as e:
        if not skip_unreadable:
          raise DataError(f"{e}; {_READ_FIX}") from None
        skipped.append(str(e))
        continue
      if first is None:
        first = (rel, image.shape)
      elif image.shape != first[1]:
        raise DataError(f"{_show(path)} is {_hxw(image.shape)} but {_show(os.path.join(images_dir, first[0]))} is "
                        f"{_hxw(first[1])} (H x W): all images must have the same size; resize or remove one")
      if crop_bottom >= image.shape[0]:
        raise ConfigError(f"crop_bottom={crop_bottom} removes all {image.shape[0]} rows of {_show(path)}: "
                          f"set crop_bottom to the info-bar height, below the image height")
      meta = sem_metadata.read_sem_metadata(path, image.shape[0])
      metadata.append(meta.to_json())
      bars.append(meta.info_bar_rows if meta.info_bar_rows is not None
                  else sem_metadata.detect_info_bar_rows(image))
      images.append(_crop(image, crop_bottom))
      if mask is not None:
        masks.append(_crop(mask, crop_bottom))
      paths.append(rel)
      labels.append(label)
      loaded_in_label += 1
    if loaded_in_label == 0:
      raise DataError(f"{_show(os.path.join(images_dir, name))}: every image in this label folder was unreadable "
                      f"and skipped; replace them or remove the folder")
  if skipped:
    warnings.warn(f"skipped {len(skipped)} unreadable file(s): " + " | ".join(skipped), stacklevel=2)
  _check_pixels(images_dir, images, paths)
  _check_pixel_sizes(images_dir, paths, metadata, mixed_pixel_sizes)
  _check_info_bar(paths, bars, crop_bottom)
  intensity_mean, intensity_std = _statistics(images, "image")
  mean, std = _statistics(images, standardise)
  return SEMDataset(
      root=images_dir, stress_times=stress_times, label_names=label_names, images=images, paths=paths,
      labels=np.asarray(labels, np.int32), masks=masks if masks_dir is not None else None, mean=mean, std=std,
      manifest=manifest, skipped=skipped, specimens=[specimen_of(p) for p in paths],
      metadata=metadata, intensity_mean=intensity_mean, intensity_std=intensity_std)


def specimen_of(rel_path: str) -> str:
  """The specimen of an image path relative to the images folder: "<t>/<specimen>" for "<t>/<specimen>/.../x.tif",
  "<t>" for "<t>/x.tif"."""
  parts = rel_path.split("/")
  return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def _check_pixel_sizes(images_dir: str, paths: list, metadata: list, mode: str) -> None:
  """DataError (or a warning with mode "allow") when the images' metadata give different pixel sizes."""
  known = [(p, m["pixel_size_nm"]) for p, m in zip(paths, metadata) if m.get("pixel_size_nm")]
  if not known:
    return
  small, large = min(known, key=lambda pm: pm[1]), max(known, key=lambda pm: pm[1])
  if not sem_metadata.same_pixel_size(small[1], large[1]):
    message = (f"{_show(os.path.join(images_dir, small[0]))} has pixels of {small[1]:.4g} nm but "
               f"{_show(os.path.join(images_dir, large[0]))} of {large[1]:.4g} nm: the model's receptive field and the "
               f"surface texture are in pixels, so mixed magnifications mix scales; keep one pixel size per dataset, "
               f"or set data.mixed_pixel_sizes=allow to train on them anyway")
    if mode == "refuse":
      raise DataError(message)
    warnings.warn(message, stacklevel=3)
  elif len(known) < len(paths):
    warnings.warn(f"{len(paths) - len(known)} of {len(paths)} images carry no pixel size in their metadata, the "
                  f"others {small[1]:.4g} nm: check that they were taken at the same magnification", stacklevel=3)


def _check_info_bar(paths: list, bars: list, crop_bottom: int) -> None:
  """Warns when the images seem to keep an info bar (crop_bottom too small) or lose surface (far too large)."""
  left_in = [(p, b) for p, b in zip(paths, bars) if b > crop_bottom]
  if left_in:
    height = int(np.median([b for _, b in left_in]))
    warnings.warn(f"{len(left_in)} of {len(paths)} images (e.g. {left_in[0][0]}) seem to end in an info bar of about "
                  f"{height} rows, but data.crop_bottom={crop_bottom}: the bar's text (which may name the sample) "
                  f"would be trained on; set data.crop_bottom={height} if it is a bar", stacklevel=3)
  elif crop_bottom and bars and max(bars) > 0 and crop_bottom > 2 * max(bars):
    warnings.warn(f"data.crop_bottom={crop_bottom} cuts more than twice the largest info bar found ({max(bars)} "
                  f"rows): surface is being thrown away; check the setting", stacklevel=3)


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """(H, W) grayscale pixels of one image file in its native units, decoded as a dataset's images are (any bit
  depth, colour to luminance, info bar kept); DataError naming the file when it cannot be used."""
  try:
    return _read_gray(path, max_pixels)
  except _Unreadable as e:
    raise DataError(str(e)) from None


class _Unreadable(Exception):
  """A file that cannot be opened or decoded; the message starts with its path."""


def _show(path: str) -> str:
  """The path as printable text, even when the file name is not valid UTF-8."""
  return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _hxw(shape) -> str:
  return f"{shape[0]}x{shape[1]}"


def _first_line(e: Exception) -> str:
  """A library message cut to one short line, so errors stay one line."""
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:160]}"


def _resolve_layout(root: str):
  """(images folder, masks folder or None, manifest path or None) for either layout."""
  if not os.path.exists(root):
    raise DataError(f"dataset root {_show(root)} does not exist: check the path (data.root)")
  if not os.path.isdir(root):
    raise DataError(f"dataset root {_show(root)} is a file, not a folder: point it at the folder of stress-time "
                    f"sub-folders")
  if os.path.isdir(os.path.join(root, "images")):
    images_dir, parent = os.path.join(root, "images"), root
  elif os.path.basename(os.path.normpath(root)) == "images":
    images_dir, parent = root, os.path.dirname(os.path.abspath(root))
  else:
    return root, None, None
  masks_dir = os.path.join(parent, "masks")
  manifest = os.path.join(parent, "manifest.json")
  return (images_dir, masks_dir if os.path.isdir(masks_dir) else None,
          manifest if os.path.isfile(manifest) else None)


def _label_folders(images_dir: str):
  """Label folder names and their (T,) float64 stress times, sorted numerically."""
  try:
    # A name like ".5" is a stress time, not a hidden folder.
    entries = sorted(e for e in os.listdir(images_dir) if not e.startswith(".") or _NUMBER.match(e))
  except OSError as e:
    raise DataError(f"{_show(images_dir)}: cannot list folder ({_first_line(e)}); check its permissions") from None
  names = [e for e in entries if os.path.isdir(os.path.join(images_dir, e))]
  if not names:
    raise DataError(f"{_show(images_dir)} has no label folders: put images in one sub-folder per stress time, "
                    f"named by the time (e.g. 0/, 2.5/, 10/)")
  times = {}
  for name in names:
    if not _NUMBER.match(name):
      raise DataError(f"{_show(os.path.join(images_dir, name))}: folder name is not a stress time; rename it to "
                      f"the numeric stress time (e.g. 2.5) or move it out of the dataset folder")
    t = float(name)
    if not math.isfinite(t):
      raise DataError(f"{_show(os.path.join(images_dir, name))}: stress time is not finite; rename the folder")
    if t in times:
      raise DataError(f"{_show(images_dir)}: folders {_show(times[t])!r} and {_show(name)!r} are the same stress "
                      f"time {t:g}; merge them into one folder")
    times[t] = name
  order = sorted(times)
  return [times[t] for t in order], np.asarray(order, np.float64)


def _check_labels(images_dir: str, label_names: list, manifest: dict | None, manifest_path) -> None:
  """At least two stress times (tau and every ranking need a span), and, in a generated set, the folders its
  manifest lists (a deleted folder would misalign the manifest's per-label truth)."""
  if len(label_names) < 2:
    raise DataError(f"{_show(images_dir)} has one stress-time folder ({_show(label_names[0])}): training needs at "
                    f"least two, one sub-folder per stress time (e.g. 0/, 2.5/, 10/)")
  listed = manifest.get("labels") if manifest else None
  if isinstance(listed, list) and all(isinstance(e, dict) and "folder" in e for e in listed):
    expected = [str(e["folder"]) for e in listed]
    if sorted(expected) != sorted(label_names):
      missing = sorted(set(expected) - set(label_names))
      extra = sorted(set(label_names) - set(expected))
      raise DataError(f"{_show(images_dir)}: folders {'missing ' + str(missing) if missing else ''}"
                      f"{' and ' if missing and extra else ''}{'not listed ' + str(extra) if extra else ''} against "
                      f"{_show(manifest_path)}; restore them, or delete the generated set to make it again")


def _check_files_reached_once(images_dir: str, files_by_label: dict) -> None:
  """DataError when one file is reached through two paths (a linked folder or file), which would put it under two
  labels or on both sides of the train/test split."""
  seen = {}
  for name, files in files_by_label.items():
    for rel in files:
      real = os.path.realpath(os.path.join(images_dir, rel))
      if real in seen:
        raise DataError(f"{_show(os.path.join(images_dir, rel))} and {_show(os.path.join(images_dir, seen[real]))} "
                        f"are the same file (through a link): keep each image once, in its own stress-time folder")
      seen[real] = rel


def _check_pixels(images_dir: str, images: list, paths: list) -> None:
  """One pixel type for the whole set (one mean and std cannot standardise 8- and 16-bit images together), and some
  variation (a constant set has nothing to learn, and its standardisation divides by zero)."""
  first = {}
  for image, rel in zip(images, paths):
    first.setdefault(image.dtype, rel)
  if len(first) > 1:
    (a, rel_a), (b, rel_b) = list(first.items())[:2]
    raise DataError(f"{_show(os.path.join(images_dir, rel_b))} has {b} pixels but "
                    f"{_show(os.path.join(images_dir, rel_a))} has {a}: convert the dataset to one pixel type")
  lo = min(float(image.min()) for image in images)
  hi = max(float(image.max()) for image in images)
  if hi - lo <= 0:
    raise DataError(f"{_show(images_dir)}: every pixel of every image is {lo:g}: the images carry nothing to learn; "
                    f"check the export (a blank or all-black set)")


def _image_files(images_dir: str, label_name: str) -> list:
  """Sorted posix paths (relative to `images_dir`) of image files under one label folder; hidden entries skipped."""
  top = os.path.join(images_dir, label_name)
  found = []
  # followlinks=False: a symlinked folder (possibly a loop) is not entered, so walking always ends.
  for folder, dirs, files in os.walk(top, onerror=_raise_unlistable, followlinks=False):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    rel_folder = os.path.relpath(folder, images_dir).replace(os.sep, "/")
    for name in files:
      if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        found.append(f"{rel_folder}/{name}")
  return sorted(found)


def _raise_unlistable(error: OSError):
  raise DataError(f"{_show(error.filename or '')}: cannot list folder ({_first_line(error)}); check its permissions")


def _check_max_pixels(max_pixels) -> None:
  if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
    raise ConfigError(f"max_pixels={max_pixels!r}: must be a whole number of pixels >= 1")


def _sniff(head: bytes) -> str | None:
  """The image format the content starts with (".png", ".jpg", ".tif", ".bmp"), whatever the file is named."""
  if head.startswith(b"\x89PNG\r\n\x1a\n"):
    return ".png"
  if head.startswith(b"\xff\xd8\xff"):
    return ".jpg"
  if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
    return ".tif"
  if head.startswith(b"BM"):
    return ".bmp"
  return None


def _png_shape(data: bytes):
  if len(data) < 24 or data[12:16] != b"IHDR":
    return None
  width, height = struct.unpack(">II", data[16:24])
  return height, width


def _jpeg_shape(data: bytes):
  # Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are other segments.
  frames = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
  pos = 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte before a marker
      pos += 1
      continue
    if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
      pos += 2
      continue
    (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
    if marker in frames:
      if pos + 9 > len(data):
        return None
      height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
      return height, width
    if length < 2:
      return None
    pos += 2 + length
  return None


def _tiff_shape(data: bytes):
  """(H, W) of the first page from its ImageLength (257) and ImageWidth (256) tags."""
  order = "<" if data[:2] == b"II" else ">"
  big = data[2:4] in (b"+\x00", b"\x00+")
  try:
    if big:
      (offset,) = struct.unpack(order + "Q", data[8:16])
      (count,) = struct.unpack(order + "Q", data[offset:offset + 8])
      first, size = offset + 8, 20
    else:
      (offset,) = struct.unpack(order + "I", data[4:8])
      (count,) = struct.unpack(order + "H", data[offset:offset + 2])
      first, size = offset + 2, 12
    found = {}
    # SHORT, LONG, LONG8: the value sits in the entry itself
    formats = {3: "H", 4: "I", 16: "Q"}
    for i in range(min(count, 4096)):
      entry = data[first + i * size:first + (i + 1) * size]
      tag, kind = struct.unpack(order + "HH", entry[:4])
      if tag in (256, 257) and kind in formats:
        value_at = 12 if big else 8
        fmt = formats[kind]
        (found[tag],) = struct.unpack(order + fmt, entry[value_at:value_at + struct.calcsize(fmt)])
  except struct.error:
    return None
  return (found[257], found[256]) if 256 in found and 257 in found else None


def _bmp_shape(data: bytes):
  if len(data) < 26:
    return None
  (header_size,) = struct.unpack("<I", data[14:18])
  if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
    width, height = struct.unpack("<HH", data[18:22])
  else:
    width, height = struct.unpack("<ii", data[18:26])  # a negative height means rows stored top-down
  return abs(height), abs(width)


_SHAPE_READERS = {".png": _png_shape, ".jpg": _jpeg_shape, ".tif": _tiff_shape, ".bmp": _bmp_shape}


def _open_regular(path: str):
  """The file opened for reading; _Unreadable unless it is a regular file (after following links)."""
  # Opening a FIFO waits for a writer and /dev/zero never ends: only regular files are read.
  if not stat.S_ISREG(os.stat(path).st_mode):
    raise _Unreadable(f"{_show(path)}: not a regular file (a pipe, device or socket); remove it from the dataset")
  return open(path, "rb")


def _read_header(f, path: str) -> tuple:
  """(format extension, first bytes, (H, W) or None when not within them) of an open image file."""
  head = f.read(_HEADER_BYTES)
  kind = _sniff(head)
  if kind is None:
    raise _Unreadable(f"{_show(path)}: file is empty (0 bytes)" if not head else
                      f"{_show(path)}: not a decodable image: its content is no PNG, JPEG, TIFF or BMP (it starts "
                      f"{head[:8]!r})")
  return kind, head, _SHAPE_READERS[kind](head)


def _read_pixels(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decoded pixels of one file; raises _Unreadable naming the file for any failure.

  The format is taken from the content, not the name (a JPEG saved as .png still loads), and the dimensions
  from the header are checked against `max_pixels` before the decoder allocates anything.
  """
  shown = _show(path)
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:
    raise _Unreadable(f"{shown}: file name is not valid UTF-8 (rename it)") from None
  try:
    with _open_regular(path) as f:
      kind, head, shape = _read_header(f, path)
      data = head + f.read()
  except OSError as e:
    raise _Unreadable(f"{shown}: cannot open ({_first_line(e)})") from None
  if shape is None and len(data) > len(head):
    shape = _SHAPE_READERS[kind](data)
  if shape is None:
    raise _Unreadable(f"{shown}: not a decodable image: its {kind[1:].upper()} header is truncated or corrupt "
                      "(no image size found)")
  if shape[0] * shape[1] > max_pixels:
    raise _Unreadable(f"{shown}: header declares {_hxw(shape)} (H x W) = {shape[0] * shape[1]} pixels, above the "
                      f"limit of {max_pixels} (data.max_pixels); raise the limit if the image is real")
  try:
    # index=0: the first page of a multi-page file; the shape check below rejects stacks a plugin returns whole.
    return np.asarray(iio.imread(data, extension=kind, index=0))
  except Exception as e:  # decoders raise many types (OSError, ValueError, SyntaxError, struct.error, ...)
    raise _Unreadable(f"{shown}: not a decodable image, corrupt or truncated ({_first_line(e)})") from None


def peek_image_shape(root, crop_bottom: int = 0) -> tuple:
  """(H, W) after `crop_bottom` of the first image under `root` with a readable header, decoding nothing.

  For checks that must run before anything is loaded or written (e.g. a patch larger than the images); the full
  load still checks every image.
  """
  images_dir, _, _ = _resolve_layout(os.fsdecode(os.fspath(root)))
  for name in _label_folders(images_dir)[0]:
    for rel in _image_files(images_dir, name):
      path = os.path.join(images_dir, rel)
      try:
        with _open_regular(path) as f:
          _, _, shape = _read_header(f, path)
      except (OSError, _Unreadable):
        continue
      if shape is not None:
        return shape[0] - crop_bottom, shape[1]
  raise DataError(f"{_show(images_dir)}: no image with a readable header; check the dataset folder (data.root)")


def _read_gray(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """(H, W) image in uint8, uint16 or float32; colour is converted to luminance and alpha dropped."""
  pixels = _read_pixels(path, max_pixels)
  if pixels.ndim == 3 and pixels.shape[-1] in (1, 2):  # gray or gray + alpha
    pixels = pixels[..., 0]
  elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # RGB or RGBA
    pixels = _luminance(pixels[..., :3])
  if pixels.ndim != 2 or 0 in pixels.shape:
    raise _Unreadable(f"{_show(path)}: pixel array of shape {pixels.shape} is not one gray or RGB(A) image "
                      f"(multi-page?); save a single page per file")
  if pixels.dtype == np.bool_:
    return pixels.astype(np.uint8)
  if pixels.dtype not in (np.uint8, np.uint16):
    pixels = pixels.astype(np.float32, copy=False)  # other depths (int32, float64, ...): float32 is exact below 2**24
    if not np.isfinite(pixels).all():
      raise _Unreadable(f"{_show(path)}: contains NaN or infinite pixels")
  return pixels


def _luminance(rgb: np.ndarray) -> np.ndarray:
  """(H, W) luma of (H, W, 3) pixels; integer input rounds back to its own dtype."""
  luma = rgb.astype(np.float32) @ LUMA_WEIGHTS
  if np.issubdtype(rgb.dtype, np.integer):
    info = np.iinfo(rgb.dtype)
    return np.clip(np.rint(luma), info.min, info.max).astype(rgb.dtype)
  return luma


def _read_mask(masks_dir: str, rel: str, shape, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """(H, W) uint8 {0, 1} mask matching image `rel` (same relative path, or same stem with any image extension)."""
  stem = os.path.splitext(rel)[0]
  candidates = [rel] + [stem + ext for ext in IMAGE_EXTENSIONS]
  path = next((os.path.join(masks_dir, c) for c in candidates if os.path.isfile(os.path.join(masks_dir, c))), None)
  if path is None:
    raise DataError(f"{_show(os.path.join(masks_dir, rel))}: mask missing for image {_show(rel)}; regenerate the "
                    f"dataset or delete the masks folder")
  pixels = _read_pixels(path, max_pixels)
  if pixels.ndim == 3:
    pixels = pixels[..., :3].max(axis=-1)  # any non-zero colour channel is foreground; alpha ignored
  if pixels.shape != shape:
    raise DataError(f"{_show(path)}: mask is {_hxw(pixels.shape)} but its image is {_hxw(shape)} (H x W); "
                    f"regenerate the mask")
  return (pixels > 0).astype(np.uint8)


def _crop(pixels: np.ndarray, crop_bottom: int) -> np.ndarray:
  # copy so the cropped rows' memory is released
  return pixels[:pixels.shape[0] - crop_bottom].copy() if crop_bottom else pixels


def _statistics(images: list, mode: str):
  """(N,) float64 mean and std per image, or the pooled dataset values repeated, in pixel units."""
  mean = np.array([im.mean(dtype=np.float64) for im in images])
  std = np.array([im.std(dtype=np.float64) for im in images])
  if mode == "dataset":
    pooled_mean, pooled_std = pooled_statistics(mean, std)
    mean, std = np.full_like(mean, pooled_mean), np.full_like(std, pooled_std)
  return mean, std


def pooled_statistics(mean_N, std_N) -> tuple[float, float]:
  """The mean and std of all pixels of N same-sized images, from each image's own mean and std."""
  mean_N, std_N = np.asarray(mean_N, np.float64), np.asarray(std_N, np.float64)
  pooled_mean = float(mean_N.mean())
  return pooled_mean, math.sqrt(max(float((std_N ** 2 + mean_N ** 2).mean()) - pooled_mean ** 2, 0.0))


def standardise_on(dataset: SEMDataset, indices, mode: str) -> None:
  """With `mode` "dataset", the standardisation from the images at `indices` alone (the training split), so no
  statistic of a held-out image reaches the model; "image" standardisation is each image's own and stays."""
  if mode != "dataset":
    return
  mean, std = pooled_statistics(dataset.intensity_mean[indices], dataset.intensity_std[indices])
  dataset.mean[:] = mean
  dataset.std[:] = std


def _read_manifest(path):
  if path is None:
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{_show(path)}: cannot read manifest ({_first_line(e)}); regenerate or delete it") from None
  if not isinstance(manifest, dict):
    raise DataError(f"{_show(path)}: manifest is not a JSON object; regenerate or delete it")
  return manifest
