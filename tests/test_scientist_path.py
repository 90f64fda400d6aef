"""The materials scientist's path end to end: vendor-tagged SEM TIFFs in specimen folders -> sweep -> predict on
samples in sub-folders -> every table and mask opened with a general reader (csv, tifffile, imageio)."""
import csv
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from configs import sweep as sweep_configs
from copper_jax import predict
from copper_jax.data import synthetic
from copper_jax.sweep import run as sweep
from tests import sem_tiffs

BAR = 8  # rows of info bar under every image, as an FEI instrument writes it
PIXEL_NM = 5.0


def _read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sem_folder(tmp_path_factory):
  """The tiny synthetic set rewritten as FEI TIFFs with an info bar: root/<t>/specimen<k>/field.tif."""
  base = tmp_path_factory.mktemp("scientist")
  manifest = synthetic.generate(str(base / "synthetic"), preset="tiny", seed=0)
  root = base / "sem"
  for label in manifest["labels"]:
    name = f"{label['stress_time']:g}"
    files = sorted(os.listdir(base / "synthetic" / "images" / name))
    for k, file in enumerate(files):
      pixels = iio.imread(base / "synthetic" / "images" / name / file)
      sem_tiffs.write_tiff(str(root / name / f"specimen{k}" / "field.tif"), sem_tiffs.with_info_bar(pixels, BAR),
                           sem_tiffs.fei_tag(PIXEL_NM, scanned_rows=pixels.shape[0]))
  return base, root, manifest


@pytest.mark.slow  # about 30 s on 2 shared cores: a sweep of two seeds and a prediction
def test_vendor_tiffs_through_sweep_and_predict_to_tables_and_masks(sem_folder):
  base, root, manifest = sem_folder
  config = sweep_configs.get_config("smoke")
  config.data.root = str(root)
  config.data.crop_bottom = BAR
  config.data.split.train, config.data.split.val, config.data.split.test = 2, 2, 2
  config.num_seeds = 2
  work_dir = str(base / "run")
  summary = sweep.run_sweep(config, work_dir, quiet=True)

  # What the training data were: the pixel size from the FEI tags, the specimens kept whole in the split.
  data_summary = json.load(open(os.path.join(work_dir, "data_summary.json")))
  assert data_summary["pixel_size_nm"] == pytest.approx(PIXEL_NM)
  assert data_summary["image_shape"] == [64, 64]
  split = json.load(open(os.path.join(work_dir, "splits.json")))["splits"]
  assert sum(map(len, split.values())) == 24

  # The sweep's tables, opened with the csv module, agree with sweep.json.
  ranking = _read_csv(os.path.join(work_dir, "tables", "ranking.csv"))
  assert [r["hypothesis"] for r in ranking if r["rank"]] == summary["ranking"]
  leader = next(h for h in summary["hypotheses"] if h["name"] == summary["ranking"][0])
  assert float(ranking[0]["val_error"]) == pytest.approx(leader["loss"]["val"]["mean"])
  masks_table = _read_csv(os.path.join(work_dir, "tables", "mean_masks.csv"))
  assert {r["split"] for r in masks_table} == {"train", "val", "test"}
  assert {float(r["stress_time"]) for r in masks_table} == set(summary["labels"]["stress_times"])
  learned = _read_csv(os.path.join(work_dir, "tables", "learned_g.csv"))
  assert float(learned[0]["learned_g"]) == pytest.approx(0.0, abs=1e-6)
  assert float(learned[-1]["learned_g"]) == pytest.approx(1.0, abs=1e-6)
  assert os.path.getsize(os.path.join(work_dir, "figures", "loss_curves.png")) > 1000

  # New samples, one per sub-folder; one field of sample "B" taken at twice the pixel size.
  times = [f"{label['stress_time']:g}" for label in manifest["labels"]]
  new = base / "new"
  for sample, t in (("A", times[0]), ("B", times[-1])):
    for k in range(2):
      pixels = iio.imread(base / "synthetic" / "images" / t / sorted(os.listdir(
          base / "synthetic" / "images" / t))[k])
      size = 2 * PIXEL_NM if (sample, k) == ("B", 1) else PIXEL_NM
      sem_tiffs.write_tiff(str(new / sample / f"field{k}.tif"), sem_tiffs.with_info_bar(pixels, BAR),
                           sem_tiffs.fei_tag(size, scanned_rows=pixels.shape[0]))
  out = base / "predictions"
  result = predict.predict(work_dir, [str(new)], str(out), quiet=True)
  assert result["skipped"] == []

  rows = _read_csv(out / "summary.csv")
  assert [r["output"] for r in rows] == ["A/field0", "A/field1", "B/field0", "B/field1"]
  hypothesis = next(h for h in summary["hypotheses"] if h["name"] == rows[0]["hypothesis"])
  g_T = np.asarray(hypothesis["targets"])
  for r in rows:
    assert r["sample"] == r["output"].split("/")[0] and r["num_seeds"] == "2" and r["seeds"] == "0 1"
    assert float(r["pixel_size_nm"]) == pytest.approx(2 * PIXEL_NM if r["output"] == "B/field1" else PIXEL_NM)
    assert ("pixel size 10 nm, trained on 5 nm" in r["flags"]) == (r["output"] == "B/field1")
    probability = tifffile.imread(out / f"{r['output']}_probability.tif")
    mask = tifffile.imread(out / f"{r['output']}_mask.tif")
    assert probability.dtype == np.float32 and probability.shape == (64 + BAR, 64)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, probability >= 0.5)
    assert not probability[64:].any()  # the info bar is not surface
    fraction = float(r["smoothed_fraction_on_g_scale"])
    assert fraction == pytest.approx(float(probability[:64].mean()), abs=1e-5)
    assert float(r["seed_min"]) <= fraction <= float(r["seed_max"])
    if np.all(np.diff(g_T) > 0):
      assert float(r["equivalent_stress_time"]) == pytest.approx(
          np.interp(fraction, g_T, summary["labels"]["stress_times"]), rel=1e-4, abs=1e-4)
    assert iio.imread(out / f"{r['output']}_overlay.png").shape == (64 + BAR, 64, 3)
    with tifffile.TiffFile(out / f"{r['output']}_mask.tif") as tif:  # Fiji reads the scale from these
      assert tif.imagej_metadata["unit"] == "um"
      numerator, denominator = tif.pages.first.tags["XResolution"].value
      assert denominator / numerator * 1e3 == pytest.approx(float(r["pixel_size_nm"]), rel=1e-4)

  samples = _read_csv(out / "samples.csv")
  assert [s["sample"] for s in samples] == ["A", "B"]
  for s in samples:
    fields = [float(r["smoothed_fraction_on_g_scale"]) for r in rows if r["sample"] == s["sample"]]
    assert float(s["mean_smoothed_fraction_on_g_scale"]) == pytest.approx(np.mean(fields), abs=2e-6)
    assert float(s["ci95_low"]) <= float(s["mean_smoothed_fraction_on_g_scale"]) <= float(s["ci95_high"])
    assert s["num_fields"] == "2" and s["num_seeds"] == "2" and s["interval_over"] == "fields of view and seeds"
  assert [s["flagged_fields"] for s in samples] == ["0", "1"]
  about = (out / "about.txt").read_text()
  assert "on the hypothesis's scale" in about and "samples.csv" in about
