"""The classifier's class activation maps: where in an image it finds the evidence for the stress time it predicts.

`logits_and_cam` is the pure, jittable function (prediction jits it too); `cam_overlays` restores a classifier
workdir's evaluation checkpoint and overlays its map on each given image, for the sweep's report.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax.classifier import program as classifier_program
from copper_jax.data import folder, prepare
from copper_jax.errors import CheckpointError, UserError
from copper_jax.models import analysis
from copper_jax.store import workdir
from copper_jax.viz import pixels


def logits_and_cam(model, state, image_1xHxWx1):
  """Logits (K,) of one image and the class map of its predicted class brought to the image (H, W)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits_K = model.apply(variables, image_1xHxWx1, train=False)[0]
  cam_1xhxwxK = analysis.class_activation_maps(model, variables, image_1xHxWx1)
  cam_1xhxwx1 = jax.lax.dynamic_slice_in_dim(cam_1xhxwxK, jnp.argmax(logits_K), 1, axis=-1)
  _, H, W, _ = image_1xHxWx1.shape
  return logits_K, analysis.upsample_maps(cam_1xhxwx1, H, W, model.d)[0, ..., 0]


def cam_overlays(classifier_dir: str, images, names) -> dict:
  """{position: (uint8 RGB CAM overlay, caption)} of the classifier in `classifier_dir` on each (H, W) image as
  read from its file (info bar kept), standardised as the classifier's training images were; `names` name the
  images in messages. UserError naming the workdir or the image when it cannot."""
  classifier_dir = os.path.abspath(classifier_dir)
  config = workdir.load_config(classifier_dir)
  classifier_program.validate_config(config, where=os.path.join(classifier_dir, workdir.CONFIG_FILE))
  if not os.path.isdir(os.path.join(classifier_dir, "checkpoints")):
    raise CheckpointError(f"no checkpoints in {classifier_dir}: train first (launch/train.py)")
  data = prepare.load_summary(config, classifier_dir)
  program = classifier_program.ClassifierProgram(config, data.num_classes, None)
  state, _ = classifier_program.restore_for_eval(config, classifier_dir, data, data.split_sizes.get("val", 0) > 0,
                                                 program, config.eval.checkpoint)
  classify = jax.jit(functools.partial(logits_and_cam, program.model))
  crop = config.data.crop_bottom
  out = {}
  for j, (image, name) in enumerate(zip(images, names)):
    if config.data.standardise == "dataset" and image.dtype != data.dtype:
      raise UserError(f"{name}: {image.dtype} pixels, but the classifier was trained on {data.dtype} images")
    surface = image[:image.shape[0] - crop]
    if config.data.standardise == "image":
      surface = folder.standardise_pixels(surface, surface.mean(dtype=np.float64), surface.std(dtype=np.float64))
    else:
      surface = folder.standardise_pixels(surface, data.mean, data.std)
    logits_K, cam_HxW = jax.device_get(classify(state, jnp.asarray(surface[None, ..., None])))
    logits = np.asarray(logits_K, np.float64)
    prob = np.exp(logits - logits.max())
    prob /= prob.sum()
    k = int(prob.argmax())
    gray = pixels.display_gray(image)[:cam_HxW.shape[0]]
    out[j] = (pixels.cam_overlay(gray, np.asarray(cam_HxW)), f"classifier: t={data.stress_times[k]:g} (p={prob[k]:.2f})")
  return out
