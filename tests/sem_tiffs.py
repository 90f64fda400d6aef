"""SEM TIFFs as the vendors write them: pixels plus the metadata tag each vendor uses, for tests."""
import os
import struct

import numpy as np
import tifffile


def fei_tag(pixel_size_nm: float, scanned_rows: int, kv: float = 5.0, detector: str = "ETD"):
  text = (f"[User]\r\nDate=11/30/2026\r\n[Scan]\r\nPixelWidth={pixel_size_nm * 1e-9:.6e}\r\n[EBeam]\r\n"
          f"HV={kv * 1e3:g}\r\n[Detectors]\r\nName={detector}\r\n[Image]\r\nResolutionY={scanned_rows}\r\n")
  return (34682, "s", 0, text, True)


def zeiss_tag(pixel_size_nm: float, kv: float = 10.0, mag: str = "5.00 K X", detector: str = "InLens"):
  text = (f"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = {pixel_size_nm:g} nm\r\nAP_MAG\r\nMag = {mag}\r\n"
          f"AP_ACTUALKV\r\nEHT = {kv:.2f} kV\r\nDP_DETECTOR_CHANNEL\r\nSignal A = {detector}\r\nEND\r\n")
  return (34118, "s", 0, text, True)


def tescan_tag(pixel_size_nm: float, kv: float = 15.0, mag: str = "5000", detector: str = "SE"):
  data = tescan_chunks({"PixelSizeX": f"{pixel_size_nm * 1e-9:.6e}", "Magnification": mag},
                       {"HV": f"{kv * 1e3:g}", "Detector": detector})
  return (50431, 7, None, data, True)


def with_info_bar(pixels_HxW: np.ndarray, rows: int) -> np.ndarray:
  """The image with `rows` more rows below it: a black bar with a white 'text' stroke, as instruments add."""
  bar = np.zeros((rows, pixels_HxW.shape[1]), pixels_HxW.dtype)
  bar[rows // 2, 2:min(12, pixels_HxW.shape[1])] = np.iinfo(pixels_HxW.dtype).max
  return np.concatenate([pixels_HxW, bar])


def write_tiff(path: str, pixels_HxW: np.ndarray, tag) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tifffile.imwrite(path, pixels_HxW, extratags=[tag] if tag else [])
  return path


def fei_text(pixel_width: str, scanned_rows, kv: float = 5.0, beam: str = "EBeam", beam_lines: str = "",
             image_lines: str = "") -> str:
  """An FEI/Thermo [section] key=value text as tag 34682 holds it; `pixel_width` in metres, as the file writes it;
  `beam_lines` and `image_lines` go into the beam's and the [Image] section."""
  scan = f"[Scan]\r\nPixelWidth={pixel_width}\r\n" if pixel_width is not None else ""
  return (f"[User]\r\nDate=11/30/2026\r\n[System]\r\nSystemType=Test SEM\r\n[Beam]\r\nBeam={beam}\r\n{scan}"
          f"[{beam}]\r\nHV={kv * 1e3:g}\r\n{beam_lines}[Detectors]\r\nName=ETD\r\n[Image]\r\n"
          f"ResolutionY={scanned_rows}\r\n{image_lines}")


def tiff_directory_last(path: str, pixels_HxW: np.ndarray, ascii_tags=()) -> str:
  """A one-strip gray TIFF laid out as FEI/Thermo and TESCAN write theirs: the header, the pixels, then the tags'
  values and the image directory at the end of the file. `ascii_tags`: (code, text) pairs."""
  order = "<"
  pixels = np.ascontiguousarray(pixels_HxW, pixels_HxW.dtype.newbyteorder(order))
  height, width = pixels.shape
  data = pixels.tobytes()
  blobs, offset = [], 8 + len(data)
  extra = []
  for code, text in ascii_tags:
    raw = text.encode("latin-1") + b"\x00"
    extra.append((code, 2, len(raw), offset))
    blobs.append(raw)
    offset += len(raw)
  offset += offset % 2  # the directory starts on a word boundary
  entries = sorted([(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, pixels.dtype.itemsize * 8),
                    (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
                    (279, 4, 1, len(data))] + extra)
  directory = struct.pack(order + "H", len(entries))
  for code, kind, count, value in entries:
    packed = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
    directory += struct.pack(order + "HHI", code, kind, count) + packed
  directory += struct.pack(order + "I", 0)
  body = b"".join(blobs)
  padding = b"\x00" * ((8 + len(data) + len(body)) % 2)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"II*\x00" + struct.pack(order + "I", offset) + data + body + padding + directory)
  return path


def tescan_chunks(main: dict, sem: dict) -> bytes:
  """TESCAN's tag 50431: (uint32 length, uint16 kind, data) chunks: a thumbnail (1), MAIN (2) and SEM (3), the last
  two key=value lines without a section header."""
  def chunk(kind, data):
    return struct.pack("<IH", len(data), kind) + data
  thumbnail = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(range(256)) + b"x=1\r\n"  # binary, with a stray '='
  text = lambda d: "".join(f"{k}={v}\r\n" for k, v in d.items()).encode("latin-1") + b"\x00"
  return chunk(1, thumbnail) + chunk(2, text(main)) + chunk(3, text(sem))


def zeiss_text(entries: dict, struct_pixel_m: float | None = None) -> str:
  """Zeiss SmartSEM tag 34118 text: the unnamed struct values (the fourth is the pixel size of a 1024-pixel frame,
  in metres), then KEY / `Name = value unit` pairs."""
  head = ["0", "0", "0", f"{struct_pixel_m:e}", "5000", "6", "5000.0"] if struct_pixel_m is not None else ["0"]
  body = [line for key, (name, value) in entries.items() for line in (key.upper(), f"{name} = {value}")]
  return "\r\n".join(head + body + ["END"]) + "\r\n"
