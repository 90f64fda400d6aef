"""The sweep's program: config checks, the member table, the jitted lifted steps, and restoring a checkpoint.

The members axis is M = K hypotheses x S seeds in the order `members.member_index` fixes. Members with the same
seed start from the same weights and all see the same batches, so differences between hypotheses are paired and
not luck of initialisation or sampling. Everything here is built from the config and the data's shape alone, so
training, evaluation and prediction build the same program.
"""
import dataclasses
import functools
import os

import jax
import numpy as np

from copper_jax import config_rules, device_memory, hypotheses, members, optim
from copper_jax.data import sampler
from copper_jax.models import make_model
from copper_jax.store import checkpoint
from copper_jax.sweep import steps

# Config entries that fix the shape and meaning of a sweep checkpoint; changing any of them needs a new workdir.
FINGERPRINT_KEYS = config_rules.fingerprint_keys(config_rules.SWEEP)


def validate_config(config, where: str = "") -> list[hypotheses.Hypothesis]:
  """Fails before any data is read or anything compiles, naming the key; returns the expanded hypotheses.

  Keys an older workdir's config lacks are filled in first (`config_rules.complete`); then every key is checked
  against `config_rules.SWEEP`; `where` names a saved config in messages.
  """
  config_rules.complete(config, config_rules.SWEEP)
  config_rules.check(config, config_rules.SWEEP, where)
  return hypotheses.expand(config.hypotheses)


def check_memory(config, num_hypotheses: int, num_labels: int = 2) -> None:
  """ConfigError naming num_seeds when the members' training states alone would not fit in one device's memory.

  A lower bound from shapes only, so an absurd num_seeds fails in a second, before anything is compiled or
  written: parameters, norm statistics and optimizer moments of the members each device holds. `run.train` checks
  XLA's figure for the whole compiled step before the first step. num_labels only sizes each member's (T-1,)
  learned-curve logits, which is negligible.
  """
  model = make_model("segmentation", config.model)
  optimizer = optim.make_optimizer(config.optim, 1)  # the duration changes values, not shapes
  patch = config.train.patch_size
  state = jax.eval_shape(lambda: steps.init_state(model, optimizer, jax.random.key(0), (patch, patch), num_labels))
  per_member = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(state))
  num_members = (num_hypotheses + config.control.permutations) * config.num_seeds
  per_device = -(-num_members // (jax.device_count() if config.members.shard else 1))
  device_memory.check_memory(
      "num_seeds", config.num_seeds, per_member * per_device, device_memory.available_memory_bytes(),
      f"{per_device} members per device hold {per_member / 2 ** 20:.3g} MiB of state each before any activation: "
      "lower num_seeds or the number of hypotheses")


def member_table(hyps, num_seeds: int, tau_T) -> dict:
  """Per-member constants, arrays with a leading members axis: targets (M, T), learn_g, g_lo, g_hi (M,)."""
  targets_KxT = hypotheses.target_table(hyps, tau_T)
  rows = members.member_rows(len(hyps), num_seeds)
  return {
      "targets": np.stack([targets_KxT[k] for k, _ in rows]),
      "learn_g": np.array([hyps[k].learned for k, _ in rows]),
      "g_lo": np.array([hyps[k].lo for k, _ in rows], np.float32),
      "g_hi": np.array([hyps[k].hi for k, _ in rows], np.float32),
  }


class SweepProgram:
  """The model, optimizer and jitted lifted steps of one sweep; built once from config and data shape.

  `total_steps` sets the learning-rate schedule; None builds the optimizer for its state's shape only, which is
  all that restoring for prediction needs.
  """

  def __init__(self, config, num_labels: int, num_members: int, total_steps: int | None):
    self.model = make_model("segmentation", config.model)
    self.optimizer = optim.make_optimizer(config.optim, total_steps or 1)
    self.num_labels = num_labels
    self.num_members = num_members
    self.seed = config.seed
    self.num_seeds = config.num_seeds
    self.patch_size = config.train.patch_size
    self.consistency_weight = config.loss.consistency_weight
    self.mesh = members.members_mesh(num_members) if config.members.shard else None
    self.member_sharding = members.member_sharding(self.mesh)
    self.shared_sharding = members.replicated_sharding(self.mesh)
    strategy, chunk = config.members.strategy, config.members.chunk
    self.strategy = members.resolve_strategy(strategy)

    train_one = functools.partial(
        steps.train_step, model=self.model, optimizer=self.optimizer, loss_kind=config.loss.kind,
        tolerance=config.loss.tolerance, binarise_weight=config.loss.binarise_weight,
        consistency_weight=self.consistency_weight, pooling_period=2 ** self.model.d)
    eval_one = functools.partial(steps.eval_step, model=self.model)
    masks_one = lambda state, member, batch: steps.predict_masks(state, batch, model=self.model)
    lift = functools.partial(members.lift, strategy=strategy, num_members=num_members, chunk=chunk,
                             mesh=self.mesh)
    self.train_step = jax.jit(lift(train_one), donate_argnums=(0,))
    self.eval_step = jax.jit(lift(eval_one))
    self.predict_masks = jax.jit(lift(masks_one))
    self.final_targets = jax.jit(jax.vmap(lambda state, member: steps.member_targets(state.params, member)))

  def init_states(self):
    """Stacked initial states; every member of seed s starts from the same weights (paired comparison)."""
    base = jax.random.key(self.seed)
    one = lambda s: steps.init_state(self.model, self.optimizer, jax.random.fold_in(base, s),
                                     (self.patch_size, self.patch_size), self.num_labels)
    by_seed = [one(s) for s in range(self.num_seeds)]
    states = members.stack_members([by_seed[members.seed_of(m, self.num_seeds)] for m in range(self.num_members)])
    return members.place(states, self.member_sharding)

  def abstract_states(self):
    return jax.eval_shape(self.init_states)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """One sweep as built from its config and data: the program, the per-member constants (placed on devices),
  the expanded hypotheses, the step count and the checkpoint metadata."""
  program: SweepProgram
  member_arrays: dict
  hypotheses: tuple
  total_steps: int | None
  meta: dict

  @property
  def rows(self) -> list[tuple[int, int]]:
    return members.member_rows(len(self.hypotheses), self.program.num_seeds)


def build(config, data, hyps=None, num_train_images: int | None = None) -> Sweep:
  """The sweep for this config and data (a dataset or its `DataSummary`): `num_train_images` sets the schedule's
  length for training; without it the program can restore and predict but not train. `hyps`: the already
  expanded hypotheses, if the caller has them. The permuted-target controls (`hypotheses.permuted_controls`) follow
  the hypotheses on the members axis and train exactly like them."""
  hyps = hypotheses.expand(config.hypotheses) if hyps is None else list(hyps)
  hyps = tuple(hyps + hypotheses.permuted_controls(data.num_classes, config.control.permutations, config.seed))
  member_arrays = member_table(hyps, config.num_seeds, data.tau)
  total = None if num_train_images is None else sampler.run_steps(config.train, data.image_shape, num_train_images)
  program = SweepProgram(config, data.num_classes, len(member_arrays["targets"]), total)
  fingerprint, config_hash = checkpoint.config_fingerprint(config, FINGERPRINT_KEYS)
  meta = {"config_hash": config_hash, "fingerprint": fingerprint, "hypotheses": [h.name for h in hyps],
          "targets": np.asarray(member_arrays["targets"]).tolist(), "strategy": program.strategy,
          "stress_times": np.asarray(data.stress_times).tolist()}
  return Sweep(program=program, member_arrays=members.place(member_arrays, program.member_sharding),
               hypotheses=hyps, total_steps=total, meta=meta)


def restore(work_dir: str, sweep: Sweep):
  """The latest complete checkpoint of the sweep in work_dir as (states, step), or (None, 0) if there is none."""
  ckpt = checkpoint.Checkpointer(os.path.join(work_dir, "checkpoints"))
  try:
    if ckpt.latest_step() is None:
      return None, 0
    states, saved = ckpt.restore(sweep.program.abstract_states(), sweep.meta)
    return members.place(states, sweep.program.member_sharding), int(saved["step"])
  finally:
    ckpt.close()
