"""SEM TIFFs as the vendors write them: pixels plus the metadata tag each vendor uses, for tests."""
import os

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
  text = (f"[MAIN]\r\nPixelSizeX={pixel_size_nm * 1e-9:.6e}\r\nHV={kv * 1e3:g}\r\nMagnification={mag}\r\n"
          f"Detector={detector}\r\n")
  return (50431, "s", 0, text, True)


def with_info_bar(pixels_HxW: np.ndarray, rows: int) -> np.ndarray:
  """The image with `rows` more rows below it: a black bar with a white 'text' stroke, as instruments add."""
  bar = np.zeros((rows, pixels_HxW.shape[1]), pixels_HxW.dtype)
  bar[rows // 2, 2:min(12, pixels_HxW.shape[1])] = np.iinfo(pixels_HxW.dtype).max
  return np.concatenate([pixels_HxW, bar])


def write_tiff(path: str, pixels_HxW: np.ndarray, tag) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tifffile.imwrite(path, pixels_HxW, extratags=[tag] if tag else [])
  return path
