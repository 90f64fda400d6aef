"""Stress-time probabilities and class activation maps from a classifier workdir."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax.classifier import maps as classifier_maps
from copper_jax.classifier import program as classifier_program
from copper_jax.prediction import reader as reader_lib
from copper_jax.prediction import writers
from copper_jax.prediction.sweep import training_data
from copper_jax.store import workdir
from copper_jax.viz import pixels


class ClassifierPredictor:
  """A classifier workdir's evaluation checkpoint: class probabilities and the CAM of the predicted class.

  Whole images in one call, as the classifier is evaluated: global average pooling makes the logits a mean over
  the whole image.
  """

  def __init__(self, work_dir: str):
    work_dir = os.path.abspath(work_dir)
    config = workdir.load_config(work_dir)
    classifier_program.validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
    data = training_data(config, work_dir)
    program = classifier_program.ClassifierProgram(config, data.num_classes, None)
    self.state, info = classifier_program.restore_for_eval(config, work_dir, data, data.split_sizes.get("val", 0) > 0,
                                                           program, config.eval.checkpoint)
    self.step = info["step"]
    self.stress_times = data.stress_times
    self.reader = reader_lib.Reader(config, data)
    self.depth = config.model.d
    self._classify = jax.jit(functools.partial(classifier_maps.logits_and_cam, program.model))
    self.header = (["path", "output", "height", "width", "predicted_stress_time"]
                   + [f"p_t={t:g}" for t in self.stress_times] + ["checkpoint_step"])

  def classify(self, pixels_HxW: np.ndarray):
    """(probabilities (K,), CAM of the predicted class (H_surface, W)) of an image as read by `reader.read`."""
    surface = self.reader.standardise(pixels_HxW)
    logits_K, cam_HxW = jax.device_get(self._classify(self.state, jnp.asarray(surface[None, ..., None])))
    logits = np.asarray(logits_K, np.float64)
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    return prob, np.asarray(cam_HxW)

  # The interface `copper_jax.predict` drives, the same for every kind.

  def describe(self) -> str:
    return f"stress times from the classifier (checkpoint step {self.step})"

  def check_size(self, file: str, image: np.ndarray) -> None:
    """UserError when the image is too small for the net: its d poolings would leave no feature map to average
    (and no class map to bring back to the image)."""
    reader_lib.check_size(file, image, self.reader.crop_bottom, 2 ** self.depth,
                          f"the classifier (depth d={self.depth}: {self.depth} poolings by 2)")

  def about_text(self) -> None:
    return None

  def predict_file(self, file: str, stem: str, image: np.ndarray, out_dir: str) -> list:
    """Writes the image's CAM overlay under `out_dir`; returns its summary row."""
    H, W = image.shape
    prob, cam = self.classify(image)
    shown = pixels.cam_overlay(pixels.display_gray(image)[:cam.shape[0]], cam)
    writers.write_file(os.path.join(out_dir, stem) + "_cam.png", pixels.png_bytes(shown))
    return ([file, stem, H, W, f"{self.stress_times[int(prob.argmax())]:g}"] + [f"{p:.6f}" for p in prob]
            + [self.step])

  def write_tables(self, out_dir: str) -> list:
    del out_dir
    return []

  def flagged(self) -> int:
    return 0
