"""Files as real microscopes write them, rebuilt small here: the reader, the vendors' metadata, info bars, pages,
resampling and the inspection of a folder. Each test reproduces one structure a real instrument file has."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile

from copper_jax.data import folder, image_reader, inspection, prepare, scale, sem_metadata
from copper_jax.data.folder import load_folder
from copper_jax.errors import ConfigError, DataError
from tests import sem_tiffs

RNG = np.random.default_rng(0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _surface(shape=(48, 40), dtype=np.uint8):
  return RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def _fei(path, surface, pixel_width="2.5e-009", scanned_rows=None, bar_rows=8, **kwargs):
  """An FEI/Thermo file, directory after the pixels: `surface` with a `bar_rows` info bar below it."""
  pixels = sem_tiffs.with_info_bar(surface, bar_rows) if bar_rows else surface
  rows = surface.shape[0] if scanned_rows is None else scanned_rows
  return sem_tiffs.tiff_directory_last(str(path), pixels, [(34682, sem_tiffs.fei_text(pixel_width, rows, **kwargs))])


def _within(seconds, fn):
  """fn()'s result, failing when it is still running after `seconds` (a hang, e.g. on a FIFO)."""
  out = {}
  worker = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
  worker.start()
  worker.join(seconds)
  assert not worker.is_alive(), "still running: a hang"
  return out["value"]


def test_directory_after_the_pixels_is_read_and_the_size_check_uses_the_same_reader(tmp_path):
  # The pixels (76 KiB) come before the directory, beyond the first 64 KiB a header sniffer would read.
  surface = _surface((300, 256))
  for t in ("0", "1"):
    for k in range(2):
      _fei(tmp_path / t / f"f{k}.tif", surface, bar_rows=12)
  path = str(tmp_path / "0" / "f0.tif")
  with open(path, "rb") as f:
    head = f.read(4 + 4)
  assert int.from_bytes(head[4:], "little") > (1 << 16)  # the directory really is past 64 KiB
  info = image_reader.read_info(path)
  assert (info.height, info.width, info.dtype) == (312, 256, "uint8")
  assert folder.peek_image_shape(tmp_path) == (312, 256)
  assert folder.peek_image_shape(tmp_path, crop_bottom="auto") == (300, 256)
  dataset = load_folder(tmp_path, crop_bottom="auto")
  assert dataset.image_shape == (300, 256) and np.array_equal(dataset.images[0], surface)
  meta = dataset.metadata[0]
  assert (meta["vendor"], meta["pixel_size_nm"], meta["info_bar_rows"]) == ("FEI/Thermo", pytest.approx(2.5), 12)
  assert meta["pixel_size_source"] == "FEI tag 34682 [Scan] PixelWidth"


def test_lzw_compressed_tiff_decodes_and_jeol_sidecar_gives_its_scale(tmp_path):
  pixels = _surface((40, 64))
  path = str(tmp_path / "jeol.tif")
  tifffile.imwrite(path, pixels, compression="lzw")  # needs imagecodecs, as JEOL's files do
  (tmp_path / "jeol.txt").write_text("$CM_MAG 5000\n$CM_ACCEL_VOLT 15.00\n$CM_SIGNAL SEI\n$$SM_MICRON_BAR 128\n"
                                     "$$SM_MICRON_MARKER 1,28um\n")
  assert np.array_equal(image_reader.read_gray(path), pixels)
  meta = sem_metadata.read_sem_metadata(path)
  assert (meta.vendor, meta.pixel_size_nm, meta.voltage_kv, meta.detector) == ("JEOL", pytest.approx(10.0), 15.0,
                                                                                "SEI")


def test_tescan_binary_chunks_give_pixel_size_voltage_and_the_recorded_strip(tmp_path):
  surface = _surface((100, 64), np.uint16)
  path = str(tmp_path / "tescan.tif")
  tag = sem_tiffs.tescan_chunks({"Device": "MIRA3 XMU", "PixelSizeX": "2.5012e-6", "ImageStripSize": "20",
                                 "Magnification": "108.08"}, {"HV": "10.0000e3", "Detector": "SE"})
  # Dark rows above the strip, as around a TESCAN field of view: a pixel rule would run on into them.
  surface[-30:] = 0
  pixels = sem_tiffs.with_info_bar(surface, 20)
  tifffile.imwrite(path, pixels, extratags=[(50431, 7, None, tag, True)])
  meta = sem_metadata.read_sem_metadata(path)
  assert (meta.vendor, meta.instrument, meta.pixel_size_nm, meta.voltage_kv, meta.detector) == (
      "TESCAN", "MIRA3 XMU", pytest.approx(2501.2), 10.0, "SE")
  assert (meta.info_bar_rows, meta.info_bar_source) == (20, "TESCAN tag 50431 MAIN ImageStripSize")
  assert image_reader.read_gray(path).dtype == np.uint16


@pytest.mark.parametrize("entries, struct_m, expected, source", [
    ({"ap_image_pixel_size": ("Image Pixel Size", "3.1 nm")}, None, 3.1, "ap_image_pixel_size"),
    ({"ap_pixel_size": ("Pixel Size", "5.825 nm")}, None, 5.825 * 1024 / 512, "ap_pixel_size x 1024 / width"),
    ({"ap_pixel_size": ("Pixel Size", "2,5 µm")}, None, 2500 * 1024 / 512, "ap_pixel_size"),  # decimal comma
    ({"ap_mag": ("Mag", "50.00 K X")}, 5.824988e-9, 5.824988 * 1024 / 512, "first struct entry"),
    # The panel's rounded value and the struct's unrounded one agree: the unrounded one is kept.
    ({"ap_image_pixel_size": ("Image Pixel Size", "11.65 nm")}, 5.824988e-9, 5.824988 * 1024 / 512,
     "first struct entry x 1024 / width (agrees with ap_image_pixel_size)"),
    # They disagree beyond rounding: the image's own entry wins.
    ({"ap_image_pixel_size": ("Image Pixel Size", "3.1 nm")}, 5.824988e-9, 3.1, "ap_image_pixel_size"),
])
def test_zeiss_pixel_size_from_each_way_it_is_recorded(tmp_path, entries, struct_m, expected, source):
  path = str(tmp_path / "zeiss.tif")
  # Zeiss writes its text in a Windows code page (µ is one byte), which a TIFF ASCII tag cannot hold.
  text = sem_tiffs.zeiss_text(entries, struct_m).encode("cp1252")
  tifffile.imwrite(path, _surface((32, 512)), extratags=[(34118, 7, None, text, True)])
  meta = sem_metadata.read_sem_metadata(path)
  assert meta.vendor == "Zeiss" and meta.pixel_size_nm == pytest.approx(expected, rel=1e-6)
  assert source in meta.pixel_size_source


def test_fei_nav_camera_scale_comes_from_the_field_width_or_nowhere(tmp_path):
  surface = _surface((40, 64))
  # Recorded 128 pixels across (a frame saved at half its scan width): the field is divided by the recorded width.
  navcam = _fei(tmp_path / "nav.tif", surface, pixel_width=None, beam="IRBeam", bar_rows=4,
                beam_lines="HFW=0.016896\r\n", image_lines="ResolutionX=128\r\nMagCanvasRealWidth=0.16896\r\n")
  meta = sem_metadata.read_sem_metadata(navcam)
  assert meta.pixel_size_nm == pytest.approx(0.016896e9 / 128) and meta.magnification == "10 x"
  assert meta.pixel_size_source == "FEI tag 34682 [IRBeam] HFW / [Image] ResolutionX"
  bare = _fei(tmp_path / "bare.tif", surface, pixel_width=None, beam="IRBeam", bar_rows=4)
  assert sem_metadata.read_sem_metadata(bare).pixel_size_nm is None


@pytest.mark.parametrize("pixel_width", ["1e300", "5", "1e-25", "inf", "nan"])
def test_implausible_pixel_sizes_are_dropped_with_one_line_naming_the_value(tmp_path, pixel_width):
  surface = _surface()
  for t in ("0", "1"):
    for k in range(2):
      _fei(tmp_path / t / f"f{k}.tif", surface, pixel_width=pixel_width, bar_rows=0)
  meta = sem_metadata.read_sem_metadata(str(tmp_path / "0" / "f0.tif"))
  assert meta.pixel_size_nm is None and len(meta.problems) == 1 and "not plausible" in meta.problems[0]
  with pytest.warns(UserWarning) as caught:
    dataset = load_folder(tmp_path)  # identical files: not "mixed", and no infinity anywhere
  lines = [str(w.message) for w in caught if "not plausible" in str(w.message)]
  assert len(lines) == 1 and "\n" not in lines[0] and "f0.tif" in lines[0]
  assert dataset.pixel_size_nm is None and dataset.pixel_size_range_nm is None
  summary = prepare.DataSummary.of(dataset, {"train": [0, 1, 2, 3]})
  json.loads(json.dumps({"pixel_size_nm": summary.pixel_size_nm}, allow_nan=False))


@pytest.mark.parametrize("unit, per_unit, expected_nm", [
    ("micron", 5.928571, 168.675), ("um", 200.0, 5.0), ("\\u00B5m", 200.0, 5.0), ("nm", 0.5, 2.0),
    ("cm", 10000.0, 1000.0), ("inch", 25400.0, 1000.0), ("mm", 1000.0, 1000.0), ("pixel", 1.0, None)])
def test_imagej_calibration_units(tmp_path, unit, per_unit, expected_nm):
  # Fiji writes µm as the escape "\\u00B5m" in its ASCII description.
  path = str(tmp_path / "fiji.tif")
  tifffile.imwrite(path, _surface((16, 16)).astype(np.float32), imagej=True, resolution=(per_unit, per_unit),
                   metadata={"unit": unit})
  meta = sem_metadata.read_sem_metadata(path)
  assert meta.pixel_size_nm == (pytest.approx(expected_nm, rel=1e-4) if expected_nm else None)


def test_number_and_length_parsing():
  assert sem_metadata.parse_number("2.5012e-006") == pytest.approx(2.5012e-6)
  assert sem_metadata.parse_number("1,25") == 1.25 and sem_metadata.parse_number("notafloat") is None
  assert sem_metadata.parse_length_nm("2,5 µm") == pytest.approx(2500)
  assert sem_metadata.parse_length_nm("1.5 um") == pytest.approx(1500)
  assert sem_metadata.parse_length_nm(3, "micron") == pytest.approx(3000)
  assert sem_metadata.parse_length_nm("2 furlongs") is None


def test_a_recorded_bar_taller_than_plausible_is_ignored_for_the_pixel_rule(tmp_path):
  surface = _surface((64, 48))
  path = _fei(tmp_path / "f.tif", surface, scanned_rows=1, bar_rows=0)  # ResolutionY=1 on a 64-row image
  meta = sem_metadata.read_sem_metadata(path)
  assert meta.info_bar_rows is None and "63 rows" in meta.problems[0]
  assert sem_metadata.info_bar(meta, surface) == (0, "pixels")


def test_pixel_rule_finds_a_bar_above_rows_of_image_and_stops_at_a_plausible_height():
  surface = _surface((96, 64))
  zeiss_like = np.concatenate([sem_tiffs.with_info_bar(surface, 10), _surface((1, 64))])  # one image row below
  assert sem_metadata.detect_info_bar_rows(zeiss_like) == 11
  assert sem_metadata.detect_info_bar_rows(surface) == 0
  # A dark surround below a bar (flat rows past a quarter of the height) is no measurable bar.
  surround = np.concatenate([sem_tiffs.with_info_bar(surface, 10), np.zeros((40, 64), np.uint8)])
  assert sem_metadata.detect_info_bar_rows(surround) == 0


def test_auto_crop_crops_each_files_record_and_warns_with_the_value_for_the_rest(tmp_path):
  surface = _surface()
  for t in ("0", "1"):
    for k in range(2):
      _fei(tmp_path / t / f"f{k}.tif", surface, bar_rows=8)
  dataset = load_folder(tmp_path, crop_bottom="auto")
  assert dataset.crops == [8] * 4 and dataset.image_shape == surface.shape
  # Files recording no bar (plain TIFFs with one drawn in): auto crops nothing, and the warning says what to set.
  plain = tmp_path / "plain"
  for t in ("0", "1"):
    for k in range(2):
      sem_tiffs.write_tiff(str(plain / t / f"f{k}.tif"), sem_tiffs.with_info_bar(surface, 8), None)
  with pytest.warns(UserWarning, match=r"data.crop_bottom=auto.*set data.crop_bottom=8"):
    assert load_folder(plain, crop_bottom="auto").crops == [0] * 4
  with pytest.raises(ConfigError, match="'auto'"):
    load_folder(tmp_path, crop_bottom="all")


def test_two_page_files_read_page_zero_unless_told(tmp_path):
  pages = np.stack([_surface(), _surface()])
  for t in ("0", "1"):
    for k in range(2):
      os.makedirs(tmp_path / t, exist_ok=True)
      tifffile.imwrite(tmp_path / t / f"f{k}.tif", pages)
  path = str(tmp_path / "0" / "f0.tif")
  assert image_reader.read_info(path).pages == 2
  assert np.array_equal(load_folder(tmp_path).images[0], pages[0])
  assert np.array_equal(load_folder(tmp_path, page=1).images[0], pages[1])
  with pytest.raises(DataError, match="has 2 page"):
    load_folder(tmp_path, page=2)
  row = inspection.inspect_file(path)
  assert row["pages"] == 2 and "page 0 is read" in row["problems"]


def test_sidecars_are_read_only_when_regular_and_small(tmp_path):
  surface = _surface()
  for t in ("0", "1"):
    for k in range(2):
      sem_tiffs.write_tiff(str(tmp_path / t / f"f{k}.tif"), surface, None)
  os.mkfifo(tmp_path / "0" / "f0.txt")  # opening it would wait for a writer forever
  os.symlink("/dev/zero", tmp_path / "0" / "f1.txt")  # reading it would never end
  (tmp_path / "1" / "f0.txt").write_text("$CM_MAG 5000\n" + "x" * sem_metadata.SIDECAR_MAX_BYTES)
  dataset = _within(60, lambda: load_folder(tmp_path))
  assert [m["vendor"] for m in dataset.metadata] == [None] * 4


def test_mixed_sizes_with_allow_are_recorded_as_they_are_and_predict_compares_with_their_range(tmp_path):
  surface = _surface()
  for t, size in (("0", "2615e-9"), ("1", "593.3e-9")):
    for k in range(2):
      _fei(tmp_path / t / f"f{k}.tif", surface, pixel_width=size, bar_rows=0)
  with pytest.warns(UserWarning, match="mixed_pixel_sizes=allow"):
    dataset = load_folder(tmp_path, mixed_pixel_sizes="allow")
  assert dataset.pixel_size_nm is None  # no median: no image has it
  assert dataset.pixel_size_range_nm == [pytest.approx(593.3), pytest.approx(2615)]
  summary = prepare.DataSummary.of(dataset, {"train": [0, 1, 2, 3]})
  assert summary.pixel_size_flag(2615.0) is None and summary.pixel_size_flag(593.3) is None
  assert "outside" not in (summary.pixel_size_flag(1000.0) or "")
  assert "trained on 593.3..2615 nm" in summary.pixel_size_flag(5000.0)
  assert "no pixel size" in summary.pixel_size_flag(None)


def test_resampling_is_anti_aliased():
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # the finest texture there is
  shrunk = scale.resample(checker, 1.0, 2.0)
  assert shrunk.shape == (32, 32) and abs(float(shrunk.mean()) - 127.5) < 2 and shrunk.std() < 3
  assert np.array_equal(scale.resample(checker, 2.0, 2.0), checker)


def test_pixel_size_nm_resamples_a_set_of_two_magnifications_to_one_scale(tmp_path):
  for t in ("0", "1"):
    _fei(tmp_path / t / "fine.tif", _surface((64, 64)), pixel_width="2e-9", bar_rows=6)
    _fei(tmp_path / t / "coarse.tif", _surface((32, 32)), pixel_width="4e-9", bar_rows=6)
  with pytest.raises(DataError):
    load_folder(tmp_path, crop_bottom="auto")  # two sizes, two scales
  dataset = load_folder(tmp_path, crop_bottom="auto", pixel_size_nm=4.0)
  assert dataset.image_shape == (32, 32) and dataset.resampled_to_nm == 4.0 and dataset.pixel_size_nm == 4.0
  assert [m["pixel_size_nm"] for m in dataset.metadata] == [pytest.approx(4), pytest.approx(2)] * 2
  summary = prepare.DataSummary.of(dataset, {"train": [0, 1, 2, 3]})
  assert summary.resampled_to_nm == 4.0 and summary.pixel_size_flag(7.0) is None
  # A file without a pixel size cannot be resampled: one line naming it.
  sem_tiffs.write_tiff(str(tmp_path / "1" / "plain.tif"), _surface((32, 32)), None)
  with pytest.raises(DataError, match=r"plain.tif records no pixel size.*data.pixel_size_nm=0"):
    load_folder(tmp_path, crop_bottom="auto", pixel_size_nm=4.0)
  with pytest.raises(ConfigError, match="pixel_size_nm"):
    load_folder(tmp_path, pixel_size_nm=1e9)


def test_inspection_lists_every_file_and_what_a_sweep_would_refuse(tmp_path):
  surface = _surface()
  _fei(tmp_path / "0" / "a.tif", surface, pixel_width="2.5e-9")
  _fei(tmp_path / "1" / "b.tif", surface, pixel_width="5e-9")
  (tmp_path / "1" / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
  rows, summary = inspection.inspect_folder(str(tmp_path))
  assert [r["path"] for r in rows] == ["0/a.tif", "1/b.tif", "1/broken.tif"]
  assert rows[0]["info_bar_rows"] == 8 and rows[0]["info_bar_source"] == "FEI tag 34682 [Image] ResolutionY"
  assert not rows[2]["readable"] and "broken.tif" in rows[2]["problems"]
  text = "\n".join(summary)
  assert "3 image file(s)" in text and "2 readable" in text and "mixed pixel sizes" in text
  assert "1 unreadable" in text
  header = inspection.rows_csv(rows).splitlines()[0]
  assert header.split(",") == list(inspection.COLUMNS)


def test_inspect_rows_keep_formulas_out_of_the_spreadsheet(tmp_path):
  _fei(tmp_path / "=HYPERLINK(1)" / "+cmd.tif", _surface(), pixel_width="2.5e-9")
  rows, _ = inspection.inspect_folder(str(tmp_path))
  text = inspection.rows_csv(rows)
  cell = text.splitlines()[1].split(",")[0]
  assert cell.startswith("'=HYPERLINK(1)") and ",2.5," in text  # the name shown, not run; the number a number


def test_inspect_launcher_writes_the_rows_and_never_overwrites(tmp_path):
  _fei(tmp_path / "images" / "0" / "a.tif", _surface())
  out = tmp_path / "rows.csv"
  command = [sys.executable, os.path.join(REPO, "launch", "inspect.py"), f"--images={tmp_path / 'images'}",
             f"--out={out}"]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert "1 image file(s)" in done.stdout and out.read_text().startswith("path,readable,")
  again = subprocess.run(command, capture_output=True, text=True, check=False)
  assert again.returncode != 0 and "exists" in again.stderr and out.read_text().startswith("path,readable,")


def test_new_data_keys_take_auto_and_pixel_sizes_and_refuse_the_rest_in_one_line():
  from configs import sweep as sweep_configs
  from copper_jax import config_rules
  config = sweep_configs.get_config("smoke")
  assert (config.data.crop_bottom, config.data.page, config.data.pixel_size_nm) == (0, 0, 0.0)
  for crop, size in (("auto", 0.0), (64, 2.5), (0, 1e6)):
    config.data.crop_bottom, config.data.pixel_size_nm = crop, size
    config_rules.check(config, config_rules.SWEEP)
  for key, value, words in (("crop_bottom", "bar", "'auto'"), ("crop_bottom", -1, "'auto'"),
                            ("pixel_size_nm", 1e-3, "0.01"), ("pixel_size_nm", float("inf"), "0.01"),
                            ("page", -1, ">= 0")):
    bad = sweep_configs.get_config("smoke")
    bad.data[key] = value
    with pytest.raises(ConfigError) as e:
      config_rules.check(bad, config_rules.SWEEP)
    assert f"config.data.{key}=" in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_predict_reads_new_images_as_the_training_images_were_prepared(tmp_path):
  from configs import sweep as sweep_configs
  from copper_jax.prediction import reader as reader_lib
  surface = _surface((64, 64))
  path = _fei(tmp_path / "new.tif", surface, pixel_width="2e-9", bar_rows=8)
  config = sweep_configs.get_config("smoke")
  config.data.crop_bottom, config.data.pixel_size_nm, config.data.standardise = "auto", 4.0, "image"
  summary = prepare.DataSummary(stress_times=np.array([0.0, 1.0]), label_names=["0", "1"], image_shape=(32, 32),
                                dtype=np.dtype(np.uint8), mean=0.0, std=1.0, split_sizes={}, pixel_size_nm=4.0,
                                pixel_size_range_nm=[2.0, 2.0], resampled_to_nm=4.0)
  reader = reader_lib.Reader(config, summary)
  image = reader.read(path)
  assert image.shape == (32, 32) and reader.crop_bottom == 0  # the bar cut, then resampled from 2 to 4 nm
  meta = reader.metadata(path, image.shape[0])
  assert (meta.info_bar_rows, meta.pixel_size_nm) == (0, 4.0)
  assert summary.pixel_size_flag(meta.pixel_size_nm) is None


def test_hitachi_and_tescan_sidecars(tmp_path):
  surface = _surface((60, 40))
  hitachi = sem_tiffs.write_tiff(str(tmp_path / "hitachi.tif"), surface, None)
  (tmp_path / "hitachi.txt").write_text("[SemImageFile]\nInstructName=S-4800\nPixelSize=19.84375\n"
                                        "AcceleratingVoltage=15000 Volt\nMagnification=5000\nSignalName=SE(U)\n")
  meta = sem_metadata.read_sem_metadata(hitachi)
  assert (meta.vendor, meta.instrument, meta.pixel_size_nm, meta.voltage_kv) == ("Hitachi", "S-4800",
                                                                                 pytest.approx(19.84375), 15.0)
  tescan = sem_tiffs.write_tiff(str(tmp_path / "tescan.tif"), sem_tiffs.with_info_bar(surface, 10), None)
  (tmp_path / "tescan-tif.hdr").write_text("[MAIN]\r\nDevice=VEGA3\r\nPixelSizeX=1,5e-8\r\nImageStripSize=10\r\n"
                                           "[SEM]\r\nHV=20000\r\n")
  meta = sem_metadata.read_sem_metadata(tescan)
  assert (meta.vendor, meta.pixel_size_nm, meta.voltage_kv, meta.info_bar_rows) == ("TESCAN", pytest.approx(15.0),
                                                                                    20.0, 10)
