"""SEM metadata from vendor TIFF tags, mixed pixel sizes, info-bar warnings, and splits that keep specimens whole."""
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from copper_jax.data import sem_metadata
from copper_jax.data.folder import load_folder
from copper_jax.data.splits import make_splits
from copper_jax.errors import DataError
from tests import sem_tiffs

RNG = np.random.default_rng(0)


def _surface(shape=(32, 24)):
  return RNG.integers(0, 256, shape, dtype=np.uint8)


def test_each_vendors_tags_give_pixel_size_voltage_and_detector(tmp_path):
  fei = sem_tiffs.write_tiff(str(tmp_path / "fei.tif"), sem_tiffs.with_info_bar(_surface(), 6),
                             sem_tiffs.fei_tag(2.5, scanned_rows=32))
  zeiss = sem_tiffs.write_tiff(str(tmp_path / "zeiss.tif"), _surface(), sem_tiffs.zeiss_tag(3.1))
  tescan = sem_tiffs.write_tiff(str(tmp_path / "tescan.tif"), _surface(), sem_tiffs.tescan_tag(4.0))
  imagej = str(tmp_path / "fiji.tif")
  tifffile.imwrite(imagej, _surface(), imagej=True, resolution=(200.0, 200.0), metadata={"unit": "um"})
  jeol = str(tmp_path / "jeol.png")
  iio.imwrite(jeol, _surface())
  (tmp_path / "jeol.txt").write_text("$CM_MAG 5000\n$CM_ACCEL_VOLT 15.00\n$CM_SIGNAL SEI\n$$SM_MICRON_BAR 100\n"
                                     "$$SM_MICRON_MARKER 1um\n")
  plain = sem_tiffs.write_tiff(str(tmp_path / "plain.tif"), _surface(), None)

  got = {name: sem_metadata.read_sem_metadata(path, 38 if name == "fei" else 32)
         for name, path in dict(fei=fei, zeiss=zeiss, tescan=tescan, imagej=imagej, jeol=jeol, plain=plain).items()}
  assert (got["fei"].vendor, got["fei"].pixel_size_nm, got["fei"].voltage_kv, got["fei"].detector,
          got["fei"].info_bar_rows) == ("FEI/Thermo", pytest.approx(2.5), 5.0, "ETD", 6)
  assert (got["zeiss"].pixel_size_nm, got["zeiss"].voltage_kv, got["zeiss"].magnification,
          got["zeiss"].detector) == (pytest.approx(3.1), 10.0, "5.00 K X", "InLens")
  assert (got["tescan"].pixel_size_nm, got["tescan"].voltage_kv, got["tescan"].magnification) == (
      pytest.approx(4.0), 15.0, "5000")
  assert got["imagej"].pixel_size_nm == pytest.approx(5.0)  # 200 pixels per micron
  assert (got["jeol"].pixel_size_nm, got["jeol"].magnification, got["jeol"].detector) == (
      pytest.approx(10.0), "5000", "SEI")  # a 1 um marker drawn 100 pixels long
  assert got["plain"] == sem_metadata.SEMMetadata()


def test_info_bar_is_found_in_the_pixels_and_not_in_a_surface():
  surface = _surface((64, 48))
  assert sem_metadata.detect_info_bar_rows(surface) == 0
  assert sem_metadata.detect_info_bar_rows(sem_tiffs.with_info_bar(surface, 9)) == 9


def _vendor_folder(root, pixel_sizes, bar_rows=0):
  """root/<t>/<specimen>/f<k>.tif, FEI-tagged, pixel size by stress time from `pixel_sizes`."""
  for t, size in pixel_sizes.items():
    for s in range(3):
      for k in range(2):
        pixels = sem_tiffs.with_info_bar(_surface(), bar_rows) if bar_rows else _surface()
        sem_tiffs.write_tiff(os.path.join(root, t, f"spec{s}", f"f{k}.tif"), pixels,
                             sem_tiffs.fei_tag(size, scanned_rows=32))


def test_mixed_pixel_sizes_are_refused_in_one_line_unless_allowed(tmp_path):
  _vendor_folder(tmp_path, {"0": 2.5, "10": 5.0})
  with pytest.raises(DataError) as e:
    load_folder(tmp_path)
  message = str(e.value)
  assert "\n" not in message and "2.5 nm" in message and "5 nm" in message and "mixed_pixel_sizes=allow" in message
  with pytest.warns(UserWarning, match="mixed_pixel_sizes=allow"):
    dataset = load_folder(tmp_path, mixed_pixel_sizes="allow")
  assert sorted({m["pixel_size_nm"] for m in dataset.metadata}) == [pytest.approx(2.5), pytest.approx(5.0)]


def test_dataset_records_metadata_and_specimens_and_warns_of_a_forgotten_bar(tmp_path):
  _vendor_folder(tmp_path, {"0": 2.5, "10": 2.5}, bar_rows=6)
  (tmp_path / "10" / "loose.tif").write_bytes((tmp_path / "10" / "spec0" / "f0.tif").read_bytes())
  with pytest.warns(UserWarning, match=r"info bar of about 6 rows, but data.crop_bottom=0"):
    load_folder(tmp_path)
  dataset = load_folder(tmp_path, crop_bottom=6)  # no warning: the bar is cut
  assert dataset.image_shape == (32, 24) and dataset.pixel_size_nm == pytest.approx(2.5)
  assert dataset.metadata[0]["detector"] == "ETD" and dataset.metadata[0]["info_bar_rows"] == 6
  assert dict(zip(dataset.paths, dataset.specimens))["10/loose.tif"] == "10"
  assert dict(zip(dataset.paths, dataset.specimens))["0/spec1/f0.tif"] == "0/spec1"
  with pytest.warns(UserWarning, match="cuts more than twice"):
    load_folder(tmp_path, crop_bottom=20)


def test_splits_keep_each_specimens_images_together(tmp_path):
  specimens = [f"{t}/s{s}" for t in range(2) for s in range(4) for _ in range(3)]
  labels = np.repeat([0, 1], 12)
  for seed in range(5):
    split = make_splits(labels, 2, {"train": 6, "val": 3, "test": 3}, seed, specimens=specimens)
    where = {specimens[i]: name for name, idx in split.items() for i in idx}
    for name, idx in split.items():
      assert all(where[specimens[i]] == name for i in idx)
      assert len(idx) == {"train": 12, "val": 6, "test": 6}[name]
  # With two specimens per label there is no way to hold one out per split: images are split one by one.
  few = [f"{t}/s{s}" for t in range(2) for s in range(2) for _ in range(6)]
  split = make_splits(labels, 2, {"train": 6, "val": 3, "test": 3}, 0, specimens=few)
  assert len(split["val"]) == 6 and len(split["train"]) == 12
  with pytest.raises(DataError, match="specimens run out"):
    make_splits(labels, 2, {"train": 7, "val": 3, "test": 1}, 0, specimens=specimens)
