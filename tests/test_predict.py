"""Prediction on new images from a trained workdir: exact tiling, the same numbers as evaluation, skipped files."""
import csv
import json
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax import members, predict
from copper_jax.prediction import tiling
from copper_jax.prediction import sweep as prediction_sweep
from copper_jax.classifier import run as classifier
from copper_jax.data.prepare import prepare_data
from copper_jax.store import workdir
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep
from copper_jax.errors import ConfigError, UserError
from copper_jax.models import SegmentationNet, receptive_field
from tests.reliability_helpers import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def smoke(smoke_sweep):
  return smoke_sweep


def _test_files(work_dir):
  """The workdir's test images as files, and their paths relative to the dataset."""
  with open(os.path.join(work_dir, "splits.json")) as f:
    paths = json.load(f)["splits"]["test"]
  return [os.path.join(work_dir, "data", "images", p) for p in paths], paths


@pytest.mark.parametrize("size, tile, margin", [(64, 64, 8), (200, 64, 16), (96, 40, 8), (4096, 512, 88)])
def test_tile_plan_covers_every_pixel_once_from_a_tile_centre(size, tile, margin):
  plan = tiling.tile_plan(size, tile, margin)
  kept = np.zeros(size, int)
  for start, lo, hi in plan:
    assert start % 8 == 0 and 0 <= start and start + min(tile, size) <= size
    assert lo == 0 or lo - start >= margin            # an inner border is at least `margin` away
    assert hi == size or start + tile - hi >= margin
    kept[lo:hi] += 1
  assert np.all(kept == 1)


@pytest.fixture(scope="module")
def random_logits_fn():
  """Mask logits of a small segmentation net (d=2) with a random head, jitted once for every shape below.

  The zero-initialised head gives a constant mask that would hide any seam; logits rather than the sigmoid so
  no saturation hides a difference either."""
  model = SegmentationNet(c=4, d=2, n=1, N=1)
  # One compiled initialisation: op by op it compiles dozens of small kernels.
  variables = jax.jit(lambda key: model.init(key, jnp.zeros((1, 16, 16, 1)), train=False))(jax.random.key(0))
  head = variables["params"]["head"]
  kernel = jax.random.normal(jax.random.key(1), head["kernel"].shape)
  variables = {**variables, "params": {**variables["params"], "head": {**head, "kernel": kernel}}}
  return jax.jit(lambda x: model.apply(variables, x, False, method=SegmentationNet.mask_logits))


@pytest.mark.parametrize("shape", [(110, 150), (64, 64), (41, 130)])
def test_tiled_prediction_equals_the_whole_image_one(random_logits_fn, shape):
  image = np.asarray(jax.random.normal(jax.random.key(2), shape))
  whole = np.asarray(random_logits_fn(image[None, ..., None])[0])
  config = sweep_configs.get_config("smoke").model
  config.update({"c": 4, "d": 2})
  tile, margin, multiple = tiling.tile_geometry(config, 64)
  assert margin >= receptive_field("segmentation", 4, 2, 1, 1) and margin % multiple == 0
  tiled = tiling.predict_tiled(random_logits_fn, image, tile, margin, multiple)
  assert tiled.shape == shape and whole.std() > 0.3
  np.testing.assert_allclose(tiled, whole, atol=1e-5 * np.abs(whole).max(), rtol=0)


def test_a_tile_too_small_for_the_receptive_field_is_refused():
  config = sweep_configs.get_config("smoke").model
  with pytest.raises(ConfigError, match="tile=16"):
    tiling.tile_geometry(config, 16)


def test_predict_gives_the_masks_of_the_sweep_evaluation(smoke, tmp_path):
  work_dir, summary = smoke
  files, rel = _test_files(work_dir)
  out = tmp_path / "out"
  result = predict.predict(work_dir, files, str(out), seed=0, quiet=True)
  leader = summary["ranking"][0]
  # The same member through the sweep's own evaluation path: the masks must agree to float precision.
  config = workdir.load_config(work_dir)
  dataset, _ = prepare_data(config, work_dir)
  built = sweep_program.build(config, dataset)
  states, _ = sweep_program.restore(work_dir, built)
  index = [dataset.paths.index(p) for p in rel]
  masks = sweep.overlay_masks(built, states, dataset, index, 4)
  m = members.member_index([h.name for h in built.hypotheses].index(leader), 0, config.num_seeds)
  for j, p in enumerate(rel):
    stem = os.path.splitext(p)[0]
    mask = tifffile.imread(out / f"{stem}_probability.tif")
    assert mask.dtype == np.float32 and mask.shape == dataset.image_shape
    np.testing.assert_allclose(mask, masks[m, j], atol=1e-6)
    binary = tifffile.imread(out / f"{stem}_mask.tif")
    assert binary.dtype == np.uint8 and set(np.unique(binary)) <= {0, 255}
    np.testing.assert_array_equal(binary == 255, masks[m, j] >= 0.5)
    overlay = iio.imread(out / f"{stem}_overlay.png")
    assert overlay.shape == (*dataset.image_shape, 3)
  with open(out / "summary.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["output"] for r in table] == [os.path.splitext(p)[0] for p in rel]
  for r, j in zip(table, range(len(rel))):
    assert r["hypothesis"] == leader and r["seeds"] == "0" and r["num_seeds"] == "1"
    assert float(r["smoothed_fraction_on_g_scale"]) == pytest.approx(float(masks[m, j].mean()), abs=1e-6)
    assert "adhesive_fraction" not in r
  assert result["skipped"] == [] and not (out / "skipped.txt").exists()


# imageio tries its deprecated legacy plugins (tifffile, DICOM) on an undecodable file before giving up.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_folders_are_mirrored_and_unreadable_files_skipped(smoke, tmp_path, capsys):
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  src = tmp_path / "new"
  (src / "batch_a").mkdir(parents=True)
  image = iio.imread(files[0])
  iio.imwrite(src / "batch_a" / "good.png", image)
  iio.imwrite(src / "top.png", np.tile(image, (3, 2)))  # larger than any training image: tiles are used
  (src / "batch_a" / "broken.png").write_bytes(b"\x89PNG not really")
  (src / "empty.jpg").write_bytes(b"")
  (src / "notes.txt").write_text("not an image, not listed")
  iio.imwrite(src / "deep16.png", image.astype(np.uint16) * 256)
  out = src / "predictions"
  predict.predict(work_dir, [str(src)], str(out), member="linear", tile=32, quiet=True)
  # A second run into the same folder, inside the input, does not take the first run's overlays as images.
  result = predict.predict(work_dir, [str(src)], str(out), member="linear", tile=32, quiet=True)
  assert sorted(r["output"] for r in result["rows"]) == ["batch_a/good", "top"]
  assert tifffile.imread(out / "top_probability.tif").shape == (3 * image.shape[0], 2 * image.shape[1])
  assert {r["hypothesis"] for r in result["rows"]} == {"linear"}
  skipped = (out / "skipped.txt").read_text().splitlines()
  assert len(skipped) == 3
  assert any("broken.png" in s and "not a decodable image" in s for s in skipped)
  assert any("empty.jpg" in s and "empty" in s for s in skipped)
  assert any("deep16.png" in s and "uint16" in s for s in skipped)
  assert capsys.readouterr().err.count("skipped: ") == 6


def test_bad_requests_fail_in_one_line(smoke, tmp_path):
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  with pytest.raises(UserError, match="use one of linear, power"):
    predict.predict(work_dir, files, str(tmp_path / "o"), member="cubic", quiet=True)
  with pytest.raises(UserError, match="no such file"):
    predict.predict(work_dir, [str(tmp_path / "missing")], str(tmp_path / "o"), quiet=True)
  (tmp_path / "bad.png").write_bytes(b"nope")
  with pytest.raises(UserError, match="none of the 1 image"):
    predict.predict(work_dir, [str(tmp_path / "bad.png")], str(tmp_path / "o"), quiet=True)


HOSTILE_SAMPLES = ['=HYPERLINK("http:example.com","x")', "+cmd|calc", "@SUM(A1)", "-2+3", "\tlead", "summary.csv"]


def test_hostile_names_are_neutralised_shortened_or_kept_apart_and_tiny_images_skipped(smoke, tmp_path):
  """Sample folders named like formulas or like the run's own files, a name too long for the file system with its
  suffix, two images with one stem and a 1 x 1 image: every usable image is predicted, in one run."""
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  image = iio.imread(files[0])
  src = tmp_path / "new"
  for name in HOSTILE_SAMPLES:
    (src / name).mkdir(parents=True)
    iio.imwrite(src / name / "field.png", image)
  long_name = "n" * 241 + ".png"  # 245 bytes: fits as an input, not with "_probability.tif" appended
  iio.imwrite(src / long_name, image)
  iio.imwrite(src / "twin.png", image)
  tifffile.imwrite(src / "twin.tif", image)
  iio.imwrite(src / "dot.png", image[:1, :1])
  out = tmp_path / "out"
  result = predict.predict(work_dir, [str(src)], str(out), member="linear", quiet=True)
  by_path = {os.path.relpath(r["path"], src): r for r in result["rows"]}
  assert len(by_path) == len(HOSTILE_SAMPLES) + 3
  for row in by_path.values():
    assert os.path.exists(os.path.join(out, row["output"] + "_probability.tif"))
  assert by_path[long_name]["output"] != long_name[:-4] and len(by_path[long_name]["output"]) < 80
  assert by_path["summary.csv/field.png"]["output"] != "summary.csv/field" and (out / "summary.csv").is_file()
  assert by_path["twin.png"]["output"] != by_path["twin.tif"]["output"]
  assert len(result["skipped"]) == 1 and "dot.png" in result["skipped"][0] and "at least" in result["skipped"][0]
  with open(out / "samples.csv", newline="") as f:
    samples = [r["sample"] for r in csv.DictReader(f)]
  with open(out / "summary.csv", newline="") as f:
    table = list(csv.DictReader(f))
  cells = [cell for row in table for cell in row.values()]
  for name in HOSTILE_SAMPLES[:3] + ["\tlead"]:
    assert "'" + name in samples  # shown as text, never run
  assert "-2+3" not in samples and "'-2+3" in samples
  assert not any(cell.startswith(("=", "+", "@", "\t")) for cell in cells)
  assert all(0 <= float(row["smoothed_fraction_on_g_scale"]) <= 1 for row in table)  # numbers stay numbers


def test_an_out_folder_of_someone_elses_files_is_refused_untouched(smoke, tmp_path):
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  out = tmp_path / "mine"
  out.mkdir()
  mine = {"summary.csv": "my,table\n", "samples.csv": "x\n", "about.txt": "my notes", "skipped.txt": "keep me"}
  for name, text in mine.items():
    (out / name).write_text(text)
  with pytest.raises(UserError, match="already holds files copper_jax did not write"):
    predict.predict(work_dir, files, str(out), quiet=True)
  assert {p.name: p.read_text() for p in out.iterdir()} == mine
  elsewhere = tmp_path / "image.png"
  elsewhere.write_bytes(open(files[0], "rb").read())
  with pytest.raises(UserError, match="is a sweep workdir, not a predictions folder"):
    predict.predict(work_dir, [str(elsewhere)], work_dir, quiet=True)


def test_classifier_workdir_gives_probabilities_and_cams(tmp_path):
  config = classifier_configs.get_config("smoke")
  config.train.num_epochs = 2
  config.train.eval_every_epochs = 1
  config.eval.num_cam = 0
  work_dir = str(tmp_path / "clf")
  classifier.train_and_evaluate(config, work_dir, quiet=True)
  files, rel = _test_files(work_dir)
  result = predict.predict(work_dir, files, str(tmp_path / "out"), quiet=True)
  assert result["kind"] == "classifier"
  for row, p in zip(result["rows"], rel):
    probabilities = [float(row[f"p_t={t:g}"]) for t in (0, 2, 4, 6)]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert float(row["predicted_stress_time"]) == (0, 2, 4, 6)[int(np.argmax(probabilities))]
    assert iio.imread(tmp_path / "out" / (os.path.splitext(p)[0] + "_cam.png")).shape == (64, 64, 3)
  # An image smaller than the classifier's pooling goes to skipped.txt; the others are still predicted.
  iio.imwrite(tmp_path / "dot.png", iio.imread(files[0])[:1, :1])
  result = predict.predict(work_dir, [files[0], str(tmp_path / "dot.png")], str(tmp_path / "out2"), quiet=True)
  assert len(result["rows"]) == 1 and "dot.png" in result["skipped"][0] and "poolings" in result["skipped"][0]
  with pytest.raises(UserError, match="classifier workdir: --member only apply to a sweep"):
    predict.predict(work_dir, files, str(tmp_path / "out3"), member="linear", quiet=True)


def test_launcher_quiet_prints_only_the_final_line(smoke, tmp_path):
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  result = subprocess.run(
      [sys.executable, "launch/predict.py", f"--workdir={work_dir}", f"--out={tmp_path / 'o'}", "--quiet",
       f"--images={files[0]}", files[1]], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines() == [f"2 image(s) predicted, 0 skipped: {tmp_path / 'o'}/summary.csv"]
  assert result.stderr == ""
  bad = subprocess.run([sys.executable, "launch/predict.py", f"--workdir={work_dir}", f"--out={tmp_path / 'o'}",
                        "--member=cubic", files[0]], cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "cubic" in bad.stderr


def test_whole_images_by_default_and_exact_tiles_when_memory_is_short(smoke, tmp_path, monkeypatch):
  from copper_jax import device_memory
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  monkeypatch.setattr(prediction_sweep, "FALLBACK_TILE", 0)  # the smallest exact tile, so these small images are tiled
  predictor = predict.SweepPredictor(work_dir, member="linear")
  # A random head, so that a seam or a shifted tile would show (the trained smoke head is nearly flat).
  head = predictor.state.params["net"]["head"]
  kernel = jax.random.normal(jax.random.key(3), head["kernel"].shape)
  predictor.state = predictor.state.replace(params={**predictor.state.params, "net": {
      **predictor.state.params["net"], "head": {**head, "kernel": kernel}}})
  pixels = np.tile(predictor.reader.read(files[0]), (2, 3))
  height, width = pixels.shape[0] - predictor.reader.crop_bottom, pixels.shape[1]
  assert predictor.tile == 0 and predictor.tile_for(height, width) == 0
  whole = predictor.mask(pixels)
  monkeypatch.setattr(device_memory, "available_memory_bytes", lambda device=None: 1024)
  tile = predictor.tile_for(height, width)
  assert 0 < tile < min(height, width) and tile == 2 * predictor.margin + predictor.multiple
  tiled = predictor.mask(pixels)
  assert whole.std() > 0.05
  np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_predict_needs_only_the_summary_of_the_training_data(smoke, tmp_path):
  import shutil
  from copper_jax.data import prepare
  work_dir, _ = smoke
  files, _ = _test_files(work_dir)
  config = workdir.load_config(work_dir)
  dataset, split = prepare_data(config, work_dir)
  saved = prepare.load_summary(config, work_dir)
  assert os.path.exists(os.path.join(work_dir, prepare.SUMMARY_FILE))
  expected = prepare.DataSummary.of(dataset, split)
  np.testing.assert_array_equal(saved.stress_times, expected.stress_times)
  np.testing.assert_allclose(saved.tau, dataset.tau)
  assert (saved.label_names, saved.image_shape, saved.dtype, saved.mean, saved.std, saved.split_sizes) == (
      expected.label_names, expected.image_shape, expected.dtype, expected.mean, expected.std, expected.split_sizes)

  new = tmp_path / "new"
  new.mkdir()
  for f in files[:2]:
    shutil.copy(f, new / os.path.basename(f))
  reference = predict.predict(work_dir, [str(new)], str(tmp_path / "reference"), quiet=True)
  # The workdir without its training images: the summary is enough, and the masks are the same.
  moved = tmp_path / "moved"
  shutil.copytree(work_dir, moved, ignore=shutil.ignore_patterns("data"))
  result = predict.predict(str(moved), [str(new)], str(tmp_path / "out"), quiet=True)
  fractions = lambda rows: [r["smoothed_fraction_on_g_scale"] for r in rows]
  assert fractions(result["rows"]) == fractions(reference["rows"])
  for row in result["rows"]:
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{row['output']}_probability.tif"),
                                  tifffile.imread(tmp_path / "reference" / f"{row['output']}_probability.tif"))
  # A garbled summary is named, with the fix.
  (moved / prepare.SUMMARY_FILE).write_text("{not json")
  with pytest.raises(UserError, match="data_summary.json is unreadable.*delete it"):
    predict.predict(str(moved), [str(new)], str(tmp_path / "out2"), quiet=True)
  # A workdir trained before the summary existed loads its training data instead.
  older = tmp_path / "older"
  shutil.copytree(work_dir, older)
  os.remove(older / prepare.SUMMARY_FILE)
  result = predict.predict(str(older), [str(new)], str(tmp_path / "out3"), quiet=True)
  assert fractions(result["rows"]) == fractions(reference["rows"])
