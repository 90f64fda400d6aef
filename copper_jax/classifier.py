"""The baseline stress-time classifier: train it, evaluate it, and show what it looks at (class activation maps).

`train_and_evaluate(config, workdir)` is what launch/train.py calls, `evaluate_classifier(config, workdir, split)`
what launch/evaluate.py calls. Training sees random patches; evaluation sees whole images (global average pooling
makes the net size-agnostic). Workdir layout:
  config.json, splits.json, data/ (generated synthetic set), checkpoints/ (latest two, and the best by validation
  accuracy), metrics.jsonl, tensorboard/, training.json, results.json, confusion.png, per_label.png, cam/*.png
"""
import functools
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax import checkpoint, clf_steps, config_utils, metrics, optim, workdir
from copper_jax.data import sampler
from copper_jax.errors import ConfigError, UserError
from copper_jax.logging_utils import MetricWriter, Progress, log, truncate_after
from copper_jax.models import analysis, make_model
from copper_jax.data.prepare import check_patch_fits, prepare_data, prepare_training_data
from copper_jax.sweep_results import pick_overlay_images

# Config entries that fix the meaning of a checkpoint. The duration is not among them, so a finished run can be
# extended (with a cosine schedule that also stretches the decay).
FINGERPRINT_KEYS = ["model.c", "model.d", "model.n", "model.N", "model.norm", "model.dtype", "seed",
                    "optim.learning_rate", "optim.b1", "optim.b2", "optim.eps", "optim.schedule",
                    "optim.warmup_steps", "train.patch_size", "train.batch_size", "train.flips", "train.rot90",
                    "data.standardise"]
CHECKPOINTS = "checkpoints"
RESULTS_FILE = "results.json"
TRAINING_FILE = "training.json"
# Validation accuracy, with ties (frequent with few validation images) going to the lower validation loss; the
# loss term is far below one image's share of accuracy.
BEST_METRIC = "val_score"
_LOSS_TIE_BREAK = 1e-6
_CAM_FILE = re.compile(r"\d{4,}_t[^/]*\.png")  # <image index>_t<stress time>.png, as write_cams names them


class NonFiniteLossError(UserError, FloatingPointError):
  """Training met a non-finite loss or gradient; the checkpoints written before it are kept."""


def validate_config(config) -> None:
  """Fails before any data is read or anything compiles, naming the key."""
  whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
  config_utils.validate(config, [(f"model.{k}", whole, "must be a whole number >= 1") for k in ("c", "d", "n", "N")])
  config_utils.validate(config, [
      ("train.batch_size", lambda v: v >= 1, "needs at least one patch per batch"),
      ("train.patch_size", lambda v: v >= 2 ** config.model.d,
       f"must be at least 2**model.d = {2 ** config.model.d} pixels"),
      ("train.log_every", lambda v: v >= 1, "must be a positive number of steps"),
      ("train.eval_every_epochs", lambda v: isinstance(v, int) and v >= 1, "must be a whole number of epochs >= 1"),
      ("optim.learning_rate", lambda v: v > 0, "must be > 0"),
      ("optim.schedule", lambda v: v in optim.SCHEDULES, f"use one of {', '.join(optim.SCHEDULES)}"),
      ("eval.batch_size", lambda v: v >= 1, "needs at least one image per batch"),
      ("eval.checkpoint", lambda v: v in ("best", "latest"), "use best or latest"),
      ("eval.num_cam", lambda v: isinstance(v, int) and v >= 0, "must be a whole number >= 0"),
      ("eval.split", lambda v: v in config.data.split, f"use one of the splits {', '.join(config.data.split)}"),
  ])
  config_utils.total_steps(config.train, 1)


class ClassifierProgram:
  """Model, optimizer and the jitted steps of one classifier, built once from the config."""

  def __init__(self, config, num_classes: int, total_steps: int):
    self.model = make_model("classifier", config.model, num_classes)
    self.optimizer = optim.make_optimizer(config.optim, total_steps)
    self.seed = config.seed
    self.patch_size = config.train.patch_size
    self.batch_size = config.train.batch_size
    self.train_step = jax.jit(functools.partial(clf_steps.train_step, model=self.model, optimizer=self.optimizer),
                              donate_argnums=(0,))
    self.eval_step = jax.jit(functools.partial(clf_steps.eval_step, model=self.model))
    self.cam_step = jax.jit(self._cams)

  def _init(self) -> clf_steps.ClfState:
    # rbg keys: threefry initialisation takes seconds to compile on CPU; rbg values are reproducible per backend.
    rng = jax.random.key(self.seed, impl="rbg")
    return clf_steps.init_state(self.model, self.optimizer, rng, self.patch_size)

  def init_state(self) -> clf_steps.ClfState:
    # One compiled program; run op by op, the initialisation compiles dozens of small kernels.
    return jax.jit(self._init)()

  def abstract_state(self):
    return jax.eval_shape(self._init)

  def memory_analysis(self, eval_batch_size: int, image_shape) -> dict:
    """Device bytes of one train step (patches) and one eval step (whole images) from XLA's compiled analysis.

    Peak = arguments + outputs - aliased (donated) buffers + temporaries; `peak_memory_in_bytes` itself is not
    filled in by every backend (the CPU backend reports the arguments only).
    """
    state = self.abstract_state()
    patch = {"image": jax.ShapeDtypeStruct((self.batch_size, self.patch_size, self.patch_size, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((self.batch_size,), jnp.int32)}
    whole = {"image": jax.ShapeDtypeStruct((eval_batch_size, *image_shape, 1), jnp.float32),
             "label": jax.ShapeDtypeStruct((eval_batch_size,), jnp.int32),
             "weight": jax.ShapeDtypeStruct((eval_batch_size,), jnp.float32)}
    out = {}
    for name, compiled in (("train", self.train_step.lower(state, patch).compile()),
                           ("eval", self.eval_step.lower(state, whole).compile())):
      stats = compiled.memory_analysis()
      out[f"{name}_bytes"] = int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                                 - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    out["peak_bytes"] = max(out["train_bytes"], out["eval_bytes"])
    return out

  def _cams(self, state, image_BxHxWx1, label_B):
    """Logits, the class maps on the final feature grid (B, h, w, K), and the maps of the predicted and the true
    class upsampled to the image (B, H, W, 2). A grid cell covers 2^d pixels a side; rows and columns the
    poolings dropped take the nearest map value."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits_BxK = self.model.apply(variables, image_BxHxWx1, train=False)
    cam_Bxhxwxk = analysis.class_activation_maps(self.model, variables, image_BxHxWx1)
    shown_Bx2 = jnp.stack([jnp.argmax(logits_BxK, axis=-1), label_B], axis=-1)
    cam_Bxhxwx2 = jnp.take_along_axis(cam_Bxhxwxk, shown_Bx2[:, None, None, :], axis=-1)
    B, H, W, _ = image_BxHxWx1.shape
    _, h, w, _ = cam_Bxhxwxk.shape
    scale = 2 ** self.model.d
    cam_up = jax.image.resize(cam_Bxhxwx2, (B, h * scale, w * scale, 2), "linear")
    cam_BxHxWx2 = jnp.pad(cam_up, ((0, 0), (0, H - h * scale), (0, W - w * scale), (0, 0)), mode="edge")
    return logits_BxK, cam_Bxhxwxk, cam_BxHxWx2


def _device_batch(batch, keys):
  return {k: jnp.asarray(batch[k]) for k in keys}


def predict_split(program, state, dataset, indices, batch_size: int) -> dict:
  """Whole-image predictions: index, true label and logits of every image in `indices`, and the mean loss."""
  parts, loss_sum, count = [], 0.0, 0.0
  for batch in sampler.whole_image_batches(dataset, indices, batch_size):
    out = jax.device_get(program.eval_step(state, _device_batch(batch, ("image", "label", "weight"))))
    keep = batch["weight"] > 0
    parts.append((batch["index"][keep], batch["label"][keep], np.asarray(out["logits"])[keep]))
    loss_sum += float(out["loss_sum"])
    count += float(out["count"])
  if not parts:
    empty = np.zeros(0, np.int64)
    return {"index": empty, "label": empty, "logits": np.zeros((0, dataset.num_classes), np.float32),
            "loss": None}
  index, label, logits = (np.concatenate(p) for p in zip(*parts))
  return {"index": index, "label": label, "logits": logits, "loss": loss_sum / max(count, 1.0)}


def _run_meta(config, dataset) -> dict:
  fingerprint, config_hash = checkpoint.config_fingerprint(config, FINGERPRINT_KEYS)
  return {"config_hash": config_hash, "fingerprint": fingerprint, "num_classes": dataset.num_classes,
          "stress_times": dataset.stress_times.tolist(), "label_names": list(dataset.label_names)}


def _checkpointer(work_dir: str, with_val: bool) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(work_dir, CHECKPOINTS), max_to_keep=2,
                                 best_metric=BEST_METRIC if with_val else None)


class _TrainLog:
  """Host side of the training loop: per-step metrics fetched one step late, summed, written every log step."""

  def __init__(self, writer, progress, log_every: int, total: int, config, ckpt_dir: str):
    self.writer, self.progress = writer, progress
    self.log_every, self.total = log_every, total
    self.learning_rate = config.optim.learning_rate
    self.ckpt_dir = ckpt_dir
    self.last_saved = None
    self._sums = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}

  def absorb(self, done: int, metrics_dev) -> None:
    m = jax.device_get(metrics_dev)
    if not bool(m["finite"]):
      kept = (f"checkpoints up to step {self.last_saved} are kept in {self.ckpt_dir}" if self.last_saved
              else "no checkpoint had been written yet")
      raise NonFiniteLossError(
          f"training loss is not finite at step {done} (loss sum {float(m['loss_sum']):.4g}, gradient norm "
          f"{float(m['grad_norm']):.4g}): lower config.optim.learning_rate (now {self.learning_rate:g}) or check "
          f"the images; {kept}")
    for key in self._sums:
      self._sums[key] += float(m[key])
    if done % self.log_every == 0 or done == self.total:
      count = max(self._sums["count"], 1.0)
      loss = self._sums["loss_sum"] / count
      self.writer.write(done, {"train/loss": loss, "train/accuracy": self._sums["correct"] / count,
                               "train/grad_norm": float(m["grad_norm"])})
      self.progress.set_postfix(loss=loss)
      self._sums = dict.fromkeys(self._sums, 0.0)


def train(config, work_dir: str, dataset, split, quiet: bool = False) -> dict:
  """Trains (or resumes) the classifier; returns the content of `workdir/training.json`."""
  train_idx, val_idx = split["train"], split.get("val", np.zeros(0, np.int64))
  total = config_utils.total_steps(config.train, len(train_idx))
  per_epoch = sampler.steps_per_epoch(len(train_idx), config.train.batch_size)
  eval_every = per_epoch * config.train.eval_every_epochs
  program = ClassifierProgram(config, dataset.num_classes, total)
  meta = _run_meta(config, dataset)
  ckpt = _checkpointer(work_dir, len(val_idx) > 0)
  training_path = os.path.join(work_dir, TRAINING_FILE)
  start, prior_time = 0, 0.0
  if ckpt.latest_step() is not None:
    state, saved = ckpt.restore(program.abstract_state(), meta)
    start, prior_time = int(saved["step"]), float(saved.get("train_time_s", 0.0))
    if start >= total and os.path.exists(training_path):
      ckpt.close()
      log(f"already trained for {start} steps (asked for {total}); evaluating", quiet)
      return _read_json(training_path)
    truncate_after(work_dir, start)
    log(f"resuming the classifier from step {start} of {total}", quiet)
  else:
    truncate_after(work_dir, 0)  # metrics of a killed run that saved no checkpoint
    state = program.init_state()

  patches = sampler.PatchSampler(dataset, train_idx, config.train.patch_size, config.train.batch_size,
                                 seed=config.seed, flips=config.train.flips, rot90=config.train.rot90)
  writer = MetricWriter(work_dir, quiet=quiet)
  progress = Progress(total, "classifier", quiet=quiet, initial=start)
  host = _TrainLog(writer, progress, config.train.log_every, total, config, ckpt.directory)
  host.last_saved = ckpt.latest_step()
  began = time.perf_counter()
  steady_time, steady_steps = 0.0, 0
  pending = None
  try:
    for step, batch in patches.iterate(start, total - start):
      tick = time.perf_counter()
      state, step_metrics = program.train_step(state, _device_batch(batch, ("image", "label")))
      # The previous step's metrics are fetched only now, after this step is dispatched: the device never waits.
      if pending is not None:
        host.absorb(*pending)
      pending, done = (step + 1, step_metrics), step + 1
      if step > start:  # the first step of a process includes compilation
        steady_time += time.perf_counter() - tick
        steady_steps += 1
      progress.update(1)
      if done % eval_every == 0 or done == total:
        host.absorb(*pending)
        pending = None
        scalars = {}
        if len(val_idx):
          val = predict_split(program, state, dataset, val_idx, config.eval.batch_size)
          accuracy = metrics.accuracy(val["label"], val["logits"].argmax(-1))
          scalars = {"val_accuracy": accuracy, "val_loss": val["loss"],
                     BEST_METRIC: accuracy - _LOSS_TIE_BREAK * min(val["loss"], 1e3)}
          writer.write(done, {f"val/{k[4:]}": v for k, v in scalars.items() if k != BEST_METRIC})
        ckpt.save(done, state, dict(meta, step=done, train_time_s=prior_time + time.perf_counter() - began,
                                    metrics=scalars))
        host.last_saved = done
  finally:
    progress.close()
    writer.close()
    ckpt.close()
  training = {"steps": total, "steps_per_epoch": per_epoch, "epochs": total / per_epoch,
              "train_time_s": round(prior_time + time.perf_counter() - began, 3),
              "step_time_s": round(steady_time / steady_steps, 5) if steady_steps else None,
              "train_images": int(len(train_idx))}
  workdir.atomic_write_json(training_path, training)
  return training


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def restore_for_eval(config, work_dir, dataset, split, program, which: str):
  """The state to evaluate and the step it came from; "best" falls back to "latest" without validation images."""
  ckpt = _checkpointer(work_dir, len(split.get("val", ())) > 0)
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint in {ckpt.directory}: train first with launch/train.py --workdir={work_dir}")
    if which == "best" and ckpt.best_step() is None:
      which = "latest"
    state, saved = ckpt.restore(program.abstract_state(), _run_meta(config, dataset), which=which)
  finally:
    ckpt.close()
  return state, {"which": which, "step": int(saved["step"]), **(saved.get("metrics") or {})}


def evaluate_state(config, work_dir, dataset, split, program, state, checkpoint_info, figure_split: str,
                   num_cam: int = 0, quiet: bool = False) -> dict:
  """Every split's metrics, results.json, the two figures of `figure_split`, and `num_cam` CAM overlays."""
  from copper_jax import clf_plots, plots  # matplotlib only when drawing
  if figure_split not in split:
    raise ConfigError(f"split {figure_split!r} does not exist in {work_dir}/splits.json; use one of "
                      f"{', '.join(split)}")
  c, d, n, N = (config.model[k] for k in ("c", "d", "n", "N"))
  results = {
      "checkpoint": checkpoint_info,
      "labels": {"names": list(dataset.label_names), "stress_times": dataset.stress_times.tolist()},
      "model": {**analysis.describe("classifier", c, d, n, N, dataset.num_classes), "c": c, "d": d, "n": n, "N": N,
                "norm": config.model.norm, "dtype": config.model.dtype},
      "splits": {},
  }
  for name, idx in split.items():
    pred = predict_split(program, state, dataset, idx, config.eval.batch_size)
    results["splits"][name] = {**metrics.summary(pred["label"], pred["logits"].argmax(-1), dataset.num_classes),
                               "loss": pred["loss"]}
  training_path = os.path.join(work_dir, TRAINING_FILE)
  results["training"] = _read_json(training_path) if os.path.exists(training_path) else None
  shown = results["splits"][figure_split]
  names = [f"{t:g}" for t in dataset.stress_times]
  where = f"{figure_split} split, {shown['num_images']} images, checkpoint step {checkpoint_info['step']}"
  acc = "n/a" if shown["accuracy"] is None else f"{shown['accuracy']:.3f}"
  plots.save(clf_plots.confusion_figure(shown["confusion"], names, f"Confusion matrix ({where}); accuracy {acc}"),
             os.path.join(work_dir, "confusion.png"))
  counts = np.asarray(shown["confusion"]).sum(axis=1).tolist()
  plots.save(clf_plots.per_label_figure(shown["per_label_accuracy"], counts, names, f"Accuracy per stress time "
                                        f"({where})"), os.path.join(work_dir, "per_label.png"))
  results["figures"] = {"split": figure_split, "confusion": "confusion.png", "per_label": "per_label.png"}
  workdir.atomic_write_json(os.path.join(work_dir, RESULTS_FILE), results)
  if num_cam:
    chosen = pick_overlay_images(dataset.labels, split[figure_split], num_cam)
    write_cams(program, state, dataset, chosen, os.path.join(work_dir, "cam"), config.eval.batch_size)
  log(headline(results, figure_split), quiet)
  return results


def headline(results: dict, split: str) -> str:
  s = results["splits"][split]
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  return (f"{split}: accuracy {fmt(s['accuracy'])}, mean absolute error {fmt(s['mae_label_steps'])} label steps, "
          f"Spearman {fmt(s['spearman'])} on {s['num_images']} images ({results['checkpoint']['which']} "
          f"checkpoint, step {results['checkpoint']['step']})")


def write_cams(program, state, dataset, indices, out_dir: str, batch_size: int) -> list[str]:
  """CAM overlays of the predicted and the true class for each image in `indices`, as out_dir/<index>_t<t>.png."""
  from copper_jax import clf_plots, plots
  os.makedirs(out_dir, exist_ok=True)
  # The folder shows one evaluation's images: maps of an earlier split or checkpoint would be mistaken for these.
  for name in os.listdir(out_dir):
    if _CAM_FILE.fullmatch(name):
      os.remove(os.path.join(out_dir, name))
  names = [f"{t:g}" for t in dataset.stress_times]
  bias_K = np.asarray(state.params["head"]["bias"])
  paths = []
  for batch in sampler.whole_image_batches(dataset, indices, batch_size):
    logits_BxK, cam_small, cam_BxHxWx2 = jax.device_get(
        program.cam_step(state, jnp.asarray(batch["image"]), jnp.asarray(batch["label"])))
    for b in np.flatnonzero(batch["weight"] > 0):
      i, true = int(batch["index"][b]), int(batch["label"][b])
      logits = np.asarray(logits_BxK[b])
      pred = int(logits.argmax())
      prob = np.exp(logits - logits.max())
      prob /= prob.sum()
      # What makes the map exact: its mean over the final feature grid plus the bias is the logit.
      logit_of = lambda k: float(np.asarray(cam_small[b, ..., k]).mean() + bias_K[k])
      titles = (f"image {i}: {dataset.paths[i]}",
                f"predicted t={names[pred]}\np={prob[pred]:.2f}, logit {logit_of(pred):.2f}",
                f"true t={names[true]}\np={prob[true]:.2f}, logit {logit_of(true):.2f}")
      fig = clf_plots.cam_figure(batch["image"][b, ..., 0], cam_BxHxWx2[b, ..., 0], cam_BxHxWx2[b, ..., 1],
                                 titles, "Class activation maps: red = evidence for the class, blue = against")
      paths.append(plots.save(fig, os.path.join(out_dir, f"{i:04d}_t{names[true]}.png")))
  return paths


def train_and_evaluate(config, work_dir: str, quiet: bool = False) -> dict:
  """Trains (or resumes) the classifier in `work_dir`, then writes results.json and the figures; returns results."""
  validate_config(config)
  check_patch_fits(config)
  work_dir = os.path.abspath(work_dir)
  os.makedirs(work_dir, exist_ok=True)
  with workdir.WorkdirLock(work_dir):
    workdir.save_run_config(work_dir, config, FINGERPRINT_KEYS, "another classifier")
    dataset, split = prepare_training_data(config, work_dir)
    train(config, work_dir, dataset, split, quiet)
    total = config_utils.total_steps(config.train, len(split["train"]))
    program = ClassifierProgram(config, dataset.num_classes, total)
    state, info = restore_for_eval(config, work_dir, dataset, split, program, config.eval.checkpoint)
    return evaluate_state(config, work_dir, dataset, split, program, state, info, config.eval.split,
                          config.eval.num_cam, quiet)


def evaluate_classifier(config, work_dir: str, split: str | None = None, quiet: bool = False, num_cam: int = 0,
                        which: str | None = None) -> dict:
  """Restores the classifier of `work_dir` and rewrites results.json, the figures (of `split`, default
  config.eval.split) and `num_cam` CAM overlays; checkpoints are only read."""
  validate_config(config)
  work_dir = os.path.abspath(work_dir)
  with workdir.WorkdirLock(work_dir):
    dataset, splits = prepare_data(config, work_dir)
    total = config_utils.total_steps(config.train, len(splits["train"]))
    program = ClassifierProgram(config, dataset.num_classes, total)
    state, info = restore_for_eval(config, work_dir, dataset, splits, program, which or config.eval.checkpoint)
    return evaluate_state(config, work_dir, dataset, splits, program, state, info, split or config.eval.split,
                          num_cam, quiet)
