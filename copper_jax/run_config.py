"""A training run's config.json against its checkpoints: a resume with other values of the keys that fix them is
refused, in one line, before the run writes anything.

The keys that fix a checkpoint are derived from the job's table in `config_rules`; a config.json saved before a key
existed counts as holding the key's `absent` value, which is what that run trained with.
"""
import json
import os

from copper_jax import config_rules, config_utils
from copper_jax.errors import ConfigError
from copper_jax.store import workdir


def check_resume(work_dir: str, config, table: dict, what: str) -> None:
  """ConfigError naming every changed key when `work_dir` holds checkpoints trained with another value of a key that
  fixes them (e.g. loss.consistency_weight 0.0 -> 0.5); reads only."""
  if not workdir.has_checkpoints(work_dir) or not os.path.exists(os.path.join(work_dir, workdir.CONFIG_FILE)):
    return
  saved = workdir.load_config(work_dir)
  config_rules.complete(saved, table)
  changed = workdir.config_differences(saved, config, config_rules.fingerprint_keys(table))
  if changed:
    raise ConfigError(f"{work_dir} holds checkpoints of {what} trained with other settings ({', '.join(changed)}): "
                      "use a fresh --workdir, or the old values to resume")


def save(work_dir: str, config, table: dict, what: str) -> None:
  """Writes `work_dir/config.json` (atomically) for the run about to train, after `check_resume`; a resume that
  changes only keys that do not fix the checkpoints (e.g. a longer duration) rewrites it, so it describes the
  latest run."""
  check_resume(work_dir, config, table, what)
  os.makedirs(work_dir, exist_ok=True)
  path = os.path.join(work_dir, workdir.CONFIG_FILE)
  new = json.loads(config_utils.config_to_json(config))
  if os.path.exists(path) and config_utils.config_to_json(workdir.load_config(work_dir)) == config_utils.config_to_json(new):
    return  # unchanged: the file is not touched
  workdir.atomic_write_json(path, new)
