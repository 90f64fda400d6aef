"""Pixels for people: display gray levels, mask and CAM overlays, PNG bytes. numpy in, uint8 out; no model."""
import imageio.v3 as iio
import numpy as np

# Mask overlay: smoothed pixels are tinted towards this colour, up to this weight.
TINT_RGB = np.array([255.0, 96.0, 0.0], np.float32)
TINT_WEIGHT = 0.55


def gray_levels(pixels_HxW: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """uint8 (H, W): pixel values lo..hi stretched to black..white, any bit depth."""
  scaled = (pixels_HxW.astype(np.float32) - lo) / max(hi - lo, 1e-6)
  return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def display_gray(pixels_HxW: np.ndarray) -> np.ndarray:
  """uint8 (H, W) for viewing one image: its 0.5 and 99.5 percentiles stretched to black and white."""
  lo, hi = np.percentile(pixels_HxW, [0.5, 99.5])
  return gray_levels(pixels_HxW, lo, hi)


def mask_overlay(gray_HxW: np.ndarray, mask_HxW: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): the gray image tinted orange where the mask says smoothed, in proportion to the mask."""
  weight = (TINT_WEIGHT * mask_HxW)[..., None]
  rgb = (1.0 - weight) * gray_HxW[..., None].astype(np.float32) + weight * TINT_RGB
  return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def cam_overlay(gray_HxW: np.ndarray, cam_HxW: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3): the gray image under the class map on a symmetric red (for) / blue (against) scale."""
  from matplotlib import colormaps
  limit = max(float(np.abs(cam_HxW).max()), 1e-6)
  colour = colormaps["RdBu_r"]((cam_HxW / limit + 1.0) / 2.0)[..., :3] * 255.0
  rgb = 0.45 * gray_HxW[..., None].astype(np.float32) + 0.55 * colour
  return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
  return iio.imwrite("<bytes>", pixels, extension=".png")
