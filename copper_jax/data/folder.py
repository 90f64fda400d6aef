"""Load a folder of SEM images, one sub-folder per stress time, into memory.

Layouts accepted by `load_folder(root)`:
  real:      root/<t>/<any name>.<tif|tiff|png|jpg|jpeg|bmp>, or root/<t>/<specimen>/<any name>.<ext> where each
             sub-folder of a stress-time folder holds the fields of view of one specimen (deeper folders belong to
             their top specimen folder; files directly under root/<t> form one specimen named "<t>")
  synthetic: root/images/<t>/<name>.png, root/masks/<t>/<name>.png, root/manifest.json
             (`root` may also be the `images` folder itself; masks and manifest are then its siblings)
`<t>` is the numeric stress time (`0`, `1`, `2.5`, `10`); folders sort numerically and the class index is the rank.

Files are read by `image_reader` (TIFF through tifffile, any page; other formats through imageio). Each image's
SEM metadata (pixel size, magnification, detector, voltage, info bar) is read where its file carries it
(`sem_metadata`). Images of different pixel sizes are refused unless `mixed_pixel_sizes="allow"` or
`pixel_size_nm` resamples them all to one, because the model's receptive field and the surface's texture scale are
both counted in pixels. An info bar left in the images (seen in the metadata or in the pixels) is warned about,
since its text may name the sample; `crop_bottom="auto"` crops what each file's metadata records.
"""
import dataclasses
import json
import math
import os
import re
import warnings

import numpy as np

from copper_jax.data import image_reader, scale, sem_metadata
from copper_jax.data.image_reader import IMAGE_EXTENSIONS, MAX_PIXELS  # noqa: F401 -- the loader's own limits
from copper_jax.errors import ConfigError, DataError

# Floor on the std used to standardise, in image units, so a constant image maps to zeros instead of NaN.
STD_EPS = 1e-6
STANDARDISE_MODES = ("image", "dataset")
MIXED_PIXEL_SIZE_MODES = ("refuse", "allow")
# crop_bottom="auto": each file's recorded info bar (none where the file records none).
AUTO_CROP = "auto"

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_READ_FIX = "replace or delete the file, or load with skip_unreadable=True to skip it"
_show = image_reader.show
_first_line = image_reader.first_line
_Unreadable = image_reader.Unreadable


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
  metadata: list[dict]  # one per image: `sem_metadata.SEMMetadata.to_json()` of the file as it is
  intensity_mean: np.ndarray  # (N,) float64 each image's own mean and std in pixel units, whatever `standardise`
  intensity_std: np.ndarray   # is: what new images are compared with to flag ones unlike the training set
  crops: list[int] = dataclasses.field(default_factory=list)  # rows cut from the bottom of each file
  resampled_to_nm: float | None = None  # the pixel size every image was resampled to (data.pixel_size_nm)

  @property
  def num_classes(self) -> int:
    return len(self.stress_times)

  @property
  def tau(self) -> np.ndarray:
    return normalised_times(self.stress_times)

  @property
  def image_shape(self) -> tuple:
    """(H, W) in pixels, after `crop_bottom` (and resampling)."""
    return tuple(self.images[0].shape)

  @property
  def pixel_size_range_nm(self) -> list | None:
    """[smallest, largest] pixel size of the files as they are (nm), from their metadata; None when none says."""
    known = [m["pixel_size_nm"] for m in self.metadata if m.get("pixel_size_nm")]
    return [float(min(known)), float(max(known))] if known else None

  @property
  def pixel_size_nm(self) -> float | None:
    """The pixel size the images are trained at, in nm: the resampled size, else the files' size where they all
    agree (within `sem_metadata.SAME_PIXEL_SIZE_RTOL`); None when they differ or none says."""
    if self.resampled_to_nm:
      return float(self.resampled_to_nm)
    span = self.pixel_size_range_nm
    return span[0] if span and sem_metadata.same_pixel_size(*span) else None

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


def check_crop_bottom(crop_bottom) -> None:
  if crop_bottom == AUTO_CROP:
    return
  if isinstance(crop_bottom, bool) or not isinstance(crop_bottom, (int, np.integer)) or crop_bottom < 0:
    raise ConfigError(f"crop_bottom={crop_bottom!r}: must be a whole number of pixels >= 0, or 'auto' (each "
                      f"file's recorded info bar)")


def check_pixel_size_nm(pixel_size_nm) -> None:
  lo, hi = sem_metadata.PIXEL_SIZE_RANGE_NM
  if (isinstance(pixel_size_nm, bool) or not isinstance(pixel_size_nm, (int, float, np.integer, np.floating))
      or not math.isfinite(pixel_size_nm) or not (pixel_size_nm == 0 or lo <= pixel_size_nm <= hi)):
    raise ConfigError(f"pixel_size_nm={pixel_size_nm!r}: must be 0 (keep each image's pixels) or a pixel size in "
                      f"nm from {lo:g} to {hi:g}")


def prepare_surface(path: str, image: np.ndarray, meta: sem_metadata.SEMMetadata, crop_bottom,
                    pixel_size_nm: float = 0.0) -> tuple[np.ndarray, int]:
  """(surface, rows cut): the image with its info bar cut (`crop_bottom` rows, or with "auto" what the file's
  metadata records) and, with `pixel_size_nm`, resampled to that pixel size; ConfigError or DataError naming the
  file when it cannot be. New images at prediction go through the same steps as the training images."""
  crop = (meta.info_bar_rows or 0) if crop_bottom == AUTO_CROP else int(crop_bottom)
  if crop >= image.shape[0]:
    raise ConfigError(f"crop_bottom={crop_bottom} removes all {image.shape[0]} rows of {_show(path)}: "
                      f"set crop_bottom to the info-bar height, below the image height")
  surface = _crop(image, crop)
  if pixel_size_nm:
    if not meta.pixel_size_nm:
      raise DataError(f"{_show(path)} records no pixel size, so it cannot be resampled to data.pixel_size_nm="
                      f"{pixel_size_nm:g}; remove it, or set data.pixel_size_nm=0 to keep every image's pixels")
    surface = scale.resample(surface, meta.pixel_size_nm, pixel_size_nm)
  return surface, crop


def surface_metadata(meta: sem_metadata.SEMMetadata, crop_bottom, pixel_size_nm: float = 0.0,
                     ) -> sem_metadata.SEMMetadata:
  """The file's metadata as it applies to its `prepare_surface` output: the info bar left after the crop (in the
  output's rows), and the pixel size resampled to."""
  crop = (meta.info_bar_rows or 0) if crop_bottom == AUTO_CROP else int(crop_bottom)
  left = None if meta.info_bar_rows is None else max(meta.info_bar_rows - crop, 0)
  if left and pixel_size_nm and meta.pixel_size_nm:
    left = int(round(left * meta.pixel_size_nm / pixel_size_nm))
  return dataclasses.replace(meta, info_bar_rows=left, pixel_size_nm=pixel_size_nm or meta.pixel_size_nm)


def load_folder(root, crop_bottom=0, skip_unreadable: bool = False, standardise: str = "image",
                max_pixels: int = MAX_PIXELS, mixed_pixel_sizes: str = "refuse", page: int = 0,
                pixel_size_nm: float = 0.0) -> SEMDataset:
  """Loads every image under `root` (see module docstring for layouts).

  crop_bottom: rows (pixels) cut from the bottom of every image and mask, e.g. the SEM info bar; "auto": the rows
    each file's metadata records as its info bar (nothing where it records none).
  skip_unreadable: skip files that cannot be opened or decoded (listed in `dataset.skipped` and warned about)
    instead of raising DataError.
  standardise: "image" (each image's own mean/std) or "dataset" (the pooled mean/std of all images).
  max_pixels: largest H x W accepted, read from each file's directory before decoding; a larger image is unreadable.
  mixed_pixel_sizes: "refuse" (DataError when the metadata give different pixel sizes) or "allow" (a warning; the
    sizes are recorded as they are).
  page: the page of multi-page files to read (0: the first).
  pixel_size_nm: 0 keeps every image's pixels; X resamples every image (anti-aliased) to X nm per pixel, then cuts
    them to their common size, so a set taken at several magnifications trains at one scale.
  """
  check_crop_bottom(crop_bottom)
  _check_max_pixels(max_pixels)
  check_pixel_size_nm(pixel_size_nm)
  if isinstance(page, bool) or not isinstance(page, (int, np.integer)) or page < 0:
    raise ConfigError(f"page={page!r}: must be a whole number >= 0 (the page of multi-page files, from 0)")
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
  images, paths, labels, masks, metadata, bars, crops = [], [], [], [], [], [], []
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
        image = image_reader.read_gray(path, page, max_pixels)
        mask = None if masks_dir is None else _read_mask(masks_dir, rel, image.shape, max_pixels)
      except _Unreadable as e:
        if not skip_unreadable:
          raise DataError(f"{e}; {_READ_FIX}") from None
        skipped.append(str(e))
        continue
      if first is None:
        first = (rel, image.shape)
      elif image.shape != first[1] and not pixel_size_nm:
        raise DataError(f"{_show(path)} is {_hxw(image.shape)} but {_show(os.path.join(images_dir, first[0]))} is "
                        f"{_hxw(first[1])} (H x W): all images must have the same size; resize or remove one, or "
                        f"set data.pixel_size_nm to resample them to one pixel size")
      meta = sem_metadata.read_sem_metadata(path, *image.shape)
      metadata.append(meta.to_json())
      bars.append(sem_metadata.info_bar(meta, image)[0])
      surface, crop = prepare_surface(path, image, meta, crop_bottom, pixel_size_nm)
      images.append(surface)
      crops.append(crop)
      if mask is not None:
        masks.append(_crop(mask, crop))
      paths.append(rel)
      labels.append(label)
      loaded_in_label += 1
    if loaded_in_label == 0:
      raise DataError(f"{_show(os.path.join(images_dir, name))}: every image in this label folder was unreadable "
                      f"and skipped; replace them or remove the folder")
  if skipped:
    warnings.warn(f"skipped {len(skipped)} unreadable file(s): " + " | ".join(skipped), stacklevel=2)
  _warn_of_metadata_problems(images_dir, paths, metadata)
  images, masks = _to_common_size(images, masks if masks_dir is not None else None)
  _check_pixels(images_dir, images, paths)
  if not pixel_size_nm:
    _check_pixel_sizes(images_dir, paths, metadata, mixed_pixel_sizes)
  _check_info_bar(paths, bars, crops, crop_bottom)
  intensity_mean, intensity_std = _statistics(images, "image")
  mean, std = _statistics(images, standardise)
  return SEMDataset(
      root=images_dir, stress_times=stress_times, label_names=label_names, images=images, paths=paths,
      labels=np.asarray(labels, np.int32), masks=masks, mean=mean, std=std,
      manifest=manifest, skipped=skipped, specimens=[specimen_of(p) for p in paths],
      metadata=metadata, intensity_mean=intensity_mean, intensity_std=intensity_std, crops=crops,
      resampled_to_nm=float(pixel_size_nm) if pixel_size_nm else None)


def _to_common_size(images: list, masks: list | None):
  """Images (and masks) cut to the size they all hold, when per-file crops or resampling left them unequal."""
  shape = scale.common_size(images)
  if all(im.shape == shape for im in images):
    return images, masks
  warnings.warn(f"images differ in size after cropping or resampling (down to {_hxw(shape)}, H x W): each is cut "
                f"to that size from its top-left corner", stacklevel=3)
  return ([scale.cut_to(im, shape) for im in images],
          None if masks is None else [scale.cut_to(m, shape) for m in masks])


def _warn_of_metadata_problems(images_dir: str, paths: list, metadata: list) -> None:
  """One warning line for metadata values read but not used (an implausible pixel size or info bar)."""
  lines = [f"{_show(os.path.join(images_dir, p))}: {problem}" for p, m in zip(paths, metadata)
           for problem in m.get("problems", [])]
  if lines:
    more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
    warnings.warn("; ".join(lines[:3]) + more, stacklevel=3)


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
               f"surface texture are in pixels, so mixed magnifications mix scales; set data.pixel_size_nm to "
               f"resample every image to one pixel size, keep one pixel size per dataset, or set "
               f"data.mixed_pixel_sizes=allow to train on them anyway")
    if mode == "refuse":
      raise DataError(message)
    warnings.warn(message, stacklevel=3)
  elif len(known) < len(paths):
    warnings.warn(f"{len(paths) - len(known)} of {len(paths)} images carry no pixel size in their metadata, the "
                  f"others {small[1]:.4g} nm: check that they were taken at the same magnification", stacklevel=3)


def _check_info_bar(paths: list, bars: list, crops: list, crop_bottom) -> None:
  """Warns when the images seem to keep an info bar (the crop too small) or lose surface (far too large)."""
  left_in = [(p, b) for p, b, c in zip(paths, bars, crops) if b > c]
  if left_in:
    height = int(np.median([b for _, b in left_in]))
    warnings.warn(f"{len(left_in)} of {len(paths)} images (e.g. {left_in[0][0]}) seem to end in an info bar of about "
                  f"{height} rows, but data.crop_bottom={crop_bottom}: the bar's text (which may name the sample) "
                  f"would be trained on; set data.crop_bottom={height} if it is a bar", stacklevel=3)
  elif crop_bottom != AUTO_CROP and crop_bottom and bars and max(bars) > 0 and crop_bottom > 2 * max(bars):
    warnings.warn(f"data.crop_bottom={crop_bottom} cuts more than twice the largest info bar found ({max(bars)} "
                  f"rows): surface is being thrown away; check the setting", stacklevel=3)


def read_image(path: str, max_pixels: int = MAX_PIXELS, page: int = 0) -> np.ndarray:
  """(H, W) grayscale pixels of one image file in its native units, decoded as a dataset's images are (any bit
  depth, colour to luminance, info bar kept); DataError naming the file when it cannot be used."""
  try:
    return image_reader.read_gray(path, page, max_pixels)
  except _Unreadable as e:
    raise DataError(str(e)) from None


def peek_image_shape(root, crop_bottom=0, page: int = 0, pixel_size_nm: float = 0.0) -> tuple:
  """(H, W) after `crop_bottom` (and resampling) of the first readable image under `root`, decoding no pixels:
  the same reader as the loader, reading only the file's directory and metadata.

  For checks that must run before anything is loaded or written (e.g. a patch larger than the images); the full
  load still checks every image.
  """
  images_dir, _, _ = _resolve_layout(os.fsdecode(os.fspath(root)))
  problems = []
  for name in _label_folders(images_dir)[0]:
    for rel in _image_files(images_dir, name):
      path = os.path.join(images_dir, rel)
      try:
        info = image_reader.read_info(path, page)
      except _Unreadable as e:
        problems.append(str(e))
        continue
      meta = sem_metadata.read_sem_metadata(path, info.height, info.width)
      crop = (meta.info_bar_rows or 0) if crop_bottom == AUTO_CROP else int(crop_bottom)
      shape = (info.height - crop, info.width)
      if pixel_size_nm and meta.pixel_size_nm:
        shape = scale.resampled_shape(shape, meta.pixel_size_nm, pixel_size_nm)
      return shape
  detail = f" (e.g. {problems[0]})" if problems else ""
  raise DataError(f"{_show(images_dir)}: no readable image{detail}; check the dataset folder (data.root)")


def _hxw(shape) -> str:
  return f"{shape[0]}x{shape[1]}"

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


def _read_mask(masks_dir: str, rel: str, shape, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """(H, W) uint8 {0, 1} mask matching image `rel` (same relative path, or same stem with any image extension)."""
  stem = os.path.splitext(rel)[0]
  candidates = [rel] + [stem + ext for ext in IMAGE_EXTENSIONS]
  path = next((os.path.join(masks_dir, c) for c in candidates if os.path.isfile(os.path.join(masks_dir, c))), None)
  if path is None:
    raise DataError(f"{_show(os.path.join(masks_dir, rel))}: mask missing for image {_show(rel)}; regenerate the "
                    f"dataset or delete the masks folder")
  pixels, _ = image_reader.read_pixels(path, 0, max_pixels)
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
