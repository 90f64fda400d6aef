"""SEM dataset layer: folder loading, splits and patch sampling, on small folders built in tmp_path."""
import json
import os
import threading

import imageio.v3 as iio
import numpy as np
import pytest

from copper_jax.data import folder, image_reader
from copper_jax.data.folder import load_folder
from copper_jax.data.sampler import PatchSampler, steps_per_epoch, whole_image_batches
from copper_jax.data.splits import load_or_make_splits, make_splits
from copper_jax.errors import ConfigError, DataError, UserError

TIMES = ("0", "1", "2.5", "10")


def _write(path, pixels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  iio.imwrite(path, pixels)
  return path


def _make_folder(root, times=TIMES, per_label=4, shape=(32, 40), seed=0):
  """root/<t>/img_<k>.png with random uint8 gray pixels; returns {relative path: pixels}."""
  rng = np.random.default_rng(seed)
  written = {}
  for t in times:
    for k in range(per_label):
      pixels = rng.integers(0, 256, shape, dtype=np.uint8)
      _write(os.path.join(root, t, f"img_{k:03d}.png"), pixels)
      written[f"{t}/img_{k:03d}.png"] = pixels
  return written


def _make_synthetic(root, per_label=3, shape=(24, 20)):
  """root/images, root/masks (0/255, mask = image > 128) and root/manifest.json, like the generator writes."""
  rng = np.random.default_rng(1)
  for t in ("0", "5", "20"):
    for k in range(per_label):
      pixels = rng.integers(0, 256, shape, dtype=np.uint8)
      _write(os.path.join(root, "images", t, f"s{k}.png"), pixels)
      _write(os.path.join(root, "masks", t, f"s{k}.png"), np.where(pixels > 128, 255, 0).astype(np.uint8))
  manifest = {"f_true": "power_law", "f_true_values": [0.0, 0.3, 0.9], "seed": 1}
  with open(os.path.join(root, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return manifest


def _error(kind, fn, *must_contain):
  """Runs fn, checks it raises `kind` with a one-line message containing every string given."""
  with pytest.raises(kind) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for part in must_contain:
    assert part in message, f"{part!r} not in {message!r}"
  return message


# ---------------------------------------------------------------- loading


def test_label_folders_sort_numerically_and_images_load_natively(tmp_path):
  written = _make_folder(tmp_path / "data", times=("10", "2.5", "0", "1"), per_label=2)
  ds = load_folder(tmp_path / "data")
  assert ds.label_names == ["0", "1", "2.5", "10"]
  np.testing.assert_array_equal(ds.stress_times, [0.0, 1.0, 2.5, 10.0])
  np.testing.assert_allclose(ds.tau, [0.0, 0.1, 0.25, 1.0])
  assert ds.num_classes == 4 and ds.image_shape == (32, 40)
  assert ds.paths[:3] == ["0/img_000.png", "0/img_001.png", "1/img_000.png"]
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2, 3, 3])
  assert ds.labels.dtype == np.int32 and ds.masks is None and ds.manifest is None and ds.skipped == []
  for i, path in enumerate(ds.paths):
    assert ds.images[i].dtype == np.uint8
    np.testing.assert_array_equal(ds.images[i], written[path])
    assert ds.mean[i] == pytest.approx(written[path].mean()) and ds.std[i] == pytest.approx(written[path].std())
  z = ds.standardised(5)
  assert z.dtype == np.float32 and z.shape == (32, 40)
  assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, abs=1e-4)


def test_single_stress_time_is_refused_and_dataset_standardisation_pools(tmp_path):
  # One stress time gives no span for tau and nothing to tell apart: a classifier scored 1.000 on it.
  _make_folder(tmp_path / "one", times=("3",), per_label=3)
  with pytest.raises(DataError, match=r"one stress-time folder \(3\).*at least two"):
    load_folder(tmp_path / "one")
  _make_folder(tmp_path / "two", times=("3", "5"), per_label=3)
  ds = load_folder(tmp_path / "two", standardise="dataset")
  np.testing.assert_array_equal(ds.tau, [0.0, 1.0])
  pooled = np.stack(ds.images).astype(np.float64)
  np.testing.assert_allclose(ds.mean, pooled.mean())
  np.testing.assert_allclose(ds.std, pooled.std())


GRADIENT_16 = (np.arange(30 * 36).reshape(30, 36) * 60).astype(np.uint16)
RGB_8 = np.random.default_rng(2).integers(0, 256, (30, 36, 3), dtype=np.uint8)


def _luma(rgb):
  return rgb[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]


@pytest.mark.parametrize("name, pixels, dtype, expected", [
    ("gray16.png", GRADIENT_16, np.uint16, GRADIENT_16),
    ("gray16.tif", GRADIENT_16, np.uint16, GRADIENT_16),
    ("rgb16.tiff", np.stack([GRADIENT_16] * 3, -1), np.uint16, GRADIENT_16),
    ("rgb.png", RGB_8, np.uint8, np.rint(_luma(RGB_8))),
    ("rgba.png", np.concatenate([RGB_8, np.full((30, 36, 1), 7, np.uint8)], -1), np.uint8, np.rint(_luma(RGB_8))),
    ("rgb.BMP", RGB_8, np.uint8, np.rint(_luma(RGB_8))),
    ("float.tif", GRADIENT_16.astype(np.float32) / 7, np.float32, GRADIENT_16.astype(np.float32) / 7),
    ("rgb.jpg", RGB_8, np.uint8, None),  # lossy: dtype and shape only
    ("gray.jpeg", RGB_8[..., 0], np.uint8, None),
])
def test_formats_keep_native_dtype_and_convert_colour_to_luminance(tmp_path, name, pixels, dtype, expected):
  _write(str(tmp_path / "0" / name), pixels)
  _write(str(tmp_path / "1" / name), pixels)  # a second stress time, of the same pixel type
  ds = load_folder(tmp_path)
  image = ds.images[ds.paths.index(f"0/{name}")]
  assert image.dtype == dtype and image.shape == (30, 36)
  if expected is not None:
    np.testing.assert_allclose(image, expected, atol=1 if dtype == np.uint8 else 1e-6)


def test_crop_bottom_removes_info_bar_from_images_and_statistics(tmp_path):
  for t, level in (("0", 100), ("1", 120)):
    image = np.full((40, 32), level, np.uint8)
    image[32:] = 255  # an 8-row info bar
    _write(str(tmp_path / t / "a.tif"), image)
  ds = load_folder(tmp_path, crop_bottom=8)
  assert ds.image_shape == (32, 32)
  np.testing.assert_array_equal(ds.mean, [100.0, 120.0])
  np.testing.assert_array_equal(ds.std, [0.0, 0.0])
  np.testing.assert_array_equal(ds.standardised(0), 0.0)  # constant image: std floored, no NaN


def test_hidden_and_non_image_files_are_ignored(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=2)
  for junk in ("0/notes.txt", "0/meta.json", "0/Thumbs.db", "0/.hidden.png", "0/._mac.png", "readme.md"):
    (tmp_path / junk).write_bytes(b"\x00\xffnot an image")
  _write(str(tmp_path / "0" / ".cache" / "x.png"), np.zeros((32, 40), np.uint8))
  _write(str(tmp_path / ".trash" / "x.png"), np.zeros((32, 40), np.uint8))
  _write(str(tmp_path / "1" / "session2" / "deep.png"), np.zeros((32, 40), np.uint8))
  ds = load_folder(tmp_path)
  assert ds.paths == ["0/img_000.png", "0/img_001.png", "1/img_000.png", "1/img_001.png", "1/session2/deep.png"]


def test_synthetic_layout_loads_masks_and_manifest_from_either_folder(tmp_path):
  manifest = _make_synthetic(tmp_path / "syn")
  from_dir = load_folder(tmp_path / "syn", crop_bottom=4)
  from_images = load_folder(tmp_path / "syn" / "images", crop_bottom=4)
  for ds in (from_dir, from_images):
    assert ds.manifest == manifest and ds.label_names == ["0", "5", "20"]
    assert ds.image_shape == (20, 20) and len(ds.masks) == 9
    assert ds.root == os.path.join(str(tmp_path / "syn"), "images")
    for image, mask in zip(ds.images, ds.masks):
      assert mask.dtype == np.uint8 and mask.shape == (20, 20)
      np.testing.assert_array_equal(mask, image > 128)
  assert from_dir.paths == from_images.paths


def test_images_folder_without_masks_has_none(tmp_path):
  _make_folder(tmp_path / "syn" / "images", times=("0", "1"), per_label=1)
  assert load_folder(tmp_path / "syn").masks is None


# ---------------------------------------------------------------- bad input


def test_missing_root_and_root_without_label_folders(tmp_path):
  _error(DataError, lambda: load_folder(tmp_path / "nowhere"), "nowhere", "does not exist")
  (tmp_path / "file.png").write_bytes(b"x")
  _error(DataError, lambda: load_folder(tmp_path / "file.png"), "file.png", "not a folder")
  (tmp_path / "empty").mkdir()
  _error(DataError, lambda: load_folder(tmp_path / "empty"), "empty", "no label folders")


def test_non_numeric_duplicate_and_empty_label_folders(tmp_path):
  _make_folder(tmp_path / "a", times=("0", "abc"), per_label=1)
  _error(DataError, lambda: load_folder(tmp_path / "a"), "abc", "rename")
  _make_folder(tmp_path / "b", times=("2", "2.0"), per_label=1)
  _error(DataError, lambda: load_folder(tmp_path / "b"), "'2'", "'2.0'", "same stress time")
  _make_folder(tmp_path / "c", times=("0",), per_label=1)
  (tmp_path / "c" / "7").mkdir()
  (tmp_path / "c" / "7" / "notes.txt").write_text("no images here")
  _error(DataError, lambda: load_folder(tmp_path / "c"), os.path.join("c", "7"), "no images")


@pytest.mark.parametrize("name, content, reason", [
    ("random.png", np.random.default_rng(3).bytes(300), "not a decodable image"),
    ("zero.png", b"", "empty"),
    ("truncated", None, "not a decodable image"),
])
def test_corrupt_images_raise_data_error_naming_the_file(tmp_path, name, content, reason):
  _make_folder(tmp_path, times=("0", "1"), per_label=1)
  if content is None:  # first half of a valid PNG
    name, content = "truncated.png", (tmp_path / "0" / "img_000.png").read_bytes()[:200]
  (tmp_path / "1" / name).write_bytes(content)
  _error(DataError, lambda: load_folder(tmp_path), name, reason, "skip_unreadable")


def test_unopenable_files_raise_instead_of_hanging(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=1)
  os.symlink(tmp_path / "1" / "loop_b.png", tmp_path / "1" / "loop_a.png")
  os.symlink(tmp_path / "1" / "loop_a.png", tmp_path / "1" / "loop_b.png")
  _error(DataError, lambda: load_folder(tmp_path), "loop_a.png", "cannot open")
  for loop in ("loop_a.png", "loop_b.png"):
    os.remove(tmp_path / "1" / loop)
  os.symlink(tmp_path / "nowhere.png", tmp_path / "1" / "dangling.png")
  _error(DataError, lambda: load_folder(tmp_path), "dangling.png", "cannot open")


def test_folder_symlink_loop_is_not_followed(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=1)
  os.symlink(tmp_path / "1", tmp_path / "1" / "again", target_is_directory=True)
  assert load_folder(tmp_path).paths == ["0/img_000.png", "1/img_000.png"]


def test_non_utf8_file_name_is_named_readably(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=1)
  bad = os.path.join(os.fsencode(tmp_path / "1"), b"caf\xe9.png")
  with open(bad, "wb") as f:
    f.write((tmp_path / "0" / "img_000.png").read_bytes())
  _error(DataError, lambda: load_folder(tmp_path), "caf\\xe9.png", "UTF-8")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read unreadable files")
def test_permission_denied_names_the_file(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=2)
  os.chmod(tmp_path / "1" / "img_001.png", 0)
  _error(DataError, lambda: load_folder(tmp_path), "img_001.png", "cannot open")


def test_permission_denied_names_the_file_even_as_root(tmp_path, monkeypatch):
  _make_folder(tmp_path, times=("0", "1"), per_label=2)
  denied = str(tmp_path / "1" / "img_001.png")

  def open_denying(path, *args, **kwargs):
    if path == denied:
      raise PermissionError(13, "Permission denied", path)
    return open(path, *args, **kwargs)

  monkeypatch.setattr(image_reader, "open", open_denying, raising=False)  # shadows the builtin in the reader only
  _error(DataError, lambda: load_folder(tmp_path), "img_001.png", "Permission denied")


def test_skip_unreadable_lists_and_warns(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=2)
  (tmp_path / "1" / "zero.png").write_bytes(b"")
  (tmp_path / "0" / "junk.tif").write_bytes(b"II*\x00garbage")
  with pytest.warns(UserWarning, match="skipped 2 unreadable"):
    ds = load_folder(tmp_path, skip_unreadable=True)
  assert len(ds.images) == 4 and "1/zero.png" not in ds.paths
  assert len(ds.skipped) == 2
  assert any("zero.png" in s and "empty" in s for s in ds.skipped)
  assert any("junk.tif" in s for s in ds.skipped)
  for path in ("0/img_000.png", "0/img_001.png"):
    os.remove(tmp_path / path)
  _error(DataError, lambda: load_folder(tmp_path, skip_unreadable=True), os.sep + "0", "unreadable")


def test_mixed_sizes_name_both_files_and_sizes(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=1, shape=(32, 40))
  _write(str(tmp_path / "1" / "wide.png"), np.zeros((32, 48), np.uint8))
  _error(DataError, lambda: load_folder(tmp_path), "wide.png", "32x48", "img_000.png", "32x40")


def test_bad_crop_and_patch_sizes_are_config_errors(tmp_path):
  _make_folder(tmp_path, times=("0", "1"), per_label=1, shape=(32, 40))
  _error(ConfigError, lambda: load_folder(tmp_path, crop_bottom=32), "crop_bottom=32", "img_000.png")
  _error(ConfigError, lambda: load_folder(tmp_path, crop_bottom=-1), "crop_bottom")
  _error(ConfigError, lambda: load_folder(tmp_path, standardise="global"), "standardise")
  ds = load_folder(tmp_path, crop_bottom=4)
  _error(ConfigError, lambda: PatchSampler(ds, [0, 1], 29, 2, 0), "patch_size=29", "28x40", str(tmp_path))
  _error(DataError, lambda: PatchSampler(ds, [0, 1], 8, 2, 0, with_masks=True), "masks")


def test_synthetic_layout_errors(tmp_path):
  _make_synthetic(tmp_path)
  os.remove(tmp_path / "masks" / "5" / "s1.png")
  _error(DataError, lambda: load_folder(tmp_path), "s1.png", "mask missing")
  _write(str(tmp_path / "masks" / "5" / "s1.png"), np.zeros((10, 10), np.uint8))
  _error(DataError, lambda: load_folder(tmp_path), "s1.png", "10x10")
  _write(str(tmp_path / "masks" / "5" / "s1.png"), np.zeros((24, 20), np.uint8))
  (tmp_path / "manifest.json").write_text("{not json")
  _error(DataError, lambda: load_folder(tmp_path), "manifest.json")


# ---------------------------------------------------------------- splits


def test_make_splits_is_stratified_seeded_sorted_and_disjoint():
  labels = np.repeat(np.arange(3), [12, 15, 13]).astype(np.int32)
  sizes = {"train": 6, "val": 2, "test": 2}
  splits = make_splits(labels, 3, sizes, seed=4)
  again = make_splits(labels, 3, dict(reversed(list(sizes.items()))), seed=4)
  other = make_splits(labels, 3, sizes, seed=5)
  for name, count in sizes.items():
    idx = splits[name]
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [count] * 3)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, again[name])
  assert not np.array_equal(splits["train"], other["train"])
  everything = np.concatenate(list(splits.values()))
  assert len(np.unique(everything)) == len(everything)
  bigger_train = make_splits(labels, 3, {"train": 8, "val": 2, "test": 2}, seed=4)
  np.testing.assert_array_equal(bigger_train["test"], splits["test"])
  np.testing.assert_array_equal(bigger_train["val"], splits["val"])


def test_fraction_splits_round_with_at_least_one_per_label():
  labels = np.repeat(np.arange(2), [10, 3])
  splits = make_splits(labels, 2, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
  counts = {k: np.bincount(labels[v], minlength=2).tolist() for k, v in splits.items()}
  assert counts == {"train": [8, 1], "val": [1, 1], "test": [1, 1]}
  # fractions summing below 1 leave images out: of 3, test 1 (at least one), unused round(0.3 * 3) = 1, train the rest
  partial = make_splits(labels, 2, {"train": 0.5, "test": 0.2}, seed=0)
  assert np.bincount(labels[partial["train"]], minlength=2).tolist() == [5, 1]


def test_bad_split_sizes(tmp_path):
  labels = np.repeat(np.arange(2), 5)
  _error(ConfigError, lambda: make_splits(labels, 2, {"train": 3, "val": 0.5}, 0), "mix")
  _error(ConfigError, lambda: make_splits(labels, 2, {"train": 0.8, "val": 0.3}, 0), "sum to at most 1")
  _error(ConfigError, lambda: make_splits(labels, 2, {"train": -1}, 0), ">= 0")
  _error(DataError, lambda: make_splits(labels, 2, {"train": 4, "test": 2}, 0, ["0", "2.5"]), "'0'", "5 images")
  _make_folder(tmp_path / "data", times=("0", "1"), per_label=3)
  ds = load_folder(tmp_path / "data")
  _error(DataError, lambda: load_or_make_splits(tmp_path / "work", ds, {"train": 3, "test": 1}, 0), "'0'")


def test_splits_file_is_reused_by_path_across_resume(tmp_path):
  _make_folder(tmp_path / "data", per_label=5)
  sizes = {"train": 3, "val": 1, "test": 1}
  ds = load_folder(tmp_path / "data")
  first = load_or_make_splits(tmp_path / "work", ds, sizes, seed=7)
  saved_file = tmp_path / "work" / "splits.json"
  saved = json.loads(saved_file.read_text())
  assert saved["seed"] == 7 and saved["sizes"] == sizes
  assert saved["splits"]["test"] == [ds.paths[i] for i in first["test"]]
  assert os.listdir(tmp_path / "work") == ["splits.json"]  # no temporary file left behind
  # new images shift every index; the saved paths still pick the same images
  _write(str(tmp_path / "data" / "0" / "aaa_new.png"), np.zeros((32, 40), np.uint8))
  resumed_ds = load_folder(tmp_path / "data")
  with pytest.warns(UserWarning, match="reusing the saved splits"):
    resumed = load_or_make_splits(tmp_path / "work", resumed_ds, {"train": 4, "val": 1, "test": 0}, seed=8)
  for name in sizes:
    assert [resumed_ds.paths[i] for i in resumed[name]] == saved["splits"][name]
  assert json.loads(saved_file.read_text()) == saved  # never rewritten
  os.remove(tmp_path / "data" / saved["splits"]["test"][0])
  _error(DataError, lambda: load_or_make_splits(tmp_path / "work", load_folder(tmp_path / "data"), sizes, 7),
         saved["splits"]["test"][0], "splits.json", "delete")


def test_unreadable_splits_file(tmp_path):
  _make_folder(tmp_path / "data", times=("0", "1"), per_label=2)
  (tmp_path / "work").mkdir()
  (tmp_path / "work" / "splits.json").write_text('{"splits": [1, 2]}')
  ds = load_folder(tmp_path / "data")
  _error(DataError, lambda: load_or_make_splits(tmp_path / "work", ds, {"train": 1}, 0), "splits.json")


# ---------------------------------------------------------------- sampling


@pytest.fixture(name="dataset")
def _dataset(tmp_path):
  _make_synthetic(tmp_path, per_label=4)
  return load_folder(tmp_path)


def _batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype
    np.testing.assert_array_equal(a[key], b[key])


def test_patch_batches_are_standardised_crops_with_matching_masks(dataset):
  sampler = PatchSampler(dataset, np.arange(12), patch_size=8, batch_size=5, seed=3, flips=True, rot90=True,
                         with_masks=True)
  batch = sampler.batch(0)
  assert batch["image"].shape == (5, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (5, 8, 8) and batch["mask"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32 and batch["tau"].dtype == np.float32
  np.testing.assert_array_equal(batch["label"], dataset.labels[batch["index"]])
  np.testing.assert_allclose(batch["tau"], dataset.tau[batch["label"]])
  for b, i in enumerate(batch["index"]):
    raw = batch["image"][b, ..., 0] * max(dataset.std[i], 1e-6) + dataset.mean[i]
    np.testing.assert_allclose(raw, np.rint(raw), atol=1e-3)  # standardised uint8 pixels
    np.testing.assert_array_equal(batch["mask"][b], np.rint(raw) > 128)  # mask moved with its patch


def test_patch_sampler_visits_each_image_once_per_epoch(dataset):
  train = np.array([0, 2, 3, 5, 7, 8, 11])
  sampler = PatchSampler(dataset, train, patch_size=8, batch_size=3, seed=0)
  per_epoch = len(train) * 3  # 3 epochs fill 7 batches exactly
  seen = np.concatenate([sampler.batch(s)["index"] for s in range(per_epoch // 3)])
  for epoch in range(3):
    np.testing.assert_array_equal(np.sort(seen[epoch * 7:(epoch + 1) * 7]), train)
  assert not np.array_equal(seen[:7], seen[7:14])
  assert steps_per_epoch(7, 3) == 3 and steps_per_epoch(6, 3) == 2


def test_patch_sampler_resumes_exactly(dataset):
  make = lambda: PatchSampler(dataset, np.arange(1, 12), patch_size=8, batch_size=4, seed=9, with_masks=True)
  original = make()
  run = [original.batch(s) for s in range(12)]
  resumed = make()
  for s in (11, 6, 7, 8):
    _batches_equal(resumed.batch(s), run[s])
  other_seed = PatchSampler(dataset, np.arange(1, 12), patch_size=8, batch_size=4, seed=10).batch(6)
  assert not np.array_equal(other_seed["image"], run[6]["image"])


def test_prefetch_iterator_matches_direct_batches_and_stops(dataset):
  sampler = PatchSampler(dataset, np.arange(12), patch_size=8, batch_size=4, seed=1)
  got = list(sampler.iterate(5, 6, prefetch=2))
  assert [s for s, _ in got] == list(range(5, 11))
  for step, batch in got:
    _batches_equal(batch, sampler.batch(step))
  endless = sampler.iterate(0, None, prefetch=1)
  for _ in range(3):
    next(endless)
  endless.close()
  assert not any(t.name == "PatchSampler.iterate" and t.is_alive() for t in threading.enumerate())


def test_prefetch_worker_errors_reach_the_consumer(dataset, monkeypatch):
  sampler = PatchSampler(dataset, np.arange(12), patch_size=8, batch_size=2, seed=1)
  real_batch = sampler.batch

  def failing(step):
    if step == 2:
      raise RuntimeError("worker broke at step 2")
    return real_batch(step)

  monkeypatch.setattr(sampler, "batch", failing)
  steps = []
  with pytest.raises(RuntimeError, match="step 2"):
    for step, _ in sampler.iterate(0, 5):
      steps.append(step)
  assert steps == [0, 1]


def test_whole_image_batches_pad_with_zero_weight(dataset):
  indices = np.array([1, 4, 6, 9, 10])
  batches = list(whole_image_batches(dataset, indices, batch_size=2, with_masks=True))
  assert len(batches) == 3
  last = batches[-1]
  np.testing.assert_array_equal(last["weight"], [1.0, 0.0])
  np.testing.assert_array_equal(last["index"], [10, 10])
  np.testing.assert_array_equal(last["image"][0], last["image"][1])
  for batch in batches:
    assert batch["image"].shape == (2, 24, 20, 1) and batch["mask"].shape == (2, 24, 20)
    assert batch["weight"].dtype == np.float32 and batch["tau"].dtype == np.float32
  index = np.concatenate([b["index"] for b in batches])
  weight = np.concatenate([b["weight"] for b in batches])
  np.testing.assert_array_equal(index[weight > 0], indices)
  np.testing.assert_array_equal(batches[0]["image"][1, ..., 0], dataset.standardised(4))
  assert "mask" not in next(whole_image_batches(dataset, indices, batch_size=8))
  assert list(whole_image_batches(dataset, [], batch_size=8)) == []


def test_user_errors_are_user_error_subclasses():
  assert issubclass(DataError, UserError) and issubclass(ConfigError, UserError)


def test_dataset_standardisation_comes_from_the_training_images_alone(tmp_path):
  """No statistic of a held-out image may reach the model: the pooled mean and std are the training split's."""
  from copper_jax.data import synthetic
  synthetic.generate(str(tmp_path / "set"), preset="tiny", seed=0)
  dataset = load_folder(str(tmp_path / "set"), standardise="dataset")
  split = make_splits(dataset.labels, dataset.num_classes, {"train": 4, "val": 1, "test": 1}, seed=0)
  all_mean = float(dataset.mean[0])
  folder.standardise_on(dataset, split["train"], "dataset")
  train_pixels = np.concatenate([dataset.images[i].ravel() for i in split["train"]]).astype(np.float64)
  np.testing.assert_allclose(dataset.mean, train_pixels.mean(), rtol=1e-9)
  np.testing.assert_allclose(dataset.std, train_pixels.std(), rtol=1e-9)
  assert float(dataset.mean[0]) != all_mean
  per_image = load_folder(str(tmp_path / "set"), standardise="image")
  before = per_image.mean.copy()
  folder.standardise_on(per_image, split["train"], "image")
  np.testing.assert_array_equal(per_image.mean, before)
