"""The classifier's program: config checks, the model and its jitted steps, and restoring its checkpoints.

Built from the config and the number of labels alone, so training, evaluation and prediction build the same one.
"""
import functools
import os

import jax
import jax.numpy as jnp

from copper_jax import config_rules, device_memory, optim
from copper_jax.classifier import steps
from copper_jax.errors import UserError
from copper_jax.models import analysis, make_model
from copper_jax.store import checkpoint

# Config entries that fix the meaning of a checkpoint. The duration is not among them, so a finished run can be
# extended (with a cosine schedule that also stretches the decay).
FINGERPRINT_KEYS = config_rules.fingerprint_keys(config_rules.CLASSIFIER)
CHECKPOINTS = "checkpoints"
# Validation accuracy, with ties (frequent with few validation images) going to the lower validation loss; the
# loss term is far below one image's share of accuracy.
BEST_METRIC = "val_score"
_LOSS_TIE_BREAK = 1e-6


def best_score(val_accuracy: float, val_loss: float) -> float:
  """The value the best checkpoint is chosen by (BEST_METRIC)."""
  return val_accuracy - _LOSS_TIE_BREAK * min(val_loss, 1e3)


def validate_config(config, where: str = "", table=None) -> None:
  """Fails before any data is read or anything compiles, naming the key (rules: `config_rules.CLASSIFIER`, or
  `table`); `where` names a saved config in messages."""
  table = config_rules.CLASSIFIER if table is None else table
  config_rules.complete(config, table)
  config_rules.check(config, table, where)


class ClassifierProgram:
  """Model, optimizer and the jitted steps of one classifier, built once from the config; `total_steps` sets the
  learning-rate schedule."""

  def __init__(self, config, num_classes: int, total_steps: int | None):
    self.model = make_model("classifier", config.model, num_classes)
    # None: the optimizer is built for its state's shape only, which is all restoring for prediction needs.
    self.optimizer = optim.make_optimizer(config.optim, total_steps or 1)
    self.seed = config.seed
    self.patch_size = config.train.patch_size
    self.batch_size = config.train.batch_size
    self.train_step = jax.jit(functools.partial(steps.train_step, model=self.model, optimizer=self.optimizer),
                              donate_argnums=(0,))
    self.eval_step = jax.jit(functools.partial(steps.eval_step, model=self.model))
    self.cam_step = jax.jit(self._cams)

  def _init(self) -> steps.ClfState:
    # rbg keys: threefry initialisation takes seconds to compile on CPU; rbg values are reproducible per backend.
    rng = jax.random.key(self.seed, impl="rbg")
    return steps.init_state(self.model, self.optimizer, rng, self.patch_size)

  def init_state(self) -> steps.ClfState:
    # One compiled program; run op by op, the initialisation compiles dozens of small kernels.
    return jax.jit(self._init)()

  def abstract_state(self):
    return jax.eval_shape(self._init)

  def memory_analysis(self, eval_batch_size: int, image_shape) -> dict:
    """Device bytes of one train step (patches) and one eval step (whole images), from XLA's compiled analysis
    (`device_memory.compiled_bytes`)."""
    state = self.abstract_state()
    patch = {"image": jax.ShapeDtypeStruct((self.batch_size, self.patch_size, self.patch_size, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((self.batch_size,), jnp.int32)}
    whole = {"image": jax.ShapeDtypeStruct((eval_batch_size, *image_shape, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((eval_batch_size,), jnp.int32),
             "weight": jax.ShapeDtypeStruct((eval_batch_size,), jnp.float32)}
    out = {"train_bytes": device_memory.compiled_bytes(self.train_step.lower(state, patch).compile()),
           "eval_bytes": device_memory.compiled_bytes(self.eval_step.lower(state, whole).compile())}
    out["peak_bytes"] = max(out["train_bytes"], out["eval_bytes"])
    return out

  def _cams(self, state, image_BxHxWx1, label_B):
    """Logits, the class maps on the final feature grid (B, h, w, K), and the maps of the predicted and the true
    class upsampled to the image (B, H, W, 2)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits_BxK = self.model.apply(variables, image_BxHxWx1, train=False)
    cam_Bxhxwxk = analysis.class_activation_maps(self.model, variables, image_BxHxWx1)
    shown_Bx2 = jnp.stack([jnp.argmax(logits_BxK, axis=-1), label_B], axis=-1)
    cam_Bxhxwx2 = jnp.take_along_axis(cam_Bxhxwxk, shown_Bx2[:, None, None, :], axis=-1)
    _, H, W, _ = image_BxHxWx1.shape
    cam_BxHxWx2 = analysis.upsample_maps(cam_Bxhxwx2, H, W, self.model.d)
    return logits_BxK, cam_Bxhxwxk, cam_BxHxWx2


def run_meta(config, dataset) -> dict:
  fingerprint, config_hash = checkpoint.config_fingerprint(config, FINGERPRINT_KEYS)
  return {"config_hash": config_hash, "fingerprint": fingerprint, "num_classes": dataset.num_classes,
          "stress_times": dataset.stress_times.tolist(), "label_names": list(dataset.label_names)}


def checkpointer(work_dir: str, with_val: bool) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(work_dir, CHECKPOINTS), max_to_keep=2,
                                 best_metric=BEST_METRIC if with_val else None)


def restore_for_eval(config, work_dir, data, has_val: bool, program, which: str):
  """The state to evaluate and the step it came from; "best" falls back to "latest" without validation images.
  `data`: the dataset or its `DataSummary`."""
  ckpt = checkpointer(work_dir, has_val)
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint in {ckpt.directory}: train first with launch/train.py --workdir={work_dir}")
    if which == "best" and ckpt.best_step() is None:
      which = "latest"
    state, saved = ckpt.restore(program.abstract_state(), run_meta(config, data), which=which)
  finally:
    ckpt.close()
  return state, {"which": which, "step": int(saved["step"]), **(saved.get("metrics") or {})}
