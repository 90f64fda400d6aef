"""Checkpointer: round trip, config and structure refusals, corruption fallback, kill mid-save, best step."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from orbax.checkpoint._src.path import atomicity

from copper_jax.store.checkpoint import Checkpointer, config_fingerprint
from copper_jax.errors import CheckpointError

FINGERPRINT_KEYS = ["model.c", "hypotheses"]

# A failed orbax read can leave un-awaited coroutines whose exceptions surface at garbage collection; the
# failure itself is what restore handles (fallback or CheckpointError), so they are only noise here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  lr: float = flax.struct.field(pytree_node=False, default=1e-3)


def make_state(c=4, seed=0, extra=False, dtype=jnp.float32):
  """A TrainState with a real optax.adam state that has taken one update (so mu/nu are non-zero)."""
  key = jax.random.PRNGKey(seed)
  params = {"w": jax.random.normal(key, (3, c), dtype), "b": jnp.zeros((c,), dtype),
            # Random, so incompressible: its bytes dominate the largest file orbax writes.
            "big": jax.random.normal(jax.random.fold_in(key, 1), (4096,), dtype)}
  if extra:
    params["extra"] = jnp.ones((2,), dtype)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return TrainState(step=jnp.array(0), params=optax.apply_updates(params, updates), opt_state=opt_state)


def abstract(**kwargs):
  return jax.eval_shape(lambda: make_state(**kwargs))


def meta_for(c=4, hypotheses=("smooth", "rough"), **extra):
  config = ml_collections.ConfigDict({"model": {"c": c, "depth": 2}, "hypotheses": hypotheses})
  fingerprint, config_hash = config_fingerprint(config, FINGERPRINT_KEYS)
  return {"config_hash": config_hash, "fingerprint": fingerprint, **extra}


def assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_steps(directory, steps, **kwargs):
  states = {}
  with Checkpointer(directory, **kwargs) as ckpt:
    for step in steps:
      states[step] = make_state(seed=step).replace(step=jnp.array(step))
      ckpt.save(step, states[step], meta_for(metrics={"step": step}))
  return states


def test_round_trip_adam_state_in_struct_dataclass(tmp_path):
  state = make_state().replace(step=jnp.array(7))
  meta = meta_for(metrics={"val_acc": 0.5})
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    ckpt.save(7, state, meta)
  with Checkpointer(str(tmp_path / "ckpt")) as ckpt:  # A fresh process would reopen it like this.
    assert ckpt.latest_step() == 7 and ckpt.all_steps() == [7]
    restored, restored_meta = ckpt.restore(abstract(), meta_for())
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  assert isinstance(restored.step, jax.Array)
  assert_trees_equal(restored, state)
  assert restored_meta == meta


def test_changed_fingerprint_is_refused_naming_the_key(tmp_path):
  save_steps(str(tmp_path), [1])
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(CheckpointError) as info:
    ckpt.restore(abstract(), meta_for(c=8))
  message = str(info.value)
  assert "model.c saved 4 vs now 8" in message and "hypotheses" not in message
  assert "use a fresh --workdir or restore the old config" in message and "\n" not in message


@pytest.mark.parametrize("target, leaf", [
    (dict(c=5), ".params['b'] saved float32[4] vs now float32[5]"),
    (dict(dtype=jnp.bfloat16), ".params['b'] saved float32[4] vs now bfloat16[4]"),  # orbax alone would cast.
    (dict(extra=True), ".params['extra'] (float32[2]) is not in the checkpoint"),
])
def test_structurally_different_target_is_refused_naming_the_leaf(tmp_path, target, leaf):
  save_steps(str(tmp_path), [1])
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(abstract(**target), meta_for())
    assert leaf in str(info.value) and "\n" not in str(info.value)
    ckpt.restore(abstract(), meta_for())  # The checkpoint itself is fine.


def test_missing_leaf_in_target_is_refused_not_restored_partially(tmp_path):
  save_steps(str(tmp_path), [1])
  smaller = jax.eval_shape(lambda: {"step": jnp.array(0), "params": {"w": jnp.zeros((3, 4))}})
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(CheckpointError, match=r"leaf \['params'\]\['w'\]"):
    ckpt.restore(smaller, meta_for())


def _files(step_dir):
  return [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]


def _largest_state_file(step_dir):
  return max(_files(os.path.join(step_dir, "state")), key=os.path.getsize)


def _garble(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 2, len(data) // 2 + 16):
    data[i] ^= 0x5A
  open(path, "wb").write(bytes(data))


def _truncate(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


CORRUPTIONS = {
    "array data garbled": lambda d: _garble(_largest_state_file(d)),  # orbax restores wrong numbers silently.
    "array data truncated": lambda d: _truncate(_largest_state_file(d)),
    "array data deleted": lambda d: os.remove(_largest_state_file(d)),
    "state tree metadata deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "meta truncated": lambda d: _truncate(os.path.join(d, "meta", "metadata")),
    "manifest deleted": lambda d: os.remove(os.path.join(d, "manifest", "metadata")),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, corrupt):
  states = save_steps(str(tmp_path), [1, 2])
  CORRUPTIONS[corrupt](str(tmp_path / "2"))
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.warns(UserWarning, match="checkpoint step 2 .* unreadable .* falling back to step 1"):
      restored, meta = ckpt.restore(abstract(), meta_for())
  assert meta["metrics"] == {"step": 1}
  assert_trees_equal(restored, states[1])


def test_no_readable_checkpoint_is_an_error(tmp_path):
  save_steps(str(tmp_path), [1, 2])
  for step in ("1", "2"):
    _garble(_largest_state_file(str(tmp_path / step)))
  with Checkpointer(str(tmp_path)) as ckpt, pytest.warns(UserWarning, match="step 2"):
    with pytest.raises(CheckpointError, match="no readable checkpoint .*step 2: .*step 1: ") as info:
      ckpt.restore(abstract(), meta_for())
  assert "\n" not in str(info.value)


def test_no_checkpoint_at_all_is_an_error(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    with pytest.raises(CheckpointError, match="no latest checkpoint in"):
      ckpt.restore(abstract(), meta_for())
    with pytest.raises(CheckpointError, match="no checkpoint for step 3"):
      ckpt.restore(abstract(), meta_for(), step=3)


def test_failure_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
  states = save_steps(str(tmp_path), [1])

  async def killed(self):
    raise OSError("simulated kill before the final rename")

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", killed)
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(OSError, match="simulated kill"):
    ckpt.save(2, make_state(seed=2), meta_for())
  monkeypatch.undo()
  assert any("orbax-checkpoint-tmp" in name for name in os.listdir(tmp_path))
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [1]
    restored, _ = ckpt.restore(abstract(), meta_for())
  assert_trees_equal(restored, states[1])
  assert not any("orbax-checkpoint-tmp" in name for name in os.listdir(tmp_path))  # Cleaned up on open.


_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from copper_jax.store.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1])
    for step in range(1, 10_000):
      state = {"step": np.array(step, np.int32), "huge": np.full((1 << 20,), step, np.float32)}
      ckpt.save(step, state, {"config_hash": "h"})
      print(step, flush=True)
""")


def test_sigkill_during_saves_leaves_latest_restorable(tmp_path):
  """A real process killed while it saves 4 MB steps in a loop: the latest step on disk must restore cleanly."""
  directory = str(tmp_path / "ckpt")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  child = subprocess.Popen([sys.executable, "-c", _SAVER, directory], stdout=subprocess.PIPE, text=True, cwd=repo,
                           env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert child.stdout.readline().strip() == "1"
    time.sleep(0.3)  # Land somewhere in a later save (or the deletion of an old step).
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  target = {"step": jax.ShapeDtypeStruct((), jnp.int32), "huge": jax.ShapeDtypeStruct((1 << 20,), jnp.float32)}
  with Checkpointer(directory) as ckpt, warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    latest = ckpt.latest_step()
    restored, _ = ckpt.restore(target, {"config_hash": "h"})
  assert not [w for w in caught if "unreadable" in str(w.message)]  # No fallback was needed.
  assert int(restored["step"]) == latest
  np.testing.assert_array_equal(np.asarray(restored["huge"]), np.full((1 << 20,), latest, np.float32))


@pytest.mark.parametrize("mode, values, best", [
    ("max", [0.2, 0.9, 0.1, None, 0.3], 2),
    ("min", [0.2, 0.9, 0.1, None, 0.3], 3),
])
def test_best_checkpoint_survives_next_to_latest(tmp_path, mode, values, best):
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc", best_mode=mode) as ckpt:
    for step, value in enumerate(values, start=1):
      metrics = {} if value is None else {"val_acc": value}
      ckpt.save(step, make_state(seed=step).replace(step=jnp.array(step)), meta_for(metrics=metrics))
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc", best_mode=mode) as ckpt:
    assert ckpt.all_steps() == sorted({best, len(values)})
    assert ckpt.best_step() == best and ckpt.latest_step() == len(values)
    restored, meta = ckpt.restore(abstract(), meta_for(), which="best")
    assert int(restored.step) == best and meta["metrics"]["val_acc"] == values[best - 1]
    restored, _ = ckpt.restore(abstract(), meta_for())
    assert int(restored.step) == len(values)


def test_explicit_best_value_and_no_best_yet(tmp_path):
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc") as ckpt:
    ckpt.save(1, make_state(), meta_for())
    assert ckpt.best_step() is None
    with pytest.raises(CheckpointError, match="no best checkpoint"):
      ckpt.restore(abstract(), meta_for(), which="best")
    ckpt.save(2, make_state(), meta_for(), best_value=0.7)
    ckpt.save(3, make_state(), meta_for(), best_value=float("nan"))  # Never becomes the best.
    assert ckpt.best_step() == 2 and ckpt.all_steps() == [2, 3]


def test_garbled_manifest_of_the_best_step_does_not_block_opening(tmp_path):
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc") as ckpt:
    for step, value in [(1, 0.9), (2, 0.5)]:
      ckpt.save(step, make_state(seed=step).replace(step=jnp.array(step)), meta_for(), best_value=value)
  _truncate(str(tmp_path / "1" / "manifest" / "metadata"))
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc") as ckpt:
    assert ckpt.best_step() == 2  # Step 1's value cannot be read, so it no longer counts as the best.
    ckpt.save(3, make_state(), meta_for(), best_value=0.1)
    assert ckpt.best_step() == 2 and ckpt.all_steps() == [2, 3]


def test_rewind_past_the_best_step_picks_the_best_left(tmp_path):
  with Checkpointer(str(tmp_path), max_to_keep=1, best_metric="val_acc") as ckpt:
    for step, value in [(1, 0.5), (2, 0.9), (3, 0.1)]:
      ckpt.save(step, make_state(seed=step).replace(step=jnp.array(step)), meta_for(), best_value=value)
    assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
    with pytest.warns(UserWarning, match=r"deleting checkpoints \[2, 3\]"):
      ckpt.save(2, make_state(), meta_for(), best_value=0.3)
    assert ckpt.all_steps() == [2] and ckpt.best_step() == 2


def test_save_after_rewind_replaces_newer_steps(tmp_path):
  save_steps(str(tmp_path), [1, 2, 3], max_to_keep=3)
  with Checkpointer(str(tmp_path), max_to_keep=3) as ckpt:
    ckpt.restore(abstract(), meta_for(), step=1)
    redo = make_state(seed=99).replace(step=jnp.array(2))
    with pytest.warns(UserWarning, match=r"deleting checkpoints \[2, 3\]"):
      ckpt.save(2, redo, meta_for())
    assert ckpt.all_steps() == [1, 2]
    restored, _ = ckpt.restore(abstract(), meta_for())
  assert_trees_equal(restored, redo)


def test_save_requires_config_hash(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(ValueError, match="config_hash"):
    ckpt.save(1, make_state(), {"metrics": {}})


def test_config_fingerprint_is_canonical():
  a = ml_collections.ConfigDict({"model": {"c": 8, "depth": 2}, "hypotheses": ("x", "y")})
  b = ml_collections.ConfigDict({"hypotheses": ["x", "y"], "model": {"depth": 3, "c": np.int64(8)}})
  flat_a, hash_a = config_fingerprint(a, ["model.c", "hypotheses"])
  flat_b, hash_b = config_fingerprint(b, ["hypotheses", "model.c"])
  assert flat_a == {"model.c": 8, "hypotheses": ["x", "y"]} and hash_a == hash_b and len(hash_a) == 64
  assert config_fingerprint(a, ["model.depth"])[1] != config_fingerprint(b, ["model.depth"])[1]


def test_a_checkpoint_whose_fingerprint_lacks_a_newer_key_restores(tmp_path):
  # The fingerprint is derived from the config's declarations and grows with them: a checkpoint written when it
  # held fewer keys restores when those agree (config.json answers for the rest), and not when one differs.
  state = make_state().replace(step=jnp.array(3))
  config = ml_collections.ConfigDict({"model": {"c": 4}, "hypotheses": ("smooth", "rough")})
  older, older_hash = config_fingerprint(config, ["model.c"])
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(3, state, {"config_hash": older_hash, "fingerprint": older})
  with Checkpointer(str(tmp_path)) as ckpt:
    restored, _ = ckpt.restore(abstract(), meta_for())
    assert_trees_equal(restored, state)
    with pytest.raises(CheckpointError, match="model.c saved 4 vs now 8"):
      ckpt.restore(abstract(), meta_for(c=8))


def test_a_disk_that_fills_while_orbax_finishes_is_the_one_line_error(tmp_path, monkeypatch):
  """tensorstore reports a full disk as a ValueError; one that surfaces as orbax finishes its writes (at close, late
  on a loaded machine) is the same one-line error as one during `save`, and the earlier step stays intact."""
  states = save_steps(str(tmp_path), [1])
  ckpt = Checkpointer(str(tmp_path))
  manager_close = ckpt._manager.close  # pylint: disable=protected-access

  def full(*args, **kwargs):
    manager_close()
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x\": [OS error 28: No space left on device]")

  monkeypatch.setattr(ckpt._manager, "close", full)  # pylint: disable=protected-access
  with pytest.raises(CheckpointError) as error:
    ckpt.close()
  message = str(error.value)
  assert "\n" not in message and "disk full" in message and "step 1 is intact" in message
  with Checkpointer(str(tmp_path)) as again:
    restored, _ = again.restore(abstract(), meta_for())
  assert_trees_equal(restored, states[1])
