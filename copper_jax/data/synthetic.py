"""Synthetic SEM images of roughened copper whose smoothed-area fraction per stress time is known exactly.

Each image renders a height field: etched nodular relief (rough, high adhesion) and the same relief attenuated and
low-passed (smoothed, low adhesion) inside random blobs. Per label the blobs cover exactly `round(f * pixels)`
surface pixels, with `f = f_true(tau)` and `tau = stress_time / max stress_time`. The renderer follows the
secondary-electron physics in docs/science.md: yield `sqrt(1 + |grad h|^2)` (1/cos of the tilt, also the local area
factor in Sdr), a brighter edge on convex curvature, Gaussian beam blur and Poisson shot noise.

The two regions are mixed through their slopes and curvatures, never their heights, so no step (bright rim) marks a
border, and the mean yield is equalised at every blend level, so only texture tells smoothed from rough.

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
)
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


def _plan(preset: str, f_true: str, seed: int, confounded: bool, overrides: dict) -> dict:
  """The manifest of a synthetic set, computed before any image is rendered."""
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed={seed!r} must be a non-negative integer")
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
    labels.append(dict(
        stress_time=float(t), folder=_folder(t), tau=float(tau[label]), smoothed_fraction=float(fraction),
        blur_sigma=float(sigma), brightness=float(brightness[label]),
        images=[dict(name=f"img_{i:03d}.png", smoothed_pixels=n, fraction=n / pixels)
                for i, n in enumerate(smoothed)]))
  return dict(
      generator="copper_jax.data.synthetic",
      version=copper_jax.__version__,
      preset=preset,
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


def _render_and_write(out_dir: str, seed: int, label: int, index: int, folder: str, name: str,
                      fraction: float, render: dict) -> None:
  """Render image `index` of `label` from its own seed, so no image depends on the order or the worker."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, label, index]))
  image, mask = render_surface(rng, fraction, **render)
  _write_regenerable(os.path.join(out_dir, "images", folder, name), iio.imwrite("<bytes>", image, extension=".png"))
  _write_regenerable(os.path.join(out_dir, "masks", folder, name), iio.imwrite("<bytes>", mask * np.uint8(255),
                                                                          extension=".png"))


def generate(out_dir: str, preset: str = "demo", f_true: str = "sqrt", seed: int = 0, confounded: bool = False,
             workers: int | None = None, **overrides) -> dict:
  """Write a synthetic SEM set to `out_dir` and return its manifest.

  `overrides` replace preset settings (see PRESETS). `workers` threads render in parallel (None: one per available
  core); the bytes written do not depend on it. A folder already holding the same manifest is completed, not
  rewritten; one holding anything else is refused, and nothing is ever deleted.
  """
  if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
    raise ConfigError(f"workers={workers!r} must be a positive integer or None (one per core)")
  manifest = _plan(preset, f_true, seed, confounded, overrides)
  canonical = json.loads(json.dumps(manifest))
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ConfigError(f"out_dir {out_dir} is a file; pass a new or empty folder")
  fix = "it is not a synthetic manifest; pass a new or empty folder"
  existing = (workdir.read_json(os.path.join(out_dir, _MANIFEST), fix=fix)
              or workdir.read_json(os.path.join(out_dir, _PARTIAL), fix=fix) if os.path.isdir(out_dir) else None)
  if existing is not None and existing != canonical:
    differs = ", ".join(key for key in {**canonical, **existing} if existing.get(key) != canonical.get(key))
    raise ConfigError(f"out_dir {out_dir} holds a different synthetic set (its manifest differs in {differs}); "
                      "pass a new folder or delete that one yourself")
  if existing is None and os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ConfigError(f"out_dir {out_dir} is not empty and holds no synthetic manifest.json; pass a new or "
                      "empty folder")

  settings = manifest["settings"]
  jobs = []
  for label, entry in enumerate(manifest["labels"]):
    for kind in ("images", "masks"):
      os.makedirs(os.path.join(out_dir, kind, entry["folder"]), exist_ok=True)
    render = {key: settings[key] for key in _RENDER_DEFAULTS}
    render.update(height=settings["height"], width=settings["width"], blur_sigma=entry["blur_sigma"],
                  brightness=entry["brightness"])
    for index, image in enumerate(entry["images"]):
      done = all(os.path.exists(os.path.join(out_dir, kind, entry["folder"], image["name"]))
                 for kind in ("images", "masks"))
      if not done:
        jobs.append((out_dir, manifest["seed"], label, index, entry["folder"], image["name"],
                     image["fraction"], render))
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
