"""Whole-image masks of any size from tiles: exact, because each tile keeps only pixels its receptive field covers."""
import numpy as np

from copper_jax.errors import ConfigError
from copper_jax.models import analysis


def tile_plan(size: int, tile: int, margin: int):
  """[(start, keep_from, keep_to)] along one axis of `size` pixels: tiles of `tile` pixels overlapping by at least
  2 * `margin`, each keeping pixels at least `margin` from its inner borders, together keeping every pixel once.

  When `size`, `tile` and `margin` are multiples of the pooling stride, so is every start.
  """
  if size <= tile:
    return [(0, 0, size)]
  step = tile - 2 * margin
  plan, kept_to = [], 0
  for s in list(range(0, size - tile, step)) + [size - tile]:
    # The last tile is flush with the border and may overlap its neighbour more; it keeps only what is new.
    plan.append((s, kept_to, size if s + tile == size else s + tile - margin))
    kept_to = plan[-1][2]
  return plan


def predict_tiled(predict_fn, image_HxW: np.ndarray, tile: int, margin: int, multiple: int) -> np.ndarray:
  """`predict_fn` ((1, h, w, 1) -> (1, h, w)) over a large image in tiles, equal to one whole-image call.

  The image is first reflect-padded at the bottom and right to a multiple of `multiple` (2^d), as the model
  itself would pad it, so every tile starts on the pooling grid and sees the same pixels as the whole image.
  An output pixel at least `margin` (the receptive field) from a tile's inner border does not see that border,
  so keeping tile centres gives the whole-image values with no blending and no seams. tile=0: one call.
  """
  H, W = image_HxW.shape
  padded = np.pad(image_HxW, ((0, -H % multiple), (0, -W % multiple)), mode="reflect")
  Hp, Wp = padded.shape
  if tile == 0 or (Hp <= tile and Wp <= tile):
    return np.asarray(predict_fn(padded[None, ..., None])[0])[:H, :W]
  out = np.empty((Hp, Wp), np.float32)
  for r0, keep_r0, keep_r1 in tile_plan(Hp, tile, margin):
    for c0, keep_c0, keep_c1 in tile_plan(Wp, tile, margin):
      piece = padded[r0:r0 + min(tile, Hp), c0:c0 + min(tile, Wp)]
      mask = np.asarray(predict_fn(piece[None, ..., None])[0])
      out[keep_r0:keep_r1, keep_c0:keep_c1] = mask[keep_r0 - r0:keep_r1 - r0, keep_c0 - c0:keep_c1 - c0]
  return out[:H, :W]


def tile_geometry(model_config, tile: int):
  """(tile, margin, multiple) in pixels for a segmentation model: the margin is its receptive field, both
  rounded to the pooling grid. tile=0 predicts whole images."""
  multiple = 2 ** model_config.d
  margin = -(-analysis.receptive_field("segmentation", model_config.c, model_config.d, model_config.n,
                                       model_config.N) // multiple) * multiple
  if tile < 0:
    raise ConfigError(f"tile={tile}: must be 0 (whole images) or a tile side in pixels")
  if model_config.norm == "group":
    return 0, margin, multiple  # GroupNorm statistics span the whole input, so tiles would change the mask
  tile = tile // multiple * multiple
  if tile and tile <= 2 * margin:
    raise ConfigError(f"tile={tile}: must exceed twice the receptive field ({2 * margin} pixels) so tile centres "
                      f"are exact; use at least {2 * margin + multiple}, or 0 for whole images")
  return tile, margin, multiple
