"""Run-to-run determinism: what makes two runs with the same config and seed give the same bytes, and a record of it.

On CPU, XLA's programs are deterministic already: the same config and seed give the same checkpoints, metrics
and results (tests/test_reliability.py checks it, through kills and resumes too). On GPU they are not by default:
XLA autotunes convolution and matmul algorithms by timing them, and some kernels (scatter-adds, reductions that
use atomics) add in whatever order threads finish, so the last bits can change from run to run. XLA's flag
`--xla_gpu_deterministic_ops=true` picks deterministic implementations and turns autotuning off, at some cost in
speed; it includes `--xla_gpu_exclude_nondeterministic_ops`. `TF_CUDNN_DETERMINISTIC` is TensorFlow's variable:
XLA stopped reading it in 2024 (openxla/xla#14310), so it is not set here.

Random numbers need no flag: keys are derived from the seed with `fold_in`, and threefry (the default
`jax_default_prng_impl`) gives the same values on every backend; with `jax_threefry_partitionable` (on by default
in the JAX this project pins) also under any sharding. An "rbg" key is reproducible only on the same backend, so
`record()` stores the PRNG settings with the backend.

Use: call `configure(config.deterministic)` first thing in a launcher, before anything runs on a device, and
store `record()` in the run's metadata.
"""
import os
import sys

DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"
_FLAG_NAME = DETERMINISTIC_FLAG.split("=")[0]


def _xla_flags() -> list[str]:
  return os.environ.get("XLA_FLAGS", "").split()


def _backends_started() -> bool:
  """True once JAX has created its backends, after which XLA_FLAGS is no longer read."""
  if "jax" not in sys.modules:
    return False
  # Private, as JAX offers no public way to ask; test_determinism_flag_set_too_late_is_refused notices a rename.
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  return xla_bridge.backends_are_initialized()


def _flag_value() -> bool | None:
  """The value XLA_FLAGS gives --xla_gpu_deterministic_ops (the last setting wins, as in XLA), or None."""
  value = None
  for flag in _xla_flags():
    name, _, setting = flag.partition("=")
    if name == _FLAG_NAME:
      value = setting.lower() in ("", "true", "1")
  return value


def configure(deterministic: bool) -> None:
  """Makes XLA use deterministic GPU ops in this process when `deterministic` is True.

  Appends `--xla_gpu_deterministic_ops=true` to the XLA_FLAGS environment variable (keeping the flags already
  there). XLA reads XLA_FLAGS once, when JAX creates its backends (at the first computation or jax.devices()),
  so call this before that; a later call that would change the setting raises RuntimeError instead of silently
  doing nothing. False leaves XLA_FLAGS as it is, so a user's own setting stands. Has no effect on CPU results,
  which are deterministic anyway.
  """
  if not isinstance(deterministic, bool):
    raise TypeError(f"deterministic={deterministic!r}: use True or False")
  if not deterministic or _flag_value():
    return
  if _backends_started():
    raise RuntimeError("determinism.configure(True) was called after JAX started its backends, so XLA would ignore "
                       f"{DETERMINISTIC_FLAG}: call it before anything runs on a device")
  os.environ["XLA_FLAGS"] = " ".join(_xla_flags() + [DETERMINISTIC_FLAG])


def record() -> dict:
  """What decides reproducibility in this process, as JSON-ready values for a run's metadata.

  Keys: deterministic_gpu_ops (bool: the XLA flag in effect), xla_flags (str), backend, device_kind,
  device_count, jax, jaxlib, prng_impl, threefry_partitionable, matmul_precision, x64. Reading the backend
  starts JAX's backends, so call it after `configure`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {
      "deterministic_gpu_ops": bool(_flag_value()),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "jax": jax.__version__,
      "jaxlib": jaxlib.version.__version__,
      "prng_impl": str(jax.config.jax_default_prng_impl),
      "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
      "matmul_precision": jax.config.jax_default_matmul_precision,
      "x64": bool(jax.config.jax_enable_x64),
  }
