"""The main job: train a family of hypotheses g(t) side by side, evaluate them on held-out images, report.

`run_sweep(config, workdir)` is what `launch/sweep.py` calls. The members axis is M = K hypotheses x S seeds,
hypothesis-major (member m = k * S + s). Members with the same seed start from the same weights and all see the
same batches, so differences between hypotheses are paired and not luck of initialisation or sampling.
"""
import functools
import os

import jax
import numpy as np

from copper_jax import (checkpoint, config_utils, determinism, hypotheses, members, optim, seg_steps, sweep_results,
                        workdir)
from copper_jax.data import sampler
from copper_jax.data.prepare import check_patch_fits, prepare_data, prepare_training_data
from copper_jax.errors import CheckpointError
from copper_jax.logging_utils import MetricWriter, Progress, log, truncate_after
from copper_jax.models import analysis, make_model

# Config entries that fix the shape and meaning of a sweep checkpoint; changing any of them needs a new workdir.
FINGERPRINT_KEYS = ["model.c", "model.d", "model.n", "model.N", "model.norm", "hypotheses", "num_seeds", "seed",
                    "loss.kind", "optim.learning_rate", "optim.schedule", "train.patch_size", "train.batch_size"]


def validate_config(config) -> None:
  """Fails before any data is read or anything compiles, naming the key."""
  config_utils.validate(config, [
      ("num_seeds", lambda v: isinstance(v, int) and v >= 1, "needs at least one seed"),
      ("train.batch_size", lambda v: v >= 1, "needs at least one image per batch"),
      ("train.patch_size", lambda v: v >= 2 ** config.model.d,
       f"must be at least 2**model.d = {2 ** config.model.d} pixels"),
      ("train.log_every", lambda v: v >= 1, "must be a positive number of steps"),
      ("train.checkpoint_every", lambda v: v >= 1, "must be a positive number of steps"),
      ("loss.kind", lambda v: v in ("mse", "bce", "interval"), "use mse, bce or interval"),
      ("loss.binarise_weight", lambda v: v >= 0, "must be >= 0"),
      ("loss.tolerance", lambda v: v >= 0, "must be >= 0"),
      ("optim.learning_rate", lambda v: v > 0, "must be > 0"),
      ("eval.batch_size", lambda v: v >= 1, "needs at least one image per batch"),
      ("eval.bootstrap", lambda v: v >= 100, "use at least 100 resamples for a 95% interval"),
      ("members.strategy", lambda v: v in members.STRATEGIES, f"use one of {members.STRATEGIES}"),
  ])
  config_utils.total_steps(config.train, 1)  # exactly one duration; the image count only matters for epochs
  hypotheses.expand(config.hypotheses)


def check_memory(config, num_labels: int = 2) -> None:
  """ConfigError naming num_seeds when the members' training states alone would not fit in one device's memory.

  A lower bound from shapes only, so an absurd num_seeds fails in a second, before anything is compiled or
  written: parameters, norm statistics and optimizer moments of the members each device holds. `train` checks
  XLA's figure for the whole compiled step before the first step. num_labels only sizes each member's (T-1,)
  learned-curve logits, which is negligible.
  """
  model = make_model("segmentation", config.model)
  optimizer = optim.make_optimizer(config.optim, 1)  # the duration changes values, not shapes
  patch = config.train.patch_size
  state = jax.eval_shape(lambda: seg_steps.init_state(model, optimizer, jax.random.key(0), (patch, patch),
                                                      num_labels))
  per_member = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
  num_members = len(hypotheses.expand(config.hypotheses)) * config.num_seeds
  per_device = -(-num_members // (jax.local_device_count() if config.members.shard else 1))
  config_utils.check_memory(
      "num_seeds", config.num_seeds, per_member * per_device, config_utils.available_memory_bytes(),
      f"{per_device} members per device hold {per_member / 2 ** 20:.3g} MiB of state each before any activation: "
      "lower num_seeds or the number of hypotheses")


def member_table(config, hyps, tau_T):
  """Per-member constants (arrays with a leading members axis) and the hypothesis/seed of each member."""
  targets_KxT = hypotheses.target_table(hyps, tau_T)
  seeds = config.num_seeds
  rows = [(k, s) for k in range(len(hyps)) for s in range(seeds)]
  table = {
      "targets": np.stack([targets_KxT[k] for k, _ in rows]),
      "learn_g": np.array([hyps[k].learned for k, _ in rows]),
      "g_lo": np.array([hyps[k].lo for k, _ in rows], np.float32),
      "g_hi": np.array([hyps[k].hi for k, _ in rows], np.float32),
  }
  return table, rows, targets_KxT


class SweepProgram:
  """The model, optimizer and jitted lifted steps of one sweep; built once from config and data shape."""

  def __init__(self, config, num_labels: int, image_shape, total_steps: int, num_members: int):
    self.model = make_model("segmentation", config.model)
    self.optimizer = optim.make_optimizer(config.optim, total_steps)
    self.num_labels = num_labels
    self.image_shape = tuple(image_shape)
    self.num_members = num_members
    self.seed = config.seed
    self.num_seeds = config.num_seeds
    self.mesh = members.members_mesh(num_members) if config.members.shard else None
    self.member_sharding = members.member_sharding(self.mesh)
    self.shared_sharding = members.replicated_sharding(self.mesh)
    strategy, chunk = config.members.strategy, config.members.chunk
    self.strategy = members.resolve_strategy(strategy)

    train_one = functools.partial(
        seg_steps.train_step, model=self.model, optimizer=self.optimizer, loss_kind=config.loss.kind,
        tolerance=config.loss.tolerance, binarise_weight=config.loss.binarise_weight)
    eval_one = functools.partial(seg_steps.eval_step, model=self.model)
    masks_one = lambda state, member, batch: seg_steps.predict_masks(state, batch, model=self.model)
    lift = functools.partial(members.lift, strategy=strategy, num_members=num_members, chunk=chunk,
                             mesh=self.mesh)
    self.train_step = jax.jit(lift(train_one), donate_argnums=(0,))
    self.eval_step = jax.jit(lift(eval_one))
    self.predict_masks = jax.jit(lift(masks_one))
    self.final_targets = jax.jit(jax.vmap(lambda state, member: seg_steps.member_targets(state.params, member)))

  def init_states(self, patch_size: int):
    """Stacked initial states; member m = k * S + s starts from the weights of seed s (paired comparison)."""
    base = jax.random.key(self.seed)
    one = lambda s: seg_steps.init_state(self.model, self.optimizer, jax.random.fold_in(base, s),
                                         (patch_size, patch_size), self.num_labels)
    by_seed = [one(s) for s in range(self.num_seeds)]
    states = members.stack_members([by_seed[m % self.num_seeds] for m in range(self.num_members)])
    return members.place(states, self.member_sharding)

  def abstract_states(self, patch_size: int):
    return jax.eval_shape(lambda: self.init_states(patch_size))


def build(config, dataset, split):
  """The sweep's program, member arrays and checkpoint metadata for this config and data."""
  hyps = hypotheses.expand(config.hypotheses)
  member_arrays, rows, _ = member_table(config, hyps, dataset.tau)
  total = config_utils.total_steps(config.train, len(split["train"]))
  program = SweepProgram(config, dataset.num_classes, dataset.image_shape, total, len(rows))
  member_arrays = members.place(member_arrays, program.member_sharding)
  fingerprint, config_hash = checkpoint.config_fingerprint(config, FINGERPRINT_KEYS)
  meta = {"config_hash": config_hash, "fingerprint": fingerprint, "hypotheses": [h.name for h in hyps],
          "targets": np.asarray(member_arrays["targets"]).tolist(), "strategy": program.strategy,
          "stress_times": dataset.stress_times.tolist()}
  return program, member_arrays, hyps, rows, total, meta


def restore(config, work_dir, program, meta):
  """The latest complete checkpoint of the sweep in work_dir as (states, step), or (None, 0) if there is none."""
  ckpt = checkpoint.Checkpointer(os.path.join(work_dir, "checkpoints"))
  try:
    if ckpt.latest_step() is None:
      return None, 0
    states, saved = ckpt.restore(program.abstract_states(config.train.patch_size), meta)
    return members.place(states, program.member_sharding), int(saved["step"])
  finally:
    ckpt.close()


def train(config, work_dir: str, dataset, split, quiet: bool = False):
  """Trains (or resumes) every member; returns the program, the final stacked states and the member table."""
  program, member_arrays, hyps, rows, total, meta = build(config, dataset, split)
  states, start = restore(config, work_dir, program, meta)
  # Metrics a killed run wrote after its last checkpoint (all of them, if it saved none) are dropped.
  truncate_after(work_dir, start)
  if states is None:
    states = program.init_states(config.train.patch_size)
  else:
    log(f"resuming the sweep from step {start} of {total}", quiet)
  ckpt = checkpoint.Checkpointer(os.path.join(work_dir, "checkpoints"))
  train_idx = split["train"]

  patches = sampler.PatchSampler(dataset, train_idx, config.train.patch_size, config.train.batch_size,
                                 seed=config.seed, flips=config.train.flips, rot90=config.train.rot90)
  train_step = program.train_step
  if start < total:
    # XLA's own figure for the whole lifted step, activations included, before any step runs; the compiled
    # program is then the one that trains, so this costs no second compile.
    first = members.place(patches.batch(start), program.shared_sharding)
    train_step = program.train_step.lower(states, member_arrays, first).compile()
    config_utils.check_memory(
        "num_seeds", config.num_seeds, config_utils.compiled_bytes(train_step), config_utils.available_memory_bytes(),
        "XLA's memory analysis of the training step: lower num_seeds, the number of hypotheses or train.batch_size")
  writer = MetricWriter(work_dir, quiet=True)  # the progress bar shows the mean loss; the file has them all
  progress = Progress(total, "sweep", quiet=quiet, initial=start)
  pending = None

  def flush(step, metrics):
    metrics = jax.device_get(metrics)
    loss_M = metrics["loss_sum"] / np.maximum(metrics["count"], 1.0)
    scalars = {f"train/loss/{hyps[k].name}/seed{s}": float(loss_M[m]) for m, (k, s) in enumerate(rows)}
    scalars["train/loss_mean"] = float(np.mean(loss_M))
    scalars["train/diverged_members"] = int(np.sum(metrics["diverged"]))
    writer.write(step, scalars)
    progress.set_postfix(loss=float(np.mean(loss_M)))

  try:
    for step, batch in patches.iterate(start, total - start):
      batch = members.place(batch, program.shared_sharding)
      states, metrics = train_step(states, member_arrays, batch)
      # Metrics of the previous log step are fetched only now, after this step is dispatched: no device stall.
      if pending is not None:
        flush(*pending)
        pending = None
      done = step + 1
      if done % config.train.log_every == 0 or done == total:
        pending = (done, metrics)
      progress.update(1)
      if done % config.train.checkpoint_every == 0 or done == total:
        if pending is not None:
          flush(*pending)
          pending = None
        ckpt.save(done, states, dict(meta, step=done))
  finally:
    progress.close()
    writer.close()
  ckpt.close()
  return program, states, member_arrays, hyps


def evaluate_members(program, states, member_arrays, dataset, split, config):
  """Per-member, per-image results on every split: mask fraction, target and pixel counts against truth."""
  with_masks = dataset.masks is not None
  raw = {}
  for name in ("train", "val", "test"):
    idx = split.get(name)
    if idx is None or len(idx) == 0:
      continue
    parts = []
    for batch in sampler.whole_image_batches(dataset, idx, config.eval.batch_size, with_masks=with_masks):
      weight = batch["weight"]
      keep = weight > 0
      device_batch = members.place({k: v for k, v in batch.items() if k != "index"}, program.shared_sharding)
      out = jax.device_get(program.eval_step(states, member_arrays, device_batch))
      parts.append({"index": batch["index"][keep], "label": batch["label"][keep],
                    **{k: v[:, keep] for k, v in out.items()}})
    raw[name] = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
  return raw


def overlay_masks(program, states, member_arrays, dataset, indices, batch_size):
  """Masks of every member for chosen images: (M, len(indices), H, W) float32."""
  masks = []
  for batch in sampler.whole_image_batches(dataset, indices, batch_size):
    keep = batch["weight"] > 0
    device_batch = members.place({k: v for k, v in batch.items() if k != "index"}, program.shared_sharding)
    masks.append(np.asarray(jax.device_get(program.predict_masks(states, member_arrays, device_batch)))[:, keep])
  return np.concatenate(masks, axis=1)


def run_sweep(config, work_dir: str, quiet: bool = False) -> dict:
  """Trains, evaluates and reports a hypothesis sweep; returns the content of `workdir/sweep.json`."""
  validate_config(config)
  check_patch_fits(config)
  check_memory(config)
  work_dir = os.path.abspath(work_dir)
  os.makedirs(work_dir, exist_ok=True)
  with workdir.WorkdirLock(work_dir):
    workdir.save_run_config(work_dir, config, FINGERPRINT_KEYS, "a sweep")
    dataset, split = prepare_training_data(config, work_dir)
    program, states, member_arrays, hyps = train(config, work_dir, dataset, split, quiet)
    return finish(config, work_dir, dataset, split, program, states, member_arrays, hyps, quiet)


def finish(config, work_dir, dataset, split, program, states, member_arrays, hyps, quiet=False) -> dict:
  """Evaluation, summary, figures and report from trained states (shared by the sweep and `evaluate`)."""
  log("evaluating every member on whole images", quiet)
  raw = evaluate_members(program, states, member_arrays, dataset, split, config)
  final_targets_MxT = np.asarray(jax.device_get(program.final_targets(states, member_arrays)))
  diverged_M = np.asarray(jax.device_get(states.diverged))
  held_out = split["test"] if len(split.get("test", [])) else split["val"]
  overlay_idx = sweep_results.pick_overlay_images(dataset.labels, held_out, config.eval.num_overlays)
  masks = overlay_masks(program, states, member_arrays, dataset, overlay_idx, config.eval.batch_size)
  rf = analysis.receptive_field("segmentation", config.model.c, config.model.d, config.model.n, config.model.N)
  summary = sweep_results.summarise(
      raw=raw, hypotheses=hyps, num_seeds=config.num_seeds, final_targets=final_targets_MxT,
      diverged=diverged_M, dataset=dataset, receptive_field=rf, num_bootstrap=config.eval.bootstrap,
      seed=config.seed)
  summary["config"] = config.to_dict()
  summary["determinism"] = determinism.record()
  sweep_results.write_outputs(work_dir, summary, dataset, overlay_idx, masks, make_report=config.eval.report)
  log(sweep_results.headline(summary), quiet)
  return summary


def evaluate_sweep(config, work_dir: str, split_name: str = "test", quiet: bool = False) -> dict:
  """Recomputes sweep.json, the figures and the report from the workdir's saved config and latest checkpoint.

  The checkpoints are only read. `split_name` is accepted for symmetry with the classifier: a sweep reports
  every split, and ranks on validation.
  """
  del split_name
  work_dir = os.path.abspath(work_dir)
  with workdir.WorkdirLock(work_dir):
    dataset, split = prepare_data(config, work_dir)
    program, member_arrays, hyps, _, _, meta = build(config, dataset, split)
    states, step = restore(config, work_dir, program, meta)
    if states is None:
      raise CheckpointError(f"no checkpoint in {work_dir}/checkpoints; train first with launch/sweep.py")
    log(f"evaluating the sweep checkpoint of step {step}", quiet)
    return finish(config, work_dir, dataset, split, program, states, member_arrays, hyps, quiet)
