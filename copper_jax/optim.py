"""Optimizer from config: Adam with the paper's defaults and an optional schedule."""
import optax

from copper_jax.errors import ConfigError

SCHEDULES = ("constant", "cosine", "warmup_cosine")


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  """Adam (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8 unless configured) with a constant or cosine learning rate."""
  # float(): a whole number (1, or 2**64 typed by a script) would otherwise reach XLA as an integer argument.
  lr = float(optim_config.learning_rate)
  schedule = optim_config.schedule
  if schedule == "constant":
    learning_rate = lr
  elif schedule == "cosine":
    learning_rate = optax.cosine_decay_schedule(lr, max(total_steps, 1))
  elif schedule == "warmup_cosine":
    warmup = min(optim_config.warmup_steps, max(total_steps - 1, 0))
    learning_rate = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  else:
    raise ConfigError(f"config.optim.schedule={schedule!r} is not one of {SCHEDULES}")
  return optax.adam(learning_rate, b1=float(optim_config.b1), b2=float(optim_config.b2), eps=float(optim_config.eps))
