"""Reading one SEM image file: its directory (size, pixel type, pages) without the pixels, or its pixels as gray.

TIFF goes through tifffile, which finds the image directory wherever the file puts it (FEI/Thermo and TESCAN write
it after the pixels), reads every page, and decodes every compression through imagecodecs (JEOL's LZW among them).
Any other file goes through imageio's Pillow plugin, which picks its decoder from the content (a JPEG named
.png still loads). No header is parsed here: the size
check before training and the loader read a file the same way, so what one accepts the other reads.
"""
import contextlib
import dataclasses
import os
import re
import stat

import imageio.v3 as iio
import numpy as np
import PIL.Image
import tifffile

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# Largest image accepted, in pixels (H x W), checked from the file's directory before anything is decoded, so a
# corrupt or hostile header cannot make the loader allocate gigabytes. 2**27 (e.g. 11585 x 11585) is far above any
# SEM frame and below Pillow's own refusal at about 1.8e8 pixels, which would otherwise answer first.
MAX_PIXELS = 2 ** 27
# ITU-R BT.601 luma weights, the same as Pillow's RGB -> L conversion.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


class Unreadable(Exception):
  """A file that cannot be opened or decoded; the message starts with its path."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """What a file's directory says about the page that is read, before any pixel is decoded."""
  height: int
  width: int
  dtype: str      # numpy name of the stored samples ("uint8", "uint16", "float32", ...)
  channels: int   # 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA
  pages: int      # images in the file (a TIFF's pages); `page` picks one
  page: int
  kind: str       # "tiff" (tifffile) or "pillow" (imageio's Pillow plugin: PNG, JPEG, BMP, ...)


def show(path: str) -> str:
  """The path as printable text, even when the file name is not valid UTF-8."""
  return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def first_line(e: Exception) -> str:
  """A library message cut to one short line, so errors stay one line."""
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text[:160]}"


def open_regular(path: str, max_bytes: int | None = None):
  """The file opened for binary reading; Unreadable unless it is a regular file (after following links) of at most
  `max_bytes`. Opening a FIFO waits for a writer and /dev/zero never ends, so only regular files are opened."""
  try:
    info = os.stat(path)
  except OSError as e:
    raise Unreadable(f"{show(path)}: cannot open ({first_line(e)})") from None
  if not stat.S_ISREG(info.st_mode):
    raise Unreadable(f"{show(path)}: not a regular file (a pipe, device or socket); remove it from the dataset")
  if info.st_size == 0:
    raise Unreadable(f"{show(path)}: file is empty (0 bytes)")
  if max_bytes is not None and info.st_size > max_bytes:
    raise Unreadable(f"{show(path)}: {info.st_size} bytes, more than the {max_bytes} expected of it")
  try:
    return open(path, "rb")
  except OSError as e:
    raise Unreadable(f"{show(path)}: cannot open ({first_line(e)})") from None


@contextlib.contextmanager
def open_tiff(path: str):
  """A `tifffile.TiffFile` of the file, or None when its content is not TIFF; Unreadable for a file that cannot be
  opened (see `open_regular`)."""
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:
    raise Unreadable(f"{show(path)}: file name is not valid UTF-8 (rename it)") from None
  with open_regular(path) as f:
    try:
      tif = tifffile.TiffFile(f)
    except tifffile.TiffFileError:
      yield None
      return
    except Exception as e:  # a TIFF signature with a broken directory: struct, value and index errors
      raise Unreadable(f"{show(path)}: not a decodable image: its TIFF directory is corrupt "
                       f"({first_line(e)})") from None
    with tif:
      yield tif


def _tiff_page(tif, path: str, page: int):
  pages = len(tif.pages)
  if pages == 0:
    raise Unreadable(f"{show(path)}: not a decodable image: no image directory found (a truncated or corrupt TIFF)")
  if not 0 <= page < pages:
    raise Unreadable(f"{show(path)}: has {pages} page(s), no page {page} (data.page counts from 0)")
  return tif.pages[page], pages


def _page_info(tiff_page, pages: int, page: int) -> ImageInfo:
  axes = tiff_page.axes
  shape = dict(zip(axes, tiff_page.shape))
  if "Y" not in shape or "X" not in shape or set(axes) - set("YXS"):
    raise ValueError(f"page of axes {axes} {tiff_page.shape} is not one gray or RGB(A) image")
  return ImageInfo(height=int(shape["Y"]), width=int(shape["X"]), dtype=np.dtype(tiff_page.dtype).name,
                   channels=int(shape.get("S", 1)), pages=pages, page=page, kind="tiff")


def _root_cause(e: BaseException) -> BaseException:
  """The innermost exception: imageio wraps the decoder's own error in a generic one."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ if e.__cause__ is not None else e.__context__
  return e


def _other_failure(path: str, e: Exception, max_pixels: int) -> Unreadable:
  cause = _root_cause(e)
  if isinstance(cause, PIL.Image.DecompressionBombError):
    # Pillow refuses a declared size above its own limit before telling it: its message holds the pixel count.
    declared = re.search(r"\((\d+) pixels\)", str(cause))
    count = f"{declared.group(1)} pixels" if declared else "more pixels than Pillow opens"
    return Unreadable(f"{show(path)}: header declares {count}, above the limit of {max_pixels} (data.max_pixels); "
                      f"raise the limit if the image is real")
  if isinstance(cause, PIL.UnidentifiedImageError) or "can not handle the given uri" in str(e):
    return Unreadable(f"{show(path)}: not a decodable image: its content is no TIFF, PNG, JPEG, BMP or other image "
                      f"Pillow reads")
  return Unreadable(f"{show(path)}: not a decodable image, corrupt or truncated ({first_line(cause)})")


def _other_info(path: str, page: int, max_pixels: int) -> ImageInfo:
  try:
    props = iio.improps(path, index=page, plugin="pillow")
  except Exception as e:  # decoders raise many types (OSError, ValueError, SyntaxError, ...)
    raise _other_failure(path, e, max_pixels) from None
  shape = props.shape
  if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] > 4):
    raise Unreadable(f"{show(path)}: pixel array of shape {shape} is not one gray or RGB(A) image")
  count = props.n_images if props.n_images else 1
  return ImageInfo(height=int(shape[0]), width=int(shape[1]), dtype=np.dtype(props.dtype).name,
                   channels=int(shape[2]) if len(shape) == 3 else 1, pages=count, page=page, kind="pillow")


def read_info(path: str, page: int = 0, max_pixels: int = MAX_PIXELS) -> ImageInfo:
  """The directory of page `page` of the file (no pixel decoded); Unreadable naming the file when it is no image,
  lacks that page, or is larger than `max_pixels`."""
  with open_tiff(path) as tif:
    if tif is not None:
      try:
        info = _page_info(*_tiff_page(tif, path, page), page)
      except Unreadable:
        raise
      except Exception as e:
        raise Unreadable(f"{show(path)}: not a decodable image ({first_line(e)})") from None
    else:
      info = _other_info(path, page, max_pixels)
  _check_size(info, path, max_pixels)
  return info


def _check_size(info: ImageInfo, path: str, max_pixels: int) -> None:
  if info.height * info.width > max_pixels:
    raise Unreadable(f"{show(path)}: header declares {info.height}x{info.width} (H x W) = "
                     f"{info.height * info.width} pixels, above the limit of {max_pixels} (data.max_pixels); "
                     f"raise the limit if the image is real")
  if 0 in (info.height, info.width):
    raise Unreadable(f"{show(path)}: the image is {info.height}x{info.width} pixels (empty)")


def read_pixels(path: str, page: int = 0, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
  """(pixels as stored, (H, W) or (H, W, C), and the page's `ImageInfo`); the size is checked against
  `max_pixels` from the directory before anything is decoded."""
  with open_tiff(path) as tif:
    if tif is not None:
      try:
        tiff_page, pages = _tiff_page(tif, path, page)
        info = _page_info(tiff_page, pages, page)
        _check_size(info, path, max_pixels)
        pixels = tiff_page.asarray()
        if tiff_page.axes.startswith("S"):  # planar RGB: samples stored first
          pixels = np.moveaxis(pixels, 0, -1)
        return np.asarray(pixels), info
      except Unreadable:
        raise
      except Exception as e:  # tifffile and imagecodecs raise many types on corrupt data
        raise Unreadable(f"{show(path)}: not a decodable image, corrupt or truncated ({first_line(e)})") from None
  info = _other_info(path, page, max_pixels)
  _check_size(info, path, max_pixels)
  try:
    return np.asarray(iio.imread(path, index=page, plugin="pillow")), info
  except Exception as e:
    raise _other_failure(path, e, max_pixels) from None


def read_gray(path: str, page: int = 0, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """(H, W) image of page `page` in uint8, uint16 or float32; colour is converted to luminance and alpha dropped."""
  pixels, _ = read_pixels(path, page, max_pixels)
  if pixels.ndim == 3 and pixels.shape[-1] in (1, 2):  # gray or gray + alpha
    pixels = pixels[..., 0]
  elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # RGB or RGBA
    pixels = luminance(pixels[..., :3])
  if pixels.ndim != 2 or 0 in pixels.shape:
    raise Unreadable(f"{show(path)}: pixel array of shape {pixels.shape} is not one gray or RGB(A) image")
  if pixels.dtype == np.bool_:
    return pixels.astype(np.uint8)
  if pixels.dtype not in (np.uint8, np.uint16):
    pixels = pixels.astype(np.float32, copy=False)  # other depths (int32, float64, ...): float32 is exact below 2**24
    if not np.isfinite(pixels).all():
      raise Unreadable(f"{show(path)}: contains NaN or infinite pixels")
  return pixels


def luminance(rgb: np.ndarray) -> np.ndarray:
  """(H, W) luma of (H, W, 3) pixels; integer input rounds back to its own dtype."""
  luma = rgb.astype(np.float32) @ LUMA_WEIGHTS
  if np.issubdtype(rgb.dtype, np.integer):
    info = np.iinfo(rgb.dtype)
    return np.clip(np.rint(luma), info.min, info.max).astype(rgb.dtype)
  return luma
