"""Synthetic SEM images of roughened copper whose smoothed-area fraction per stress time is known exactly.

Each image renders a height field: etched nodular relief (rough, high adhesion) and the same relief attenuated and
low-passed (smoothed, low adhesion) inside random blobs. Per label the blobs cover exactly `round(f * pixels)`
surface pixels, with `f = f_true(tau)` and `tau = stress_time / max stress_time`. The renderer follows the
secondary-electron physics in docs/science.md: yield `sqrt(1 + |grad h|^2)` (1/cos of the tilt, also the local area
factor in Sdr), a brighter edge on convex curvature, Gaussian beam blur and Poisson shot noise.

The two regions are mixed through their slopes and curvatures, never their heights, so no step (bright rim) marks a
border, and the mean yield is equalised at every blend level, so only texture tells smoothed from rough.

That copper surface differs between the regions in every cue at once; `texture` picks another surface model
(TEXTURES) in which they differ in one cue only (frequency, contrast), in structure larger than the default
receptive field (facets), or copper varied per image (varied). The masks are exact for every texture.

Layout written by `generate(out_dir, ...)`:
  out_dir/images/<stress_time>/<name>.png   8-bit grayscale SEM image
  out_dir/masks/<stress_time>/<name>.png    8-bit, 0 = rough, 255 = smoothed (loaders read > 0 as smoothed)
  out_dir/manifest.json                     f_true, stress times, per-image fractions, settings, seed, version
An optional info bar (dark strip with text-like marks) fills the bottom `info_bar` rows of an image; its mask rows
are 0 and fractions count surface rows only, so after `crop_bottom=info_bar` the fraction is exact.
"""
import concurrent.futures
import inspect
import json
import math
import os
from typing import Callable

import imageio.v3 as iio
import numpy as np

import copper_jax
from copper_jax.errors import ConfigError
from copper_jax.store import workdir

# Monotone shapes with f(0)=0 and f(1)=1; `f_true_values` scales them to [f_min, f_max].
F_TRUE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda tau: tau,
    "sqrt": np.sqrt,
    "square": np.square,
    "saturating": lambda tau: -np.expm1(-3.0 * tau) / -np.expm1(-3.0),
    "sigmoid": lambda tau: ((1 / (1 + np.exp(-10 * (tau - 0.5))) - 1 / (1 + np.exp(5.0)))
                            / (1 / (1 + np.exp(-5.0)) - 1 / (1 + np.exp(5.0)))),
    "log": lambda tau: np.log1p(9.0 * tau) / np.log(10.0),
}


def f_true_values(name: str, tau, f_min: float = 0.05, f_max: float = 0.95) -> np.ndarray:
  """Smoothed-area fraction at normalised stress time `tau` in [0, 1] for the named family."""
  if name not in F_TRUE:
    raise ConfigError(f"f_true={name!r} is unknown; use one of {', '.join(F_TRUE)}")
  if not 0.0 <= f_min <= f_max <= 1.0:
    raise ConfigError(f"f_min={f_min}, f_max={f_max} must satisfy 0 <= f_min <= f_max <= 1")
  tau = np.asarray(tau, dtype=np.float64)
  if np.any((tau < 0) | (tau > 1)):
    raise ConfigError(f"tau={tau} must lie in [0, 1]; divide stress times by the largest one")
  return f_min + (f_max - f_min) * np.clip(F_TRUE[name](tau), 0.0, 1.0)


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
  """Periodic Gaussian blur of a 2-D array by `sigma` pixels through the FFT."""
  if sigma <= 0:
    return x
  fy = np.fft.fftfreq(x.shape[0])[:, None]
  fx = np.fft.rfftfreq(x.shape[1])[None, :]
  transfer = np.exp(-2 * np.pi**2 * sigma**2 * (fy**2 + fx**2))
  return np.fft.irfft2(np.fft.rfft2(x) * transfer, s=x.shape)


def _fft_size(n: int) -> int:
  """Smallest 2^a 3^b 5^c >= n: an array length the FFT handles fast (a prime length can be 50x slower)."""
  best = 2 * n
  for p5 in (5**k for k in range(int(math.log(2 * n, 5)) + 1)):
    for p3 in (p5 * 3**k for k in range(int(math.log(2 * n, 3)) + 1)):
      size = p3 * 2**max(0, math.ceil(math.log2(n / p3)))
      best = min(best, size) if size >= n else best
  return best


def _nodules(rng: np.random.Generator, height: int, width: int, spacing: float) -> np.ndarray:
  """Union of truncated spheres, one per jittered grid cell of `spacing` px: etched nodular relief in px."""
  ny, nx = int(height // spacing) + 3, int(width // spacing) + 3
  centre_y = (np.arange(ny)[:, None] - 1 + rng.random((ny, nx))) * spacing
  centre_x = (np.arange(nx)[None, :] - 1 + rng.random((ny, nx))) * spacing
  radius = spacing * rng.uniform(0.55, 0.95, (ny, nx))
  # A sphere of radius r/0.92 cut where its rim is r wide: rim slope ~2.4, as on real nodules seen in SEM.
  sphere2 = (radius / 0.92)**2
  cells = np.stack([centre_y, centre_x, sphere2, np.sqrt(sphere2 - radius**2)], -1).astype(np.float32)
  y = np.arange(height, dtype=np.float32)[:, None]
  x = np.arange(width, dtype=np.float32)[None, :]
  cell_y = (np.arange(height) // spacing).astype(int)[:, None] + 1
  cell_x = (np.arange(width) // spacing).astype(int)[None, :] + 1
  relief = np.zeros((height, width), np.float32)
  # Radii stay below one cell, so only the 3x3 neighbouring cells can reach a pixel.
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      cy, cx, s2, base = np.moveaxis(cells[cell_y + dy, cell_x + dx], -1, 0)
      cap = np.sqrt(np.maximum(s2 - (y - cy)**2 - (x - cx)**2, 0.0)) - base
      np.maximum(relief, cap, out=relief)
  return relief.astype(np.float64)


def _smoothed_pixels(fraction: float, pixels: int) -> int:
  """Pixels a mask of area `fraction` covers: round half up, the same for the masks and the manifest."""
  return int(math.floor(fraction * pixels + 0.5))


def _exact_fraction_mask(field: np.ndarray, fraction: float) -> np.ndarray:
  """1 on the round(fraction * size) largest values of `field`: the area fraction is exact to one pixel."""
  order = np.argsort(-field, axis=None, kind="stable")
  mask = np.zeros(field.size, np.uint8)
  mask[order[:_smoothed_pixels(fraction, field.size)]] = 1
  return mask.reshape(field.shape)


def _local(h: np.ndarray, scale: float) -> tuple[np.ndarray, ...]:
  """Slopes d/dy, d/dx, Laplacian (1/px) and depth below the local mean (px) of a height field in px."""
  gy, gx = np.gradient(h)
  lap = (np.roll(h, 1, 0) + np.roll(h, -1, 0) + np.roll(h, 1, 1) + np.roll(h, -1, 1) - 4 * h)
  return gy, gx, lap, _gaussian_blur(h, scale) - h


def _info_bar(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
  """Dark SEM info bar with bright text-like glyph runs and a scale bar, uint8 (rows, width)."""
  bar = np.full((rows, width), 18, np.uint8)
  glyph_h = max(1, rows // 3)
  top = (rows - glyph_h) // 2
  x = max(2, width // 40)
  while x < width * 0.8:
    for _ in range(int(rng.integers(3, 9))):  # a "word" of glyphs
      glyph_w = max(1, int(glyph_h * rng.uniform(0.4, 0.8)))
      bar[top:top + glyph_h, x:x + glyph_w] = 230
      x += glyph_w + max(1, glyph_h // 4)
    x += 3 * glyph_h
  scale = max(2, width // 10)
  bar[top + glyph_h // 2:top + glyph_h // 2 + max(1, rows // 12), width - scale - 4:width - 4] = 240
  return bar


def render_surface(rng: np.random.Generator, fraction: float, height: int, width: int, *,
                   blur_sigma: float = 0.7, noise: float = 0.12, shading: float = 0.15, info_bar: int = 0,
                   nodule_px: float = 8.0, blob_scale: float = 0.06, smooth_keep: float = 0.3,
                   smooth_sigma: float = 0.6, border_sigma: float = 0.3, edge: float = 1.0,
                   undulation_px: float = 3.0, crevice: float = 3.0, detector: float = 0.3,
                   brightness: float = 110.0, contrast: float = 110.0) -> tuple[np.ndarray, np.ndarray]:
  """One SEM image of etched copper with smoothed blobs covering exactly `fraction` of the surface rows.

  Lengths are in pixels. Relief: nodules spaced `nodule_px` on an undulation of rms `undulation_px`; smoothed
  regions keep `smooth_keep` of it, low-passed over `smooth_sigma` nodule spacings, and blend into rough ones over
  `border_sigma` spacings. Blobs have a correlation sigma of `blob_scale` times the shorter side. Yield terms:
  `edge` (per 1/px of convex curvature), `crevice` (darkening per nodule spacing of depth), `detector` (side
  detector, <= 1). Imaging: `blur_sigma` beam blur, relative shot noise `noise` at mean yield, `shading` relative
  brightness change across the image in a random direction, gray = brightness + contrast * (yield/mean - 1).

  Returns (image, mask): uint8 (height, width) gray levels, and uint8 (height, width) with 1 = smoothed; the
  bottom `info_bar` rows hold the info bar in the image and 0 in the mask.
  """
  rows = height - info_bar
  # Relief on a margin so the FFT filters' wrap-around stays outside the image.
  pad = int(math.ceil(3 * max(smooth_sigma * nodule_px, nodule_px, blur_sigma))) + 2
  shape = (_fft_size(rows + 2 * pad), _fft_size(width + 2 * pad))
  inside = (slice(pad, pad + rows), slice(pad, pad + width))
  # Grain-scale undulation carries the nodules, so smoothed regions keep a faint relief of their own.
  undulation = _gaussian_blur(rng.standard_normal(shape), 3 * nodule_px)
  undulation *= undulation_px / undulation.std()
  relief = _nodules(rng, *shape, nodule_px) + 0.45 * _nodules(rng, *shape, nodule_px / 2.5)
  relief = _gaussian_blur(relief, 0.5) + undulation  # no sub-pixel creases
  rough = _local(relief, nodule_px)
  smooth = _local(smooth_keep * _gaussian_blur(relief, smooth_sigma * nodule_px), nodule_px)

  blobs = _gaussian_blur(rng.standard_normal(shape), blob_scale * min(rows, width))
  mask = _exact_fraction_mask(blobs[inside], fraction)
  margins = ((pad, shape[0] - rows - pad), (pad, shape[1] - width - pad))
  weight = np.pad(mask.astype(np.float64), margins, mode="symmetric")
  weight = np.clip(_gaussian_blur(weight, border_sigma * nodule_px), 0.0, 1.0)
  gy, gx, lap, depth = (weight * s + (1 - weight) * r for s, r in zip(smooth, rough))
  # Secondary-electron yield: 1/cos(tilt), the edge effect on convex (negative-Laplacian) relief, fewer electrons
  # escaping from crevices, and more from slopes facing the side detector (upper left). detector <= 1 keeps it > 0.
  sey = ((np.sqrt(1 + gy**2 + gx**2) + edge * np.maximum(-lap, 0.0) + detector * (gy + gx) / np.sqrt(2))
         * np.exp(-crevice * np.maximum(depth, 0.0) / nodule_px))
  # Equal mean yield at every blend weight (binned), so neither region nor border shows in brightness.
  bins = np.minimum((weight * 32).astype(int), 32)
  level = np.bincount(bins.ravel(), sey.ravel(), 33) / np.maximum(np.bincount(bins.ravel(), minlength=33), 1)
  sey = _gaussian_blur(sey / level[bins], blur_sigma)[inside]
  return _expose(rng, sey, mask, shading=shading, noise=noise, info_bar=info_bar, brightness=brightness,
                 contrast=contrast)


def _expose(rng, sey, mask, *, shading, noise, info_bar, brightness, contrast) -> tuple[np.ndarray, np.ndarray]:
  """The detector's image of a yield map of mean ~1 (rows, width): shading ramp, shot noise, gray levels, info bar;
  returns (image, mask) as `render_surface` does."""
  rows, width = sey.shape
  theta = rng.uniform(0, 2 * np.pi)  # detector shading: a brightness ramp across the field of view
  ramp = np.linspace(-0.5, 0.5, rows)[:, None] * np.sin(theta) + np.linspace(-0.5, 0.5, width) * np.cos(theta)
  signal = sey * (1 + shading * ramp)
  if noise > 0:
    electrons = 1.0 / noise**2
    signal = rng.poisson(signal * electrons) / electrons
  image = np.clip(np.rint(brightness + contrast * (signal - 1.0)), 0, 255).astype(np.uint8)
  if info_bar:
    image = np.concatenate([image, _info_bar(rng, info_bar, width)])
    mask = np.concatenate([mask, np.zeros((info_bar, width), np.uint8)])
  return image, mask


def _canvas(rng, fraction, rows, width, pad, blob_scale, border_px):
  """Padded canvas shape, the slice of the image inside it, the exact mask (rows, width) and the blend weight of
  smoothed surface on the canvas (the mask blurred over `border_px`)."""
  shape = (_fft_size(rows + 2 * pad), _fft_size(width + 2 * pad))
  inside = (slice(pad, pad + rows), slice(pad, pad + width))
  blobs = _gaussian_blur(rng.standard_normal(shape), blob_scale * min(rows, width))
  mask = _exact_fraction_mask(blobs[inside], fraction)
  margins = ((pad, shape[0] - rows - pad), (pad, shape[1] - width - pad))
  weight = np.pad(mask.astype(np.float64), margins, mode="symmetric")
  return shape, inside, mask, np.clip(_gaussian_blur(weight, border_px), 0.0, 1.0)


def _equalise_by_weight(sey, weight):
  """The yield divided by its mean at each blend level (binned), so neither region nor border shows in brightness."""
  bins = np.minimum((weight * 32).astype(int), 32)
  level = np.bincount(bins.ravel(), sey.ravel(), 33) / np.maximum(np.bincount(bins.ravel(), minlength=33), 1)
  return sey / level[bins]


def _fractal(rng, shape, largest_px: float) -> np.ndarray:
  """Zero-mean, unit-std random field with amplitude spectrum ~ 1/sqrt(k) (flat up to 1/largest_px): a statistical
  rough surface with detail at every scale down to the pixel."""
  k = np.sqrt(np.fft.fftfreq(shape[0])[:, None]**2 + np.fft.rfftfreq(shape[1])[None, :]**2)
  field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) / np.sqrt(np.maximum(k, 1.0 / largest_px)), s=shape)
  return (field - field.mean()) / field.std()


def _locally_standardised(field, window_px: float) -> np.ndarray:
  """The field's deviation from its local mean, divided by its local rms, both over a Gaussian window: the same
  local contrast everywhere at that scale, whatever the spectrum below it."""
  deviation = field - _gaussian_blur(field, window_px)
  return deviation / np.sqrt(_gaussian_blur(deviation**2, window_px) + 1e-6)


def render_statistical(rng: np.random.Generator, fraction: float, height: int, width: int, *, texture: str,
                       blur_sigma: float, noise: float, shading: float, info_bar: int, blob_scale: float,
                       border_px: float, brightness: float, contrast: float, amplitude: float, lowpass_px: float,
                       contrast_ratio: float, grain_px: float) -> tuple[np.ndarray, np.ndarray]:
  """A rough and a smoothed surface that differ in one cue only, drawn from one statistical field.

  Both start from the same fractal field (`_fractal`, features up to `grain_px`). texture="frequency": the smoothed
  field is that field low-passed over `lowpass_px`, and both are standardised over a window of 3 * lowpass_px, so
  the local contrast and mean match and only the spatial frequencies differ. texture="contrast": the smoothed field
  is the rough one times `contrast_ratio`: the same spectrum, a lower contrast. The field is blurred by the beam
  (`blur_sigma`) first; yield = 1 + amplitude * field, the two blended over `border_px`, then imaged as
  `render_surface` does. Returns (image, mask) as it does.
  """
  rows = height - info_bar
  pad = int(math.ceil(3 * max(grain_px, lowpass_px * 2, blur_sigma, border_px))) + 2
  shape, inside, mask, weight = _canvas(rng, fraction, rows, width, pad, blob_scale, border_px)
  # The beam blur acts on the field before the local contrast is matched, so it cannot lower one region's contrast.
  field = _gaussian_blur(_fractal(rng, shape, grain_px), blur_sigma)
  if texture == "frequency":
    rough = _locally_standardised(field, 3 * lowpass_px)
    smooth = _locally_standardised(_gaussian_blur(field, lowpass_px), 3 * lowpass_px)
  elif texture == "contrast":
    rough, smooth = field, contrast_ratio * field
  else:
    raise ConfigError(f"texture={texture!r} is not a statistical texture; use frequency or contrast")
  sey = 1.0 + amplitude * (weight * smooth + (1 - weight) * rough)
  sey = np.maximum(sey, 0.0)[inside]
  return _expose(rng, sey, mask, shading=shading, noise=noise, info_bar=info_bar, brightness=brightness,
                 contrast=contrast)


def _voronoi(rng, shape, cell_px: float):
  """Grains on a jittered grid of `cell_px`: (index of the nearest grain centre, distance to the grain boundary in
  px (half the gap between the nearest and second-nearest centre), number of grains)."""
  ny, nx = int(shape[0] // cell_px) + 5, int(shape[1] // cell_px) + 5
  centre_y = (np.arange(ny)[:, None] - 2 + rng.random((ny, nx))) * cell_px
  centre_x = (np.arange(nx)[None, :] - 2 + rng.random((ny, nx))) * cell_px
  y = np.arange(shape[0], dtype=np.float64)[:, None]
  x = np.arange(shape[1], dtype=np.float64)[None, :]
  cell_y = (np.arange(shape[0]) // cell_px).astype(int)[:, None] + 2
  cell_x = (np.arange(shape[1]) // cell_px).astype(int)[None, :] + 2
  d1 = np.full(shape, np.inf)
  d2 = np.full(shape, np.inf)
  nearest = np.zeros(shape, int)
  # A jittered centre lies within its own cell, so the two nearest are among the 5x5 neighbouring cells.
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      iy, ix = np.broadcast_arrays(cell_y + dy, cell_x + dx)
      dist = np.hypot(y - centre_y[iy, ix], x - centre_x[iy, ix])
      closer = dist < d1
      d2 = np.where(closer, d1, np.minimum(d2, dist))
      nearest = np.where(closer, iy * nx + ix, nearest)
      d1 = np.where(closer, dist, d1)
  return nearest, 0.5 * (d2 - d1), ny * nx


def render_facets(rng: np.random.Generator, fraction: float, height: int, width: int, *, blur_sigma: float,
                  noise: float, shading: float, info_bar: int, blob_scale: float, border_px: float,
                  brightness: float, contrast: float, facet_px: float, facet_slope: float, ridge_px: float,
                  edge: float, detector: float) -> tuple[np.ndarray, np.ndarray]:
  """Rough surface of flat crystal facets `facet_px` across (Voronoi grains), each a plane of random slope (rms
  `facet_slope`) shaded by its tilt as secondary-electron yield is (1/cos, side `detector`), with bright ridges
  (`edge`) `ridge_px` wide where facets meet. Inside a facet the surface is flat, so a window smaller than a facet
  sees only a uniform gray. The smoothed surface is a gentle undulation of the same mean yield. Returns (image,
  mask) as `render_surface` does."""
  rows = height - info_bar
  pad = int(math.ceil(max(facet_px, 3 * blur_sigma, 3 * border_px))) + 2
  shape, inside, mask, weight = _canvas(rng, fraction, rows, width, pad, blob_scale, border_px)
  nearest, boundary_px, grains = _voronoi(rng, shape, facet_px)
  slope_y, slope_x = facet_slope * rng.standard_normal((2, grains))
  gy, gx = slope_y[nearest], slope_x[nearest]
  rough = (np.sqrt(1 + gy**2 + gx**2) + detector * (gy + gx) / np.sqrt(2)
           + edge * np.exp(-boundary_px / ridge_px))
  undulation = _gaussian_blur(rng.standard_normal(shape), facet_px / 4)
  uy, ux = np.gradient(undulation * (0.3 * facet_slope / max(np.gradient(undulation)[0].std(), 1e-12)))
  smooth = np.sqrt(1 + uy**2 + ux**2) + detector * (uy + ux) / np.sqrt(2)
  sey = _equalise_by_weight(weight * smooth + (1 - weight) * rough, weight)
  sey = _gaussian_blur(sey, blur_sigma)[inside]
  return _expose(rng, sey, mask, shading=shading, noise=noise, info_bar=info_bar, brightness=brightness,
                 contrast=contrast)


# Preset = rendering defaults of `render_surface` plus the set's shape. Lengths in pixels, stress times in the
# label's unit, `noise` = relative shot noise at mean brightness.
_RENDER_DEFAULTS = {name: p.default for name, p in inspect.signature(render_surface).parameters.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY}
_COMMON = dict(
    _RENDER_DEFAULTS,
    time_step=2.0,            # stress time between labels; folders are 0, 2, 4, ...
    f_min=0.05,               # smoothed fraction at tau=0 ...
    f_max=0.95,               # ... and at tau=1, so every image holds both classes
    confounded_fraction=0.5,  # confounded=True: the same smoothed fraction for every label ...
    confounded_blur=1.5,      # ... and extra beam blur (px) growing linearly to this value at tau=1
    fraction_jitter=0.0,      # sd of each image's smoothed fraction around its label's f(t): fields of view differ
    drift_brightness=0.0,     # relative brightness change growing linearly to this value at tau=1 (a session
    drift_blur=0.0,           # effect), and extra beam blur (px, defocus) growing the same way, on top of f(t)
    # texture "frequency" and "contrast" (render_statistical): one fractal field, features up to grain_px
    amplitude=0.35,           # rms of the relative yield on rough surface
    grain_px=16.0,
    lowpass_px=1.5,           # frequency: the smoothed field is the rough one low-passed over this sigma
    contrast_ratio=0.45,      # contrast: the smoothed field is the rough one times this
    # texture "facets" (render_facets): flat grains 2-3x the demo net's 24 px receptive field
    facet_px=56.0,
    facet_slope=0.4,          # rms slope of a facet
    ridge_px=1.5,             # width of the bright ridge where facets meet
    # texture "varied": copper whose nodule spacing and shot noise are each scaled per image by a log-uniform factor
    # in [1/v, v] (magnification, grain size, dwell time) and whose beam blur moves by up to +-vary_blur px
    vary_scale=1.6,
    vary_noise=2.0,
    vary_blur=0.5,
)
# Surface models. copper: nodular relief, smoothed where flattened and low-passed (every cue differs, as on real
# copper). The others differ in one cue only, so no single cue carries them all: frequency (same material, high
# frequencies removed), facets (rough structure larger than the default receptive field), contrast (same spectrum,
# lower contrast), varied (copper with per-image grain size, magnification, noise and blur).
TEXTURES = ("copper", "frequency", "facets", "contrast", "varied")
PRESETS: dict[str, dict] = {
    "tiny": dict(_COMMON, num_labels=4, images_per_label=6, height=64, width=64, nodule_px=5.0, blob_scale=0.12),
    "demo": dict(_COMMON, num_labels=16, images_per_label=12, height=256, width=256),
    "paper": dict(_COMMON, num_labels=16, images_per_label=50, height=960, width=1280, nodule_px=16.0,
                  noise=0.1),
}


_INT_KEYS = ("num_labels", "images_per_label", "height", "width", "info_bar")
_MANIFEST = "manifest.json"
_PARTIAL = ".manifest.partial.json"  # present while a set is being written; lets an interrupted run resume


def _settings(preset: str, overrides: dict) -> dict:
  """The preset with `overrides` applied and checked."""
  if preset not in PRESETS:
    raise ConfigError(f"preset={preset!r} is unknown; use one of {', '.join(PRESETS)}")
  settings = dict(PRESETS[preset])
  unknown = sorted(set(overrides) - set(settings))
  if unknown:
    raise ConfigError(f"synthetic setting(s) {', '.join(unknown)} unknown; valid: {', '.join(sorted(settings))}")
  for key, value in overrides.items():
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
      raise ConfigError(f"synthetic setting {key}={value!r} must be a number")
    if key in _INT_KEYS and value != int(value):
      raise ConfigError(f"synthetic setting {key}={value!r} must be a whole number")
    settings[key] = int(value) if key in _INT_KEYS else float(value)
  checks = (
      (settings["num_labels"] >= 2, "num_labels must be at least 2 (tau runs from the first to the last label)"),
      (settings["images_per_label"] >= 1, "images_per_label must be at least 1"),
      (settings["height"] - settings["info_bar"] >= 16 and settings["width"] >= 16,
       "height - info_bar and width must be at least 16 px"),
      (settings["info_bar"] >= 0, "info_bar must be 0 (none) or a number of rows"),
      (settings["time_step"] > 0, "time_step must be positive"),
      (settings["nodule_px"] >= 2, "nodule_px must be at least 2 px"),
      (0 <= settings["shading"] <= 1 and 0 <= settings["detector"] <= 1,
       "shading and detector must lie in [0, 1] (a larger one makes the yield negative)"),
      (0 <= settings["confounded_fraction"] <= 1, "confounded_fraction must lie in [0, 1]"),
      (0 <= settings["fraction_jitter"] <= 0.25, "fraction_jitter must lie in [0, 0.25]"),
      (-0.5 <= settings["drift_brightness"] <= 0.5, "drift_brightness must lie in [-0.5, 0.5]"),
      (min(settings[k] for k in ("amplitude", "grain_px", "lowpass_px", "facet_px", "facet_slope",
                                 "ridge_px")) > 0 and 0 <= settings["contrast_ratio"] <= 1,
       "amplitude, grain_px, lowpass_px, facet_px, facet_slope and ridge_px must be positive and contrast_ratio "
       "in [0, 1]"),
      (settings["vary_scale"] >= 1 and settings["vary_noise"] >= 1 and 0 <= settings["vary_blur"],
       "vary_scale and vary_noise must be at least 1 (a factor range [1/v, v]) and vary_blur not negative"),
      (min(settings[k] for k in ("blur_sigma", "noise", "confounded_blur", "drift_blur", "blob_scale", "smooth_keep",
                                 "smooth_sigma", "border_sigma", "edge", "undulation_px", "crevice")) >= 0,
       "blur_sigma, noise, confounded_blur, blob_scale, smooth_keep, smooth_sigma, border_sigma, edge, "
       "undulation_px and crevice must not be negative"),
  )
  for ok, message in checks:
    if not ok:
      raise ConfigError(f"synthetic settings: {message} (preset {preset!r}, overrides {overrides})")
  return settings


def image_shape(preset: str, **overrides) -> tuple[int, int]:
  """(H, W) in pixels, info bar included, of the images `generate` writes for `preset`; renders nothing, so a
  config can be checked against it before any file is written."""
  settings = _settings(preset, overrides)
  return settings["height"], settings["width"]


def _folder(stress_time: float) -> str:
  """Folder name of a stress time: the plain number, '2' or '2.5'."""
  return np.format_float_positional(stress_time, trim="-")


def check_texture(texture: str) -> None:
  if texture not in TEXTURES:
    raise ConfigError(f"texture={texture!r} is unknown; use one of {', '.join(TEXTURES)}")


def _per_image_variation(settings: dict, seed: int, label: int, count: int, blur_sigma: float) -> list[dict]:
  """texture "varied": each image's own nodule spacing, shot noise and beam blur, from the set's seed alone and
  independent of the label, so they vary within a stress time and carry no cue of it."""
  rng = np.random.default_rng([seed, label, 0x7a7])
  log_scale = np.log(settings["vary_scale"]) * rng.uniform(-1, 1, count)
  log_noise = np.log(settings["vary_noise"]) * rng.uniform(-1, 1, count)
  blur = blur_sigma + settings["vary_blur"] * rng.uniform(-1, 1, count)
  return [dict(nodule_px=float(settings["nodule_px"] * np.exp(s)), noise=float(settings["noise"] * np.exp(n)),
               blur_sigma=float(max(b, 0.0))) for s, n, b in zip(log_scale, log_noise, blur)]


def _plan(preset: str, f_true: str, seed: int, confounded: bool, overrides: dict, texture: str = "copper") -> dict:
  """The manifest of a synthetic set, computed before any image is rendered."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed={seed!r} must be a non-negative integer")
  check_texture(texture)
  settings = _settings(preset, overrides)
  count = settings["num_labels"]
  stress_times = np.round(settings["time_step"] * np.arange(count), 9)
  tau = stress_times / stress_times[-1]
  truth = f_true_values(f_true, tau, settings["f_min"], settings["f_max"])
  if confounded:
    # Negative control: the area never changes, the label rides on the beam blur instead.
    truth = np.full(count, settings["confounded_fraction"])
  blur = settings["blur_sigma"] + (settings["confounded_blur"] * confounded + settings["drift_blur"]) * tau
  brightness = settings["brightness"] * (1.0 + settings["drift_brightness"] * tau)
  rows = settings["height"] - settings["info_bar"]
  pixels = rows * settings["width"]
  labels = []
  for label, (t, fraction, sigma) in enumerate(zip(stress_times, truth, blur)):
    # Each field of view's own fraction scatters around the label's f(t), from the set's seed alone.
    jitter = np.random.default_rng([seed, label, 0x717]).normal(0.0, settings["fraction_jitter"],
                                                                 settings["images_per_label"])
    smoothed = [_smoothed_pixels(float(np.clip(fraction + j, 0.01, 0.99)) if settings["fraction_jitter"] else
                                 float(fraction), pixels) for j in jitter]
    varied = (_per_image_variation(settings, seed, label, len(smoothed), float(sigma)) if texture == "varied"
              else [{}] * len(smoothed))
    labels.append(dict(
        stress_time=float(t), folder=_folder(t), tau=float(tau[label]), smoothed_fraction=float(fraction),
        blur_sigma=float(sigma), brightness=float(brightness[label]),
        images=[dict(name=f"img_{i:03d}.png", smoothed_pixels=n, fraction=n / pixels, **own)
                for i, (n, own) in enumerate(zip(smoothed, varied))]))
  return dict(
      generator="copper_jax.data.synthetic",
      version=copper_jax.__version__,
      preset=preset,
      texture=texture,
      seed=int(seed),
      confounded=bool(confounded),
      f_true="constant" if confounded else f_true,  # the family that generated the masks
      f_true_values=[float(v) for v in truth],        # smoothed fraction per label, in stress-time order
      stress_times=[float(t) for t in stress_times],
      tau=[float(v) for v in tau],
      surface_rows=rows,
      info_bar_rows=settings["info_bar"],
      mask_values="0 = rough, 255 = smoothed (low adhesion); loaders read > 0 as smoothed",
      fraction_of="surface rows only: the bottom info_bar_rows are the SEM info bar, 0 in every mask",
      settings=settings,
      labels=labels,
  )


def _write_regenerable(path: str, data: bytes) -> None:
  # Complete or absent even if the run is killed; no fsync, since a lost file is simply generated again.
  workdir.atomic_write_bytes(path, data, durable=False)


def render_image(rng: np.random.Generator, fraction: float, texture: str, settings: dict):
  """One (image, mask) of the named texture (TEXTURES) from a set's settings, with height, width, blur_sigma and
  brightness (and, for "varied", nodule_px and noise) already those of this image."""
  if texture in ("copper", "varied"):
    return render_surface(rng, fraction, **{key: settings[key] for key in _RENDER_DEFAULTS},
                          height=settings["height"], width=settings["width"])
  shared = {key: settings[key] for key in ("height", "width", "blur_sigma", "noise", "shading", "info_bar",
                                           "blob_scale", "brightness", "contrast")}
  shared["border_px"] = settings["border_sigma"] * settings["nodule_px"]  # the copper border's width in px
  if texture == "facets":
    return render_facets(rng, fraction, **shared, **{key: settings[key] for key in (
        "facet_px", "facet_slope", "ridge_px", "edge", "detector")})
  return render_statistical(rng, fraction, texture=texture, **shared, **{key: settings[key] for key in (
      "amplitude", "lowpass_px", "contrast_ratio", "grain_px")})


def _render_and_write(out_dir: str, seed: int, label: int, index: int, folder: str, name: str,
                      fraction: float, texture: str, render: dict) -> None:
  """Render image `index` of `label` from its own seed, so no image depends on the order or the worker."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, label, index]))
  image, mask = render_image(rng, fraction, texture, render)
  _write_regenerable(os.path.join(out_dir, "images", folder, name), iio.imwrite("<bytes>", image, extension=".png"))
  _write_regenerable(os.path.join(out_dir, "masks", folder, name), iio.imwrite("<bytes>", mask * np.uint8(255),
                                                                          extension=".png"))


def generate(out_dir: str, preset: str = "demo", f_true: str = "sqrt", seed: int = 0, confounded: bool = False,
             workers: int | None = None, texture: str = "copper", **overrides) -> dict:
  """Write a synthetic SEM set to `out_dir` and return its manifest.

  `texture` is the surface model (TEXTURES); `overrides` replace preset settings (see PRESETS). `workers` threads render in parallel (None: one per available
  core); the bytes written do not depend on it. A folder already holding the same manifest is completed, not
  rewritten; one holding anything else is refused, and nothing is ever deleted.
  """
  if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
    raise ConfigError(f"workers={workers!r} must be a positive integer or None (one per core)")
  manifest = _plan(preset, f_true, seed, confounded, overrides, texture)
  canonical = json.loads(json.dumps(manifest))
  out_dir = workdir.check_output_folder(out_dir, "out_dir")
  fix = "it is not a synthetic manifest; pass a new or empty folder"
  existing = (workdir.read_json(os.path.join(out_dir, _MANIFEST), fix=fix)
              or workdir.read_json(os.path.join(out_dir, _PARTIAL), fix=fix) if os.path.isdir(out_dir) else None)
  if existing is not None and existing != canonical:
    differs = ", ".join(key for key in {**canonical, **existing} if existing.get(key) != canonical.get(key))
    raise ConfigError(f"out_dir {out_dir} holds a different synthetic set (its manifest differs in {differs}); "
                      "pass a new folder or delete that one yourself")
  workdir.claim(out_dir, workdir.SYNTHETIC, "out_dir")  # refuses a folder holding anything but this set

  settings = manifest["settings"]
  jobs = []
  for label, entry in enumerate(manifest["labels"]):
    for kind in ("images", "masks"):
      os.makedirs(os.path.join(out_dir, kind, entry["folder"]), exist_ok=True)
    render = dict(settings, blur_sigma=entry["blur_sigma"], brightness=entry["brightness"])
    for index, image in enumerate(entry["images"]):
      done = all(os.path.exists(os.path.join(out_dir, kind, entry["folder"], image["name"]))
                 for kind in ("images", "masks"))
      if not done:
        own = {key: image[key] for key in ("nodule_px", "noise", "blur_sigma") if key in image}
        jobs.append((out_dir, manifest["seed"], label, index, entry["folder"], image["name"],
                     image["fraction"], manifest["texture"], dict(render, **own)))
  if not os.path.exists(os.path.join(out_dir, _MANIFEST)):
    _write_regenerable(os.path.join(out_dir, _PARTIAL), json.dumps(manifest, indent=2).encode())

  # Threads, not processes: numpy's FFTs, ufuncs and sorts release the GIL on arrays this size, and threads need
  # no __main__ guard in the caller nor a fork of a process that may hold JAX's threads.
  with concurrent.futures.ThreadPoolExecutor(workers or len(os.sched_getaffinity(0))) as pool:
    for future in [pool.submit(_render_and_write, *job) for job in jobs]:
      future.result()

  _write_regenerable(os.path.join(out_dir, _MANIFEST), json.dumps(manifest, indent=2).encode())
  if os.path.exists(os.path.join(out_dir, _PARTIAL)):
    os.remove(os.path.join(out_dir, _PARTIAL))  # our own marker, not a user file
  return manifest
