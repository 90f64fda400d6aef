"""Synthetic SEM sets: exact smoothed fractions, determinism, layout, and no brightness cue besides texture."""
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import copper_jax
from copper_jax.data import synthetic
from copper_jax.errors import ConfigError, UserError

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SMALL = dict(num_labels=2, images_per_label=2, height=48, width=48)


def _files(root):
  """Every file under `root` as {relative path: bytes}."""
  found = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = f.read()
  return found


def _box_mean(x, r):
  """Mean over the (2r+1)^2 window, edges replicated."""
  padded = np.pad(x, r, mode="edge")
  h, w = x.shape
  return sum(padded[dy:dy + h, dx:dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)) / (2 * r + 1)**2


def _near(mask, r):
  """Pixels within r (Chebyshev) of a True pixel of `mask`, without wrapping around the image."""
  return _box_mean(mask.astype(float), r) > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny")
  return out, synthetic.generate(out, "tiny", seed=0, info_bar=8)


def test_f_true_families_are_monotone_and_pinned():
  tau = np.linspace(0, 1, 101)
  for name, shape in synthetic.F_TRUE.items():
    values = shape(tau)
    assert np.all(np.diff(values) > 0), name
    np.testing.assert_allclose(values[[0, -1]], [0.0, 1.0], atol=1e-12, err_msg=name)
    np.testing.assert_allclose(synthetic.f_true_values(name, tau[[0, -1]]), [0.05, 0.95], atol=1e-12)
  assert {"linear", "sqrt", "square", "saturating", "sigmoid", "log"} <= set(synthetic.F_TRUE)


def test_manifest_fractions_are_exact_per_image(tiny):
  out, manifest = tiny
  settings = manifest["settings"]
  rows, width = settings["height"] - 8, settings["width"]
  assert manifest["surface_rows"] == rows and manifest["info_bar_rows"] == 8
  assert manifest["version"] == copper_jax.__version__ and manifest["seed"] == 0 and not manifest["confounded"]
  assert manifest["stress_times"] == [0.0, 2.0, 4.0, 6.0]
  expected = synthetic.f_true_values("sqrt", np.array(manifest["tau"]))
  np.testing.assert_allclose(manifest["f_true_values"], expected)
  assert manifest["f_true"] == "sqrt"
  for label, f in zip(manifest["labels"], expected):
    assert len(label["images"]) == settings["images_per_label"]
    for image in label["images"]:
      mask = iio.imread(os.path.join(out, "masks", label["folder"], image["name"]))
      assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
      assert not mask[rows:].any()  # the info bar is never smoothed surface
      smoothed = int((mask[:rows] > 0).sum())
      assert abs(smoothed - round(f * rows * width)) <= 1
      assert smoothed == image["smoothed_pixels"]
      assert image["fraction"] == pytest.approx(smoothed / (rows * width))


def test_layout(tiny):
  out, manifest = tiny
  assert sorted(os.listdir(out)) == [".copper_jax.json", "images", "manifest.json", "masks"]  # the mark: ours
  assert sorted(os.listdir(os.path.join(out, "images")), key=float) == ["0", "2", "4", "6"]
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  for label in manifest["labels"]:
    names = sorted(image["name"] for image in label["images"])
    for kind in ("images", "masks"):
      assert sorted(os.listdir(os.path.join(out, kind, label["folder"]))) == names
    image = iio.imread(os.path.join(out, "images", label["folder"], names[0]))
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image[-8:].mean() < image[:-8].mean()  # dark info bar


def test_same_seed_same_bytes_any_worker_count(tmp_path):
  first = synthetic.generate(tmp_path / "a", "tiny", seed=5, **_SMALL)
  again = synthetic.generate(tmp_path / "b", "tiny", seed=5, workers=2, **_SMALL)
  synthetic.generate(tmp_path / "c", "tiny", seed=6, **_SMALL)
  assert first == again
  a, b, c = (_files(tmp_path / name) for name in "abc")
  assert a == b
  images = [name for name in a if name.startswith("images")]
  assert all(a[name] != c[name] for name in images)
  assert len({a[name] for name in images}) == len(images)  # every image has its own seed


def test_existing_folder_is_reused_or_refused_never_deleted(tmp_path):
  out = tmp_path / "set"
  synthetic.generate(out, "tiny", seed=0, **_SMALL)
  lost = out / "images" / "0" / "img_001.png"
  kept = _files(out)
  os.remove(lost)
  synthetic.generate(out, "tiny", seed=0, **_SMALL)  # same manifest: fills the gap with the same bytes
  assert _files(out) == kept
  with pytest.raises(ConfigError, match="differs in seed"):
    synthetic.generate(out, "tiny", seed=1, **_SMALL)
  user = tmp_path / "user"
  user.mkdir()
  (user / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="already holds files copper_jax did not write"):
    synthetic.generate(user, "tiny", **_SMALL)
  assert os.listdir(user) == ["notes.txt"]
  assert _files(out) == kept


def test_bad_names_and_settings_raise_config_error(tmp_path):
  with pytest.raises(ConfigError, match="tiny, demo, paper"):
    synthetic.generate(tmp_path, "huge")
  with pytest.raises(ConfigError, match="linear, sqrt"):
    synthetic.generate(tmp_path, "tiny", f_true="cubic")
  with pytest.raises(ConfigError, match="nodule_size"):
    synthetic.generate(tmp_path, "tiny", nodule_size=3)
  with pytest.raises(ConfigError, match="num_labels"):
    synthetic.generate(tmp_path, "tiny", num_labels=1)
  with pytest.raises(ConfigError, match="seed"):
    synthetic.generate(tmp_path, "tiny", seed=-1)
  assert os.listdir(tmp_path) == []


def _region_stats(fraction, seed, **kwargs):
  """Gray levels, smoothed mask, nodule-scale texture energy, border band and region cores of one image."""
  image, mask = synthetic.render_surface(np.random.default_rng(seed), fraction, 128, 128, shading=0.0, **kwargs)
  image, smooth = image.astype(float), mask.astype(bool)
  # Band-pass at the nodule scale: averaging 3x3 first keeps shot noise from swamping the texture.
  texture = _box_mean((_box_mean(image, 1) - _box_mean(image, 3))**2, 3)
  band, core = _near(~smooth, 2) & _near(smooth, 2), ~(_near(~smooth, 8) & _near(smooth, 8))
  return image, smooth, texture, band, core


def test_brightness_matches_and_texture_separates():
  for seed in range(4):
    image, smooth, texture, _, _ = _region_stats(0.5, seed)
    assert abs(image[smooth].mean() - image[~smooth].mean()) < 0.1 * image.std()
    assert texture[~smooth].mean() > 3 * texture[smooth].mean()
  # The fraction must not leak through the image mean either.
  few, many = (np.mean([_region_stats(f, seed)[0].mean() for seed in range(3)]) for f in (0.05, 0.95))
  assert abs(few - many) < 2.0


def test_no_bright_rim_at_region_borders():
  for seed in range(4):
    image, smooth, _, band, core = _region_stats(0.5, seed)
    interior = max(image[core & smooth].mean(), image[core & ~smooth].mean())
    assert image[band].mean() < interior + 0.1 * image.std()


def test_confounded_set_carries_the_label_in_blur(tmp_path):
  manifest = synthetic.generate(tmp_path, "tiny", confounded=True, num_labels=3, images_per_label=3, noise=0.0)
  assert manifest["confounded"] and manifest["f_true"] == "constant"
  fractions = {image["smoothed_pixels"] for label in manifest["labels"] for image in label["images"]}
  assert len(fractions) == 1 and manifest["f_true_values"] == [0.5] * 3
  blur = [label["blur_sigma"] for label in manifest["labels"]]
  assert blur[0] < blur[1] < blur[2]
  sharpness = []
  for label in manifest["labels"]:
    images = [iio.imread(tmp_path / "images" / label["folder"] / image["name"]).astype(float)
              for image in label["images"]]
    sharpness.append(np.mean([np.mean((x - _box_mean(x, 1))**2) for x in images]))
  assert sharpness[0] > sharpness[1] > sharpness[2]


def test_extreme_fractions_render():
  for fraction in (0.0, 1.0):
    _, mask = synthetic.render_surface(np.random.default_rng(0), fraction, 32, 40)
    assert mask.sum() == fraction * 32 * 40


def test_launch_script(tmp_path):
  script = os.path.join(_REPO, "launch", "make_synthetic.py")
  ok = subprocess.run([sys.executable, script, f"--out={tmp_path / 'set'}", "--preset=tiny", "--texture=contrast"],
                      capture_output=True, text=True, check=False)
  assert ok.returncode == 0, ok.stderr
  with open(tmp_path / "set" / "manifest.json") as f:
    assert json.load(f)["texture"] == "contrast"
  bad = subprocess.run([sys.executable, script, f"--out={tmp_path / 'bad'}", "--f_true=cubic"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "sqrt" in bad.stderr
  (tmp_path / "a_file").write_text("mine")
  (tmp_path / "theirs").mkdir()
  (tmp_path / "theirs" / "notes.txt").write_text("mine")
  for out, words in ((tmp_path / "a_file" / "set", "is a file"), (tmp_path / "theirs", "did not write")):
    refused = subprocess.run([sys.executable, script, f"--out={out}", "--preset=tiny"], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and "Traceback" not in refused.stderr
  assert (tmp_path / "a_file").read_text() == "mine" and os.listdir(tmp_path / "theirs") == ["notes.txt"]


def _texture_image(texture, seed, fraction=0.5, **overrides):
  """One 128 px image of `texture` (no shading, so the ramp does not confound region statistics), with its mask."""
  settings = dict(synthetic.PRESETS["demo"], height=128, width=128, shading=0.0, **overrides)
  image, mask = synthetic.render_image(np.random.default_rng(seed), fraction, texture, settings)
  return image.astype(float), mask.astype(bool)


@pytest.mark.parametrize("texture", synthetic.TEXTURES)
def test_every_texture_has_exact_masks_and_no_brightness_cue(tmp_path, texture):
  manifest = synthetic.generate(tmp_path / texture, "tiny", texture=texture, seed=1, **_SMALL)
  assert manifest["texture"] == texture
  for label in manifest["labels"]:
    for image in label["images"]:
      mask = iio.imread(tmp_path / texture / "masks" / label["folder"] / image["name"])
      assert int(np.sum(mask > 0)) == image["smoothed_pixels"]
  # Facets: two or three grains per image, each its own shade, so one image's regions differ by chance; averaged
  # over images they do not.
  gaps = []
  for seed in range(6):
    image, smooth = _texture_image(texture, seed)
    assert smooth.mean() == 0.5
    gaps.append((image[smooth].mean() - image[~smooth].mean()) / image.std())
  assert abs(np.mean(gaps)) < 0.1, (texture, gaps)


def test_frequency_texture_differs_in_frequency_not_in_local_contrast():
  for seed in range(3):
    image, smooth = _texture_image("frequency", seed, noise=0.0)
    core_smooth, core_rough = ~_near(~smooth, 4), ~_near(smooth, 4)
    contrast = _box_mean((image - _box_mean(image, 4))**2, 4)  # local variance over 9 px
    assert 0.6 < contrast[core_smooth].mean() / contrast[core_rough].mean() < 1.6
    fine = (image - _box_mean(image, 1))**2  # energy above about a third of the sampling frequency
    assert fine[core_rough].mean() > 3 * fine[core_smooth].mean()


def test_contrast_texture_differs_in_contrast_only():
  ratios = []
  for seed in range(3):
    image, smooth = _texture_image("contrast", seed, noise=0.0, blur_sigma=0.0)
    core_smooth, core_rough = ~_near(~smooth, 4), ~_near(smooth, 4)
    deviation = image - _box_mean(image, 4)
    ratios.append(deviation[core_smooth].std() / deviation[core_rough].std())
  # The same spectrum scaled by contrast_ratio (0.45): gray-level rounding adds a little to the smoothed side.
  assert 0.35 < np.mean(ratios) < 0.6


def test_facets_are_flat_wider_than_the_default_receptive_field():
  image, smooth = _texture_image("facets", 0, fraction=0.0, noise=0.0, blur_sigma=0.0)
  gy, gx = np.gradient(image)
  flat = (np.hypot(gy, gx) < 0.5) & ~smooth
  # the largest run of flat pixels along a row: a facet's interior with no ridge in it
  longest = max(max((len(run) for run in "".join("1" if v else "0" for v in row).split("0")), default=0)
                for row in flat)
  assert longest >= 40, longest


def test_varied_texture_draws_its_settings_per_image_and_not_per_label(tmp_path):
  manifest = synthetic.generate(tmp_path, "tiny", texture="varied", num_labels=3, images_per_label=4,
                                height=48, width=48)
  images = [image for label in manifest["labels"] for image in label["images"]]
  spacing = np.array([image["nodule_px"] for image in images])
  noise = np.array([image["noise"] for image in images])
  base = synthetic.PRESETS["tiny"]
  assert np.all((spacing >= base["nodule_px"] / 1.6 - 1e-9) & (spacing <= base["nodule_px"] * 1.6 + 1e-9))
  assert np.all((noise >= base["noise"] / 2 - 1e-9) & (noise <= base["noise"] * 2 + 1e-9))
  # they vary within every stress time, so they tell nothing about it
  for label in manifest["labels"]:
    assert len({image["nodule_px"] for image in label["images"]}) == len(label["images"])
  again = synthetic.generate(tmp_path / "again", "tiny", texture="varied", num_labels=3, images_per_label=4,
                             height=48, width=48)
  assert again["labels"] == manifest["labels"]


def test_unknown_texture_is_refused_in_one_line(tmp_path):
  with pytest.raises(ConfigError, match="texture='wood' is unknown; use one of copper, frequency"):
    synthetic.generate(tmp_path, "tiny", texture="wood")
  assert not os.listdir(tmp_path)
