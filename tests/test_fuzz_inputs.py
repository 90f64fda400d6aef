"""Fuzz pass over the data loader: every bad file gives one clear DataError line naming it, or a listed skip.

Never a hang (each load runs under a timeout), never an exception type from inside a decoder, never a huge
allocation from a header that lies about the image size.
"""
import os
import struct
import threading

import imageio.v3 as iio
import numpy as np
import pytest

from copper_jax.data import folder, image_reader
from copper_jax.data.folder import load_folder
from copper_jax.errors import ConfigError, DataError
from tests.reliability_helpers import png_claiming

SHAPE = (32, 40)
# Seconds one load of a small folder may take; a hang shows up as a failure instead of a stuck suite.
LOAD_TIMEOUT = 20


def _pixels(seed=0):
  return np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)


def _encoded(extension, pixels=None):
  """`pixels` (default: a fixed random image) encoded in the format of `extension`."""
  return iio.imwrite("<bytes>", _pixels() if pixels is None else pixels, extension=extension, plugin="pillow")


def _tiff_header(width, height, big_endian=False):
  """A classic TIFF whose first page declares width x height 8-bit gray pixels stored in a 16-byte strip."""
  order = ">" if big_endian else "<"
  entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
             (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1), (279, 4, 1, 16)]
  ifd = struct.pack(order + "H", len(entries))
  for tag, kind, count, value in entries:
    value_bytes = struct.pack(order + ("H" if kind == 3 else "I"), value).ljust(4, b"\x00")
    ifd += struct.pack(order + "HHI", tag, kind, count) + value_bytes
  start = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(order + "I", 8)
  return start + ifd + struct.pack(order + "I", 0) + bytes(16)


def _bmp_header(width, height):
  """A BMP that declares width x height 8-bit pixels and ends after its headers."""
  info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 256, 0)
  return b"BM" + struct.pack("<IHHI", 14 + len(info) + 1024, 0, 0, 14 + len(info) + 1024) + info + bytes(1024)


def _jpeg_header(width, height):
  """A JPEG's start and a baseline frame header declaring width x height, then nothing."""
  frame = struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0])
  return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9) + (
      b"\xff\xc0" + struct.pack(">H", 2 + len(frame)) + frame)


def _folder_with(tmp_path, name, content):
  """A valid two-label dataset (two images per label) plus `content` written as 1/`name`; its path."""
  for t in ("0", "1"):
    os.makedirs(tmp_path / t, exist_ok=True)
    for k in range(2):
      iio.imwrite(tmp_path / t / f"good_{k}.png", _pixels(k))
  path = os.path.join(os.fsencode(tmp_path / "1"), os.fsencode(name))
  if content is not None:
    with open(path, "wb") as f:
      f.write(content)
  return os.fsdecode(path)


def _within(seconds, fn):
  """fn()'s result or exception, failing the test if it runs longer than `seconds` (a hang)."""
  outcome = {}

  def target():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # carried to the test thread
      outcome["error"] = e

  worker = threading.Thread(target=target, daemon=True)
  worker.start()
  worker.join(seconds)
  assert not worker.is_alive(), f"{fn} still running after {seconds} s: a hang"
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


def _one_line_error(root, shown_name, *words, **load_kwargs):
  """Loads `root`, which must fail with a one-line DataError naming `shown_name` and each of `words`."""
  with pytest.raises(DataError) as info:
    _within(LOAD_TIMEOUT, lambda: load_folder(root, **load_kwargs))
  message = str(info.value)
  assert "\n" not in message and shown_name in message, message
  for word in words:
    assert word in message, f"{word!r} not in {message!r}"
  return message


def _listed_skip(root, shown_name, **load_kwargs):
  """With skip_unreadable=True the bad file is left out, named in dataset.skipped and in a warning."""
  with pytest.warns(UserWarning, match="skipped 1 unreadable") as caught:
    dataset = _within(LOAD_TIMEOUT, lambda: load_folder(root, skip_unreadable=True, **load_kwargs))
  assert len(dataset.images) == 4 and len(dataset.skipped) == 1
  assert shown_name in dataset.skipped[0] and shown_name in str(caught[0].message)
  return dataset


# name, content, words the error must contain. Each is refused, and skipped and listed when asked.
BAD_FILES = [
    ("random.png", np.random.default_rng(1).bytes(4096), ["not a decodable image"]),
    ("random.tif", np.random.default_rng(2).bytes(4096), ["not a decodable image"]),
    ("random_with_png_magic.png", b"\x89PNG\r\n\x1a\n" + np.random.default_rng(3).bytes(500),
     ["not a decodable image"]),
    ("random_with_tiff_magic.tif", b"II*\x00" + np.random.default_rng(4).bytes(500), ["not a decodable image"]),
    ("random_with_jpeg_magic.jpg", b"\xff\xd8\xff" + np.random.default_rng(5).bytes(500),
     ["not a decodable image"]),
    ("zero.png", b"", ["empty"]),
    ("zero.tif", b"", ["empty"]),
    ("huge_100000x100000.png", png_claiming(100000, 100000), ["100000x100000", "max_pixels"]),
    ("huge.tif", _tiff_header(100000, 100000), ["100000x100000", "max_pixels"]),
    ("huge_big_endian.tiff", _tiff_header(100000, 100000, big_endian=True), ["100000x100000", "max_pixels"]),
    # Pillow refuses these sizes itself before telling the dimensions; its pixel count is named.
    ("huge.bmp", _bmp_header(100000, -100000), ["10000000000 pixels", "max_pixels"]),
    ("huge.jpg", _jpeg_header(65535, 65535), ["4294836225 pixels", "max_pixels"]),
    ("text_named.tif", b"stress time 2.5 h, sample 7\n" * 20, ["not a decodable image"]),
    ("text_named.png", b"<html>not an image</html>", ["not a decodable image"]),
    ("truncated_header.png", _encoded(".png")[:20], ["not a decodable image"]),
    ("truncated_half.png", _encoded(".png")[:len(_encoded(".png")) // 2], ["not a decodable image"]),
    ("truncated_half.tif", _encoded(".tif")[:len(_encoded(".tif")) // 2], ["not a decodable image"]),
    ("truncated.jpg", _encoded(".jpg")[:300], ["not a decodable image"]),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_is_one_clear_error_or_a_listed_skip(tmp_path, name, content, words):
  _folder_with(tmp_path, name, content)
  _one_line_error(tmp_path, name, *words, "skip_unreadable")
  _listed_skip(tmp_path, name)


def test_a_lying_header_allocates_nothing(tmp_path, monkeypatch):
  # The limit is checked before any decoder sees the file.
  huge = png_claiming(100000, 100000)
  _folder_with(tmp_path, "huge.png", huge)
  real_imread = image_reader.iio.imread

  def imread_guarded(uri, **kwargs):
    assert not os.fspath(uri).endswith("huge.png"), "the decoder was handed the 100000x100000 file"
    return real_imread(uri, **kwargs)

  monkeypatch.setattr(image_reader.iio, "imread", imread_guarded)
  _one_line_error(tmp_path, "huge.png", "max_pixels")


def test_pixel_limit_is_configurable(tmp_path):
  _folder_with(tmp_path, "ordinary.png", _encoded(".png"))
  _one_line_error(tmp_path, "good_0.png", "32x40", "1279", max_pixels=32 * 40 - 1)
  assert len(_within(LOAD_TIMEOUT, lambda: load_folder(tmp_path, max_pixels=32 * 40)).images) == 5
  with pytest.raises(ConfigError, match="max_pixels=0"):
    load_folder(tmp_path, max_pixels=0)


@pytest.mark.parametrize("name, extension", [("jpeg_named.png", ".jpg"), ("png_named.tif", ".png"),
                                             ("bmp_named.jpg", ".bmp"), ("tiff_named.bmp", ".tif")])
def test_a_real_image_with_the_wrong_extension_loads_by_its_content(tmp_path, name, extension):
  _folder_with(tmp_path, name, _encoded(extension))
  dataset = _within(LOAD_TIMEOUT, lambda: load_folder(tmp_path))
  expected = np.asarray(iio.imread(_encoded(extension), extension=extension))
  assert np.array_equal(dataset.images[dataset.paths.index(f"1/{name}")], expected)


def test_symlink_loops_and_dangling_links(tmp_path):
  _folder_with(tmp_path, "x", None)
  os.symlink(tmp_path / "1" / "loop_b.png", tmp_path / "1" / "loop_a.png")
  os.symlink(tmp_path / "1" / "loop_a.png", tmp_path / "1" / "loop_b.png")
  _one_line_error(tmp_path, "loop_a.png", "cannot open")
  with pytest.warns(UserWarning, match="skipped 2 unreadable"):
    dataset = _within(LOAD_TIMEOUT, lambda: load_folder(tmp_path, skip_unreadable=True))
  assert sorted(s.split(":")[0].rsplit("/", 1)[1] for s in dataset.skipped) == ["loop_a.png", "loop_b.png"]
  # A folder that links to its parent is not entered, so the walk ends.
  os.symlink(tmp_path / "1", tmp_path / "1" / "again", target_is_directory=True)
  os.symlink(tmp_path / "nowhere.tif", tmp_path / "0" / "dangling.tif")
  _one_line_error(tmp_path, "dangling.tif", "cannot open")


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_pipes_and_devices_named_like_images_do_not_hang(tmp_path, kind):
  path = _folder_with(tmp_path, f"{kind}.png", None)
  if kind == "fifo":
    os.mkfifo(path)  # opening it would wait for a writer forever
  else:
    if not os.path.exists("/dev/zero"):
      pytest.skip("no /dev/zero on this system")
    os.symlink("/dev/zero", path)  # reading it would never end
  _one_line_error(tmp_path, f"{kind}.png", "not a regular file")
  _listed_skip(tmp_path, f"{kind}.png")


def test_unreadable_file_is_named_even_as_root(tmp_path, monkeypatch):
  # root reads a chmod 000 file anyway, so the refusal the kernel would give a user is simulated.
  denied = _folder_with(tmp_path, "denied.tif", _encoded(".tif"))
  real_open = open

  def open_denying(path, *args, **kwargs):
    if os.fspath(path) == denied:
      raise PermissionError(13, "Permission denied", path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(image_reader, "open", open_denying, raising=False)  # shadows the builtin in the reader only
  _one_line_error(tmp_path, "denied.tif", "Permission denied")
  _listed_skip(tmp_path, "denied.tif")


def test_unlistable_label_folder_is_named(tmp_path, monkeypatch):
  _folder_with(tmp_path, "x", None)
  real_scandir = os.scandir
  locked = os.fspath(tmp_path / "1")

  def scandir_denying(path="."):
    if os.fspath(path) == locked:
      raise PermissionError(13, "Permission denied", path)
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir_denying)
  _one_line_error(tmp_path, locked, "cannot list folder", "Permission denied")


def test_non_utf8_file_name_is_named_readably_and_skippable(tmp_path):
  _folder_with(tmp_path, b"caf\xe9.png", _encoded(".png"))
  _one_line_error(tmp_path, "caf\\xe9.png", "UTF-8")
  _listed_skip(tmp_path, "caf\\xe9.png")


def _mutants(rng, count):
  """(name, bytes) of damaged images: truncations, flipped bytes, overwritten spans, forged sizes."""
  originals = {ext: _encoded(ext) for ext in (".png", ".jpg", ".tif", ".bmp")}
  out = []
  for i in range(count):
    ext = list(originals)[i % len(originals)]
    data = bytearray(originals[ext])
    how = ("truncate", "flip", "overwrite", "forge_size", "junk_after_magic")[(i // 4) % 5]
    if how == "truncate":
      data = data[:int(rng.integers(1, len(data)))]
    elif how == "flip":
      for at in rng.integers(0, len(data), int(rng.integers(1, 20))):
        data[at] ^= 1 << int(rng.integers(0, 8))
    elif how == "overwrite":
      start = int(rng.integers(0, len(data) - 1))
      stop = min(len(data), start + int(rng.integers(1, 64)))
      data[start:stop] = rng.bytes(stop - start)
    elif how == "forge_size":
      width, height = (int(v) for v in rng.integers(1, 200000, 2))
      data = bytearray({".png": png_claiming, ".jpg": lambda w, h: _jpeg_header(min(w, 65535), min(h, 65535)),
                        ".tif": _tiff_header, ".bmp": _bmp_header}[ext](width, height))
    else:
      magic = {".png": 8, ".jpg": 3, ".tif": 4, ".bmp": 2}[ext]
      data = data[:magic] + bytearray(rng.bytes(int(rng.integers(0, 2000))))
    out.append((f"mutant_{i:03d}_{how}{ext}", bytes(data)))
  return out


NUM_MUTANTS = 200


def test_fuzzed_images_load_or_fail_with_one_line_naming_the_file(tmp_path):
  """200 damaged files: each either loads at the right size or is refused in one line that names it."""
  loaded = refused = 0
  for name, content in _mutants(np.random.default_rng(2024), NUM_MUTANTS):
    root = tmp_path / name
    root.mkdir()
    _folder_with(root, name, content)
    try:
      dataset = _within(LOAD_TIMEOUT, lambda: load_folder(root))
    except DataError as e:
      message = str(e)
      assert "\n" not in message and name in message, message
      refused += 1
    else:
      image = dataset.images[dataset.paths.index(f"1/{name}")]
      assert image.shape == SHAPE and image.dtype in (np.uint8, np.uint16, np.float32), name
      loaded += 1
  # Most damage must be caught: a loader that accepted everything would pass the loop above vacuously.
  assert refused > NUM_MUTANTS // 2 and loaded + refused == NUM_MUTANTS


def test_peek_image_shape_reads_only_a_header(tmp_path):
  _folder_with(tmp_path, "extra.tif", _encoded(".tif"))
  assert folder.peek_image_shape(tmp_path) == SHAPE
  assert folder.peek_image_shape(tmp_path, crop_bottom=4) == (SHAPE[0] - 4, SHAPE[1])
  empty = tmp_path / "empty" / "0"
  empty.mkdir(parents=True)
  (empty / "junk.png").write_bytes(b"no image")
  with pytest.raises(DataError, match="no readable image"):
    folder.peek_image_shape(tmp_path / "empty")


def test_masks_go_through_the_same_checks(tmp_path):
  for t in ("0", "1"):
    for kind in ("images", "masks"):
      (tmp_path / kind / t).mkdir(parents=True)
    for k in range(2):
      iio.imwrite(tmp_path / "images" / t / f"s{k}.png", _pixels(k))
      iio.imwrite(tmp_path / "masks" / t / f"s{k}.png", (_pixels(k) > 128).astype(np.uint8) * 255)
  (tmp_path / "masks" / "1" / "s1.png").write_bytes(png_claiming(100000, 100000))
  _one_line_error(tmp_path, os.path.join("masks", "1", "s1.png"), "max_pixels")
