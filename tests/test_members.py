"""One segmentation step lifted over the members axis equals K separate runs, whatever the strategy; its optional
shift-consistency term is off by default and compares the two masks pixel for pixel."""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections
import numpy as np
import optax
import pytest

from copper_jax import members
from copper_jax.sweep import steps as seg_steps
from copper_jax.models import make_model

MODEL = ml_collections.ConfigDict({"c": 4, "d": 1, "n": 1, "N": 1, "norm": "batch", "dtype": "float32"})
NUM_LABELS = 3


def _setup(num_members=3, model=None, **step_options):
  model = model or make_model("segmentation", MODEL)
  optimizer = optax.adam(1e-2)
  states = [seg_steps.init_state(model, optimizer, jax.random.key(m), (16, 16), NUM_LABELS)
            for m in range(num_members)]
  member_list = [{"targets": jnp.asarray([0.1, 0.4 + 0.1 * m, 0.9]), "learn_g": jnp.asarray(m == 2),
                  "g_lo": jnp.asarray(0.0), "g_hi": jnp.asarray(1.0)} for m in range(num_members)]
  rng = np.random.default_rng(0)
  batches = [{"image": jnp.asarray(rng.normal(size=(4, 16, 16, 1)), jnp.float32),
              "label": jnp.asarray(rng.integers(0, NUM_LABELS, 4), jnp.int32)} for _ in range(3)]
  step = functools.partial(seg_steps.train_step, model=model, optimizer=optimizer, loss_kind="mse",
                           tolerance=0.05, binarise_weight=0.1, **step_options)
  return step, states, member_list, batches


def _run_separately(step, states, member_list, batches):
  single = jax.jit(step)
  out = []
  for state, member in zip(states, member_list):
    for batch in batches:
      state, _ = single(state, member, batch)
    out.append(state)
  return members.stack_members(out)


# Under vmap the consistency crop's step-dependent offset becomes a gather: that lifting is checked too.
@pytest.mark.parametrize("strategy, consistency_weight", [("unrolled", 0.0), ("vmap", 0.0), ("map", 0.0),
                                                          ("vmap", 1.0)])
def test_lifted_step_equals_separate_runs(strategy, consistency_weight):
  step, states, member_list, batches = _setup(consistency_weight=consistency_weight, pooling_period=2)
  expected = _run_separately(step, states, member_list, batches)
  lifted = jax.jit(members.lift(step, strategy, len(states), chunk=2))
  stacked, member_arrays = members.stack_members(states), members.stack_members(member_list)
  for batch in batches:
    stacked, metrics = lifted(stacked, member_arrays, batch)
  assert metrics["loss_sum"].shape == (len(states),)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), stacked, expected)


def test_learned_member_moves_its_curve_and_fixed_members_do_not():
  step, states, member_list, batches = _setup()
  lifted = jax.jit(members.lift(step, "unrolled", len(states)))
  stacked, member_arrays = members.stack_members(states), members.stack_members(member_list)
  for batch in batches:
    stacked, _ = lifted(stacked, member_arrays, batch)
  g_logits = np.asarray(stacked.params["g_logits"])
  assert np.all(g_logits[:2] == 0.0) and np.any(g_logits[2] != 0.0)


def test_a_non_finite_member_is_frozen_and_marked_while_others_train():
  step, states, member_list, batches = _setup()
  member_list[1]["targets"] = jnp.asarray([0.1, jnp.nan, 0.9])
  batch = dict(batches[0], label=jnp.asarray([1, 1, 0, 2], jnp.int32))
  lifted = jax.jit(members.lift(step, "unrolled", len(states)))
  stacked = members.stack_members(states)
  new, metrics = lifted(stacked, members.stack_members(member_list), batch)
  assert np.asarray(metrics["diverged"]).tolist() == [False, True, False]
  before = jax.tree_util.tree_leaves(stacked.params["net"])
  after = jax.tree_util.tree_leaves(new.params["net"])
  for a, b in zip(after, before):
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[1])
  assert any(not np.array_equal(np.asarray(a)[0], np.asarray(b)[0]) for a, b in zip(after, before))


def _train(step, state, member, batches):
  jitted = jax.jit(step)
  for batch in batches:
    state, metrics = jitted(state, member, batch)
  return state, metrics


def test_consistency_off_is_the_step_without_it_and_on_changes_training():
  default_step, states, member_list, batches = _setup(num_members=1)
  default, default_metrics = _train(default_step, states[0], member_list[0], batches)
  off, off_metrics = _train(functools.partial(default_step, consistency_weight=0.0, pooling_period=2),
                            states[0], member_list[0], batches)
  jax.tree_util.tree_map(np.testing.assert_array_equal, off, default)
  assert float(off_metrics["consistency_sum"]) == 0.0
  on, on_metrics = _train(functools.partial(default_step, consistency_weight=1.0, pooling_period=2),
                          states[0], member_list[0], batches)
  # The zero-initialised head makes every first mask 0.5, so the term only speaks from the second step on.
  assert float(on_metrics["consistency_sum"]) > 0.0
  assert float(on_metrics["loss_sum"]) != float(default_metrics["loss_sum"])
  trained, initial = jax.tree_util.tree_leaves(on.params["net"]), jax.tree_util.tree_leaves(states[0].params["net"])
  assert not bool(on.diverged) and all(np.all(np.isfinite(leaf)) for leaf in trained)
  assert any(not np.array_equal(a, b) for a, b in zip(trained, initial))


def test_consistency_crops_are_the_same_pixels_of_image_and_mask():
  x_BxPxPx1 = jnp.arange(2 * 16 * 16, dtype=jnp.float32).reshape(2, 16, 16, 1)
  assert np.asarray(seg_steps.consistency_shift(jnp.arange(7), 4)).tolist() == [1, 2, 3, 1, 2, 3, 1]
  for shift in (1, 2, 3):
    np.testing.assert_array_equal(seg_steps.shifted_crop(x_BxPxPx1, jnp.asarray(shift), 12),
                                  x_BxPxPx1[:, shift:shift + 12, shift:shift + 12])
    np.testing.assert_array_equal(seg_steps.shifted_crop(x_BxPxPx1[..., 0], jnp.asarray(shift), 12),
                                  x_BxPxPx1[:, shift:shift + 12, shift:shift + 12, 0])


class _PointwiseMask(nn.Module):
  """A mask that is a pointwise function of the image: it commutes with every shift, so the two masks of a
  consistency step can only disagree if their crops are cut out of line."""

  @nn.compact
  def __call__(self, x_BxHxWx1, train):
    del train
    scale = self.param("scale", nn.initializers.ones, ())
    return nn.sigmoid(scale * x_BxHxWx1[..., 0])


def test_consistency_of_a_shift_equivariant_mask_is_zero_at_every_shift():
  step, states, member_list, batches = _setup(num_members=1, model=_PointwiseMask(), consistency_weight=1.0,
                                              pooling_period=4)
  jitted, state = jax.jit(step), states[0]
  for batch in batches:  # steps 0, 1, 2: shifts 1, 2, 3
    state, metrics = jitted(state, member_list[0], batch)
    assert float(metrics["consistency_sum"]) < 1e-12
  assert float(state.params["net"]["scale"]) != 1.0  # the step did train the toy model


def test_auto_strategy_per_backend():
  assert members.resolve_strategy("auto", "cpu") == "unrolled"
  assert members.resolve_strategy("auto", "gpu") == "vmap"


def test_mesh_uses_devices_that_divide_the_members():
  devices = ["a", "b", "c", "d"]
  assert members.members_mesh(1, devices) is None
  assert members.members_mesh(6, devices).devices.size == 3
  assert members.members_mesh(8, devices).devices.size == 4


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from tests.test_members import _setup
    from copper_jax import members
    assert jax.device_count() == 4, jax.devices()
    step, states, member_list, batches = _setup(num_members=4)
    mesh = members.members_mesh(4)
    ms, rep = members.member_sharding(mesh), members.replicated_sharding(mesh)
    lifted = jax.jit(members.lift(step, "vmap", 4, mesh=mesh))
    one = jax.jit(members.lift(step, "vmap", 4))
    a = members.place(members.stack_members(states), ms)
    b = members.stack_members(states)
    m = members.stack_members(member_list)
    for batch in batches:
      a, _ = lifted(a, members.place(m, ms), members.place(batch, rep))
      b, _ = one(b, m, batch)
    assert len(jax.tree_util.tree_leaves(a)[0].sharding.device_set) == 4
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5), a, b)
    print("sharded ok")
""")


def test_sharded_members_over_four_cpu_devices_equal_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sharded ok" in result.stdout
