"""Reading a new image exactly as the model's training images were read and standardised."""
import numpy as np

from copper_jax.data import folder, prepare
from copper_jax.errors import UserError


class Reader:
  """Reads and standardises an image exactly as the model's training images were read and standardised."""

  def __init__(self, config, summary: prepare.DataSummary):
    self.mode = config.data.standardise
    self.crop_bottom = config.data.crop_bottom
    self.mean, self.std = summary.mean, summary.std
    self.dtype = summary.dtype

  def read(self, path: str) -> np.ndarray:
    """(H, W) pixels in the file's native units, info bar kept; raises UserError naming the file."""
    image = folder.read_image(path)
    if self.mode == "dataset" and image.dtype != self.dtype:
      # The training mean and std are in the training images' units; another bit depth would be misread.
      raise UserError(f"{path}: {image.dtype} pixels, but the model was trained on {self.dtype} images "
                      f"standardised by the training set; convert the image to {self.dtype}")
    if self.crop_bottom >= image.shape[0]:
      raise UserError(f"{path}: {image.shape[0]} rows, not more than the info bar crop_bottom={self.crop_bottom}")
    return image

  def standardise(self, pixels_HxW: np.ndarray) -> np.ndarray:
    """float32 surface (info bar cropped) standardised as in training."""
    surface = pixels_HxW[:pixels_HxW.shape[0] - self.crop_bottom]
    if self.mode == "image":
      return folder.standardise_pixels(surface, surface.mean(dtype=np.float64), surface.std(dtype=np.float64))
    return folder.standardise_pixels(surface, self.mean, self.std)


def check_size(path: str, pixels_HxW: np.ndarray, crop_bottom: int, multiple: int, why: str) -> None:
  """UserError naming `path` when its surface (info bar cropped) is smaller than `multiple` pixels on a side: the
  net's pooling would leave nothing of it (`why` says which net)."""
  height, width = pixels_HxW.shape[0] - crop_bottom, pixels_HxW.shape[1]
  if min(height, width) < multiple:
    raise UserError(f"{path}: its surface is {height} x {width} pixels, but {why} needs at least {multiple} x "
                    f"{multiple}; use a larger image")
