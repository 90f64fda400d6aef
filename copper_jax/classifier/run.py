"""The baseline stress-time classifier: train it, evaluate it, and show what it looks at (class activation maps).

`train_and_evaluate(config, workdir)` is what launch/train.py calls, `evaluate_classifier(config, workdir, split)`
what launch/evaluate.py calls. Training sees random patches; evaluation sees whole images (global average pooling
makes the net size-agnostic). Workdir layout:
  config.json, splits.json, data/ (generated synthetic set), checkpoints/ (latest two, and the best by validation
  accuracy), metrics.jsonl, tensorboard/, training.json, results.json, confusion.png, per_label.png, cam/*.png
"""
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from copper_jax import config_rules, metrics, preemption, run_config
from copper_jax.classifier.program import (BEST_METRIC, ClassifierProgram, best_score,
                                           checkpointer, restore_for_eval, run_meta, validate_config)
from copper_jax.data import sampler, splits
from copper_jax.data.prepare import check_patch_fits, prepare_data, prepare_training_data
from copper_jax.errors import ConfigError, UserError
from copper_jax.models import analysis
from copper_jax.store import workdir
from copper_jax.store.logs import LateFetch, MetricWriter, Progress, is_time, log, truncate_after

RESULTS_FILE = "results.json"
TRAINING_FILE = "training.json"
_CAM_FILE = re.compile(r"\d{4,}_t[^/]*\.png")  # <image index>_t<stress time>.png, as write_cams names them


class NonFiniteLossError(UserError, FloatingPointError):
  """Training met a non-finite loss or gradient; the checkpoints written before it are kept."""


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


class _TrainLog:
  """Host side of the training loop: per-step metrics fetched one step late, summed, written every log step."""

  def __init__(self, writer, progress, log_every: int, total: int, config, ckpt_dir: str):
    self.writer, self.progress = writer, progress
    self.log_every, self.total = log_every, total
    self.learning_rate = config.optim.learning_rate
    self.ckpt_dir = ckpt_dir
    self.last_saved = None
    self.sums = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}

  def __call__(self, done: int, metrics_dev) -> None:
    m = jax.device_get(metrics_dev)
    if not bool(m["finite"]):
      kept = (f"checkpoints up to step {self.last_saved} are kept in {self.ckpt_dir}" if self.last_saved
              else "no checkpoint had been written yet")
      raise NonFiniteLossError(
          f"training loss is not finite at step {done} (loss sum {float(m['loss_sum']):.4g}, gradient norm "
          f"{float(m['grad_norm']):.4g}): lower config.optim.learning_rate (now {self.learning_rate:g}) or check "
          f"the images; {kept}")
    for key in self.sums:
      self.sums[key] += float(m[key])
    if is_time(done, self.log_every, self.total):
      count = max(self.sums["count"], 1.0)
      loss = self.sums["loss_sum"] / count
      self.writer.write(done, {"train/loss": loss, "train/accuracy": self.sums["correct"] / count,
                               "train/grad_norm": float(m["grad_norm"])})
      self.progress.set_postfix(loss=loss)
      self.sums = dict.fromkeys(self.sums, 0.0)


def train(config, work_dir: str, dataset, split, program: ClassifierProgram, quiet: bool = False) -> dict:
  """Trains (or resumes) the classifier; returns the content of `workdir/training.json`."""
  train_idx, val_idx = split["train"], split.get("val", np.zeros(0, np.int64))
  per_image = sampler.patches_per_image(dataset.image_shape, config.train.patch_size)
  total = sampler.run_steps(config.train, dataset.image_shape, len(train_idx))
  per_epoch = sampler.steps_per_epoch(len(train_idx), config.train.batch_size, per_image)
  eval_every = per_epoch * config.train.eval_every_epochs
  meta = run_meta(config, dataset)
  ckpt = checkpointer(work_dir, len(val_idx) > 0)
  training_path = os.path.join(work_dir, TRAINING_FILE)
  start, prior_time, log_sums = 0, 0.0, None
  if ckpt.latest_step() is not None:
    state, saved = ckpt.restore(program.abstract_state(), meta)
    start, prior_time = int(saved["step"]), float(saved.get("train_time_s", 0.0))
    if start >= total and os.path.exists(training_path):
      ckpt.close()
      log(f"already trained for {start} steps (asked for {total}); evaluating", quiet)
      return workdir.read_json(training_path)
    truncate_after(work_dir, start)
    log_sums = saved.get("log_sums")
    log(f"resuming the classifier from step {start} of {total}", quiet)
  else:
    truncate_after(work_dir, 0)  # metrics of a killed run that saved no checkpoint
    state = program.init_state()

  patches = sampler.PatchSampler(dataset, train_idx, config.train.patch_size, config.train.batch_size,
                                 seed=config.seed, flips=config.train.flips, rot90=config.train.rot90)
  writer = MetricWriter(work_dir, quiet=quiet, resume_step=start)
  progress = Progress(total, "classifier", quiet=quiet, initial=start)
  host = _TrainLog(writer, progress, config.train.log_every, total, config, ckpt.directory)
  host.last_saved = ckpt.latest_step()
  if log_sums:  # the sums since the last log line, so a run resumed off a log step writes the same next line
    host.sums.update(log_sums)
  late = LateFetch(host)
  began = time.perf_counter()
  steady_time, steady_steps = 0.0, 0
  try:
    with preemption.StopOnSignal() as stop:
      for step, batch in patches.iterate(start, total - start):
        tick = time.perf_counter()
        state, step_metrics = program.train_step(state, _device_batch(batch, ("image", "label")))
        done = step + 1
        late.dispatched(done, step_metrics)  # every step's metrics are summed and checked for a non-finite loss
        if step > start:  # the first step of a process includes compilation
          steady_time += time.perf_counter() - tick
          steady_steps += 1
        progress.update(1)
        stopping = stop.due(done)  # asked at every step: with several processes it is a sync point
        if is_time(done, eval_every, total):
          late.flush()
          scalars = {}
          if len(val_idx):
            val = predict_split(program, state, dataset, val_idx, config.eval.batch_size)
            accuracy = metrics.accuracy(val["label"], val["logits"].argmax(-1))
            scalars = {"val_accuracy": accuracy, "val_loss": val["loss"],
                       BEST_METRIC: best_score(accuracy, val["loss"])}
            writer.write(done, {f"val/{k[4:]}": v for k, v in scalars.items() if k != BEST_METRIC})
          ckpt.save(done, state, dict(meta, step=done, train_time_s=prior_time + time.perf_counter() - began,
                                      metrics=scalars, log_sums=host.sums))
          host.last_saved = done
        elif stopping:
          # No validation here: the step is saved for resuming only, never as the best.
          late.flush()
          ckpt.save(done, state, dict(meta, step=done, train_time_s=prior_time + time.perf_counter() - began,
                                      metrics={}, log_sums=host.sums))
          host.last_saved = done
        if stopping:
          raise preemption.Preempted(stop.signal_name, done, total, ckpt.directory)
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


def evaluate_state(config, work_dir, dataset, split, program, state, checkpoint_info, figure_split: str,
                   num_cam: int = 0, quiet: bool = False) -> dict:
  """Every split's metrics, results.json, the two figures of `figure_split`, and `num_cam` CAM overlays."""
  from copper_jax.viz import plots  # matplotlib only when drawing
  if figure_split not in split or not len(split[figure_split]):
    raise ConfigError(f"split {figure_split!r} has no images in {work_dir}/splits.json; use one of "
                      f"{', '.join(name for name in split if len(split[name]))}")
  c, d, n, N = (config.model[k] for k in ("c", "d", "n", "N"))
  results = {
      "checkpoint": checkpoint_info,
      "labels": {"names": list(dataset.label_names), "stress_times": dataset.stress_times.tolist()},
      "model": {**analysis.describe("classifier", c, d, n, N, dataset.num_classes), "c": c, "d": d, "n": n, "N": N,
                "norm": config.model.norm, "dtype": config.model.dtype},
      "splits": {},
      # Per image, so an expert's blind-test answers can be paired with the model's on the same images.
      "predictions": {},
  }
  for name, idx in split.items():
    pred = predict_split(program, state, dataset, idx, config.eval.batch_size)
    results["splits"][name] = {**metrics.summary(pred["label"], pred["logits"].argmax(-1), dataset.num_classes),
                               "loss": pred["loss"]}
    results["predictions"][name] = [
        {"path": dataset.paths[i], "true_label": int(true), "predicted_label": int(predicted)}
        for i, true, predicted in zip(pred["index"], pred["label"], pred["logits"].argmax(-1))]
  training_path = os.path.join(work_dir, TRAINING_FILE)
  results["training"] = workdir.read_json(training_path)
  shown = results["splits"][figure_split]
  names = [f"{t:g}" for t in dataset.stress_times]
  where = f"{figure_split} split, {shown['num_images']} images, checkpoint step {checkpoint_info['step']}"
  acc = "n/a" if shown["accuracy"] is None else f"{shown['accuracy']:.3f}"
  plots.save(plots.confusion_figure(shown["confusion"], names, f"Confusion matrix ({where}); accuracy {acc}"),
             os.path.join(work_dir, "confusion.png"))
  counts = np.asarray(shown["confusion"]).sum(axis=1).tolist()
  plots.save(plots.per_label_figure(shown["per_label_accuracy"], counts, names, f"Accuracy per stress time "
                                        f"({where})"), os.path.join(work_dir, "per_label.png"))
  results["figures"] = {"split": figure_split, "confusion": "confusion.png", "per_label": "per_label.png"}
  workdir.atomic_write_json(os.path.join(work_dir, RESULTS_FILE), results)
  if num_cam:
    chosen = splits.pick_overlay_images(dataset.labels, split[figure_split], num_cam)
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
  from copper_jax.viz import plots
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
      fig = plots.cam_figure(batch["image"][b, ..., 0], cam_BxHxWx2[b, ..., 0], cam_BxHxWx2[b, ..., 1],
                                 titles, "Class activation maps: red = evidence for the class, blue = against")
      paths.append(plots.save(fig, os.path.join(out_dir, f"{i:04d}_t{names[true]}.png")))
  return paths


def train_and_evaluate(config, work_dir: str, quiet: bool = False) -> dict:
  """Trains (or resumes) the classifier in `work_dir`, then writes results.json and the figures; returns results."""
  validate_config(config)
  work_dir = workdir.check_output_folder(work_dir, "--workdir", inputs=[config.data.root])
  check_patch_fits(config)
  with workdir.locked_start(work_dir, workdir.CLASSIFIER) as start:
    # Every check that needs the data or the workdir's checkpoints comes before the run writes a file of its own.
    run_config.check_resume(work_dir, config, config_rules.CLASSIFIER, "another classifier")
    dataset, split = prepare_training_data(config, work_dir)
    run_config.save(work_dir, config, config_rules.CLASSIFIER, "another classifier")
    start.commit()
    total = sampler.run_steps(config.train, dataset.image_shape, len(split["train"]))
    program = ClassifierProgram(config, dataset.num_classes, total)
    train(config, work_dir, dataset, split, program, quiet)
    state, info = restore_for_eval(config, work_dir, dataset, len(split.get("val", ())) > 0, program,
                                   config.eval.checkpoint)
    return evaluate_state(config, work_dir, dataset, split, program, state, info, config.eval.split,
                          config.eval.num_cam, quiet)


def evaluate_classifier(config, work_dir: str, split: str | None = None, quiet: bool = False, num_cam: int = 0,
                        which: str | None = None) -> dict:
  """Restores the classifier of `work_dir` and rewrites results.json, the figures (of `split`, default
  config.eval.split) and `num_cam` CAM overlays; checkpoints are only read."""
  work_dir = os.path.abspath(work_dir)
  validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
  with workdir.WorkdirLock(work_dir):
    dataset, split_of = prepare_data(config, work_dir)
    program = ClassifierProgram(config, dataset.num_classes, None)
    state, info = restore_for_eval(config, work_dir, dataset, len(split_of.get("val", ())) > 0, program,
                                   which or config.eval.checkpoint)
    return evaluate_state(config, work_dir, dataset, split_of, program, state, info, split or config.eval.split,
                          num_cam, quiet)
