"""Bringing images taken at different magnifications to one pixel size (`data.pixel_size_nm`), and to one size.

The model's receptive field and the surface's texture are both counted in pixels, so a set taken at two
magnifications mixes two scales; resampling every image to X nm per pixel trains (and predicts) at one. Shrinking
is anti-aliased (the interpolation kernel widens with the shrink factor, `jax.image.resize(antialias=True)`), so
texture finer than the new pixel averages out instead of folding back as false coarse texture.
"""
import jax
import jax.numpy as jnp
import numpy as np


def resampled_shape(shape_HxW, from_nm: float, to_nm: float) -> tuple[int, int]:
  """(H, W) of an image of `shape_HxW` pixels of `from_nm` once resampled to pixels of `to_nm`."""
  factor = from_nm / to_nm
  return max(1, int(round(shape_HxW[0] * factor))), max(1, int(round(shape_HxW[1] * factor)))


def resample(pixels_HxW: np.ndarray, from_nm: float, to_nm: float) -> np.ndarray:
  """The image resampled from pixels of `from_nm` to pixels of `to_nm` (anti-aliased when shrinking), in its own
  dtype (integers rounded and clipped); unchanged when the sizes agree to 1e-6."""
  if abs(from_nm / to_nm - 1) < 1e-6:
    return pixels_HxW
  shape = resampled_shape(pixels_HxW.shape, from_nm, to_nm)
  # On the host: a data-loading step should not take accelerator memory, and each image shape compiles once.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    out = np.asarray(jax.image.resize(jnp.asarray(pixels_HxW, jnp.float32), shape, method="linear", antialias=True))
  if np.issubdtype(pixels_HxW.dtype, np.integer):
    info = np.iinfo(pixels_HxW.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(pixels_HxW.dtype)
  return out.astype(pixels_HxW.dtype, copy=False)


def common_size(images: list) -> tuple[int, int]:
  """(H, W): the largest size every image holds."""
  return min(im.shape[0] for im in images), min(im.shape[1] for im in images)


def cut_to(pixels_HxW: np.ndarray, shape_HxW) -> np.ndarray:
  """The top-left `shape_HxW` of the image: rows nearest the info bar go first, and the scan's origin stays."""
  height, width = shape_HxW
  return pixels_HxW if pixels_HxW.shape == (height, width) else pixels_HxW[:height, :width].copy()
