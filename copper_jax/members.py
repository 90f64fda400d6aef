"""Lifting one model's step over a members axis, and spreading that axis over devices.

A sweep trains M = K hypotheses x S seeds models side by side. Every member's state carries a leading axis of
size M; the step of ONE member is written once and lifted here by one of three strategies:

- `vmap`: `jax.vmap` over members. The clean formulation, meant for GPUs, but on XLA's CPU backend a vmapped
  convolution becomes a grouped convolution on a slow generic path, far slower than K separate runs.
- `unrolled`: the members' steps written one after another inside one jit. XLA keeps each convolution on its
  fast path, and the program still compiles and dispatches once per step, about as fast as K separate runs.
  The CPU default.
- `map`: `jax.lax.map` over members in chunks of `chunk` (chunk members vmapped at a time): bounds memory
  for very large sweeps on accelerators. On CPU, convolutions inside loops are slow.

`auto` picks per backend from what `launch/benchmark.py` measured: `unrolled` on CPU, `vmap` elsewhere. The
measured efficiencies are in docs/performance.md, "The members axis".
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from copper_jax.errors import ConfigError

STRATEGIES = ("auto", "vmap", "unrolled", "map")


# The members axis is hypothesis-major: member m = k * S + s trains hypothesis k from seed s's initial weights.
# These helpers are the only place that order is written down.
def member_index(k: int, s: int, num_seeds: int) -> int:
  """The member that trains hypothesis k with seed s."""
  return k * num_seeds + s


def member_rows(num_hypotheses: int, num_seeds: int) -> list[tuple[int, int]]:
  """(hypothesis, seed) of every member, in members-axis order."""
  return [(k, s) for k in range(num_hypotheses) for s in range(num_seeds)]


def hypothesis_members(k: int, num_seeds: int) -> list[int]:
  """The members of hypothesis k, seed 0 first."""
  return [member_index(k, s, num_seeds) for s in range(num_seeds)]


def seed_of(m: int, num_seeds: int) -> int:
  """The seed whose initial weights member m starts from."""
  return m % num_seeds


def first_seed(array_M, num_seeds: int):
  """The seed-0 member of every hypothesis: (K, ...) from an array with a leading members axis (M, ...)."""
  return array_M[::num_seeds]


def resolve_strategy(strategy: str, backend: str | None = None) -> str:
  """The concrete strategy for `strategy` on `backend` (default: JAX's default backend)."""
  if strategy not in STRATEGIES:
    raise ConfigError(f"config.members.strategy={strategy!r} is not one of {STRATEGIES}")
  if strategy != "auto":
    return strategy
  backend = backend or jax.default_backend()
  return "unrolled" if backend == "cpu" else "vmap"


def member_slice(tree, m: int):
  """Member m's slice of a stacked pytree."""
  return jax.tree_util.tree_map(lambda x: x[m], tree)


def stack_members(trees):
  """Stacks per-member pytrees along a new leading members axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def lift(step: Callable, strategy: str, num_members: int, chunk: int = 0, mesh: Mesh | None = None) -> Callable:
  """Lifts `step(state, member, *shared) -> outputs` to stacked states and member arrays.

  `state` and `member` carry a leading members axis; the `shared` arguments (the batch) are the same for every
  member, so comparisons between members are paired. With a `mesh`, each device runs the strategy over its own
  block of members (`jax.shard_map`): no member's step is split across devices, so results equal the one-device
  run. The lifted function is not jitted here: the caller jits it once, with its own donation.
  """
  if mesh is not None:
    local = lift(step, strategy, num_members // mesh.devices.size, chunk)
    spec, same = PartitionSpec("members"), PartitionSpec()
    def sharded(states, members_, *shared):
      return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec) + (same,) * len(shared), out_specs=spec,
                           check_vma=False)(states, members_, *shared)
    return sharded
  strategy = resolve_strategy(strategy)
  if strategy == "vmap":
    def lifted(states, members, *shared):
      return jax.vmap(lambda s, m: step(s, m, *shared))(states, members)
  elif strategy == "unrolled":
    def lifted(states, members, *shared):
      outputs = [step(member_slice(states, m), member_slice(members, m), *shared) for m in range(num_members)]
      return stack_members(outputs)
  else:
    def lifted(states, members, *shared):
      return jax.lax.map(lambda sm: step(sm[0], sm[1], *shared), (states, members),
                         batch_size=chunk if chunk > 0 else None)
  return lifted


def members_mesh(num_members: int, devices=None) -> Mesh | None:
  """A 1-D mesh over the largest number of local devices that divides the members axis; None for one device.

  After `jax.distributed.initialize()` (`launch/sweep.py --num_processes=...`), `jax.devices()` are every
  process's devices, so the members are split over all hosts.
  """
  devices = list(devices if devices is not None else jax.devices())
  usable = max(n for n in range(1, len(devices) + 1) if num_members % n == 0)
  if usable == 1:
    return None
  return Mesh(np.asarray(devices[:usable]), ("members",))


def member_sharding(mesh: Mesh | None):
  """Sharding for arrays with a leading members axis, or None (default placement) without a mesh."""
  return None if mesh is None else NamedSharding(mesh, PartitionSpec("members"))


def replicated_sharding(mesh: Mesh | None):
  """Sharding for arrays every member shares (the batch)."""
  return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def _host_side(x):
  """x as numpy when it is a concrete value this process holds whole; tracers and spread arrays as they are."""
  if isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return x
  return np.asarray(x)


def place(tree, sharding):
  """Puts a pytree on devices with `sharding` (no-op placement when sharding is None)."""
  if sharding is None:
    return jax.tree_util.tree_map(jnp.asarray, tree)
  if not sharding.is_fully_addressable:
    # Every process holds the whole value; each puts its own devices' part (an array on one local device cannot
    # be put on another process's devices).
    tree = jax.tree_util.tree_map(_host_side, tree)
  return jax.device_put(tree, sharding)
