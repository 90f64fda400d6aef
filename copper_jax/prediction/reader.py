"""Reading a new image exactly as the model's training images were read and standardised."""
import numpy as np

from copper_jax.data import folder, prepare, sem_metadata
from copper_jax.errors import UserError


class Reader:
  """Reads and standardises an image exactly as the model's training images were read and standardised."""

  def __init__(self, config, summary: prepare.DataSummary):
    self.mode = config.data.standardise
    self.page = config.data.page
    self.pixel_size_nm = config.data.pixel_size_nm
    self.crop_setting = config.data.crop_bottom
    # A per-file crop ("auto") or resampling happens in `read`, as in training: what it returns is the surface.
    self.prepares = self.crop_setting == folder.AUTO_CROP or bool(self.pixel_size_nm)
    self.crop_bottom = 0 if self.prepares else self.crop_setting
    self.mean, self.std = summary.mean, summary.std
    self.dtype = summary.dtype

  def read(self, path: str) -> np.ndarray:
    """(H, W) pixels in the file's native units, info bar kept (cut, and resampled, with crop_bottom="auto" or
    data.pixel_size_nm); raises UserError naming the file."""
    image = folder.read_image(path, page=self.page)
    if self.mode == "dataset" and image.dtype != self.dtype:
      # The training mean and std are in the training images' units; another bit depth would be misread.
      raise UserError(f"{path}: {image.dtype} pixels, but the model was trained on {self.dtype} images "
                      f"standardised by the training set; convert the image to {self.dtype}")
    if self.prepares:
      meta = sem_metadata.read_sem_metadata(path, *image.shape)
      image, _ = folder.prepare_surface(path, image, meta, self.crop_setting, self.pixel_size_nm)
    if self.crop_bottom >= image.shape[0]:
      raise UserError(f"{path}: {image.shape[0]} rows, not more than the info bar crop_bottom={self.crop_bottom}")
    return image

  def metadata(self, path: str, height: int) -> sem_metadata.SEMMetadata:
    """The file's metadata as it applies to the image `read` returned (`height` rows)."""
    if not self.prepares:
      return sem_metadata.read_sem_metadata(path, height)
    return folder.surface_metadata(sem_metadata.read_sem_metadata(path), self.crop_setting, self.pixel_size_nm)

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
