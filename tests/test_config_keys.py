"""Each config key declared once (copper_jax/config_rules.py): the fingerprints and the optional keys derive from the
declarations, an older workdir's config is completed once, and a resume that changes what training computes is
refused in one line."""
import json
import os

import ml_collections
import pytest

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax import config_rules, run_config
from copper_jax.classifier import program as classifier_program
from copper_jax.errors import ConfigError
from copper_jax.store import workdir
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep_run


def test_the_fingerprints_and_the_optional_keys_derive_from_the_declarations():
  assert sweep_program.FINGERPRINT_KEYS == config_rules.fingerprint_keys(config_rules.SWEEP)
  assert classifier_program.FINGERPRINT_KEYS == config_rules.fingerprint_keys(config_rules.CLASSIFIER)
  # every loss term changes what training computes, so every one fixes a sweep checkpoint
  assert {"loss.kind", "loss.tolerance", "loss.binarise_weight", "loss.consistency_weight"} <= set(
      sweep_program.FINGERPRINT_KEYS)
  # the duration and where the net came from do not: a finished run can be extended; model.* holds the choice
  for key in ("train.num_steps", "train.num_epochs", "model_from_grid", "model.search.enabled", "eval.batch_size"):
    assert key not in sweep_program.FINGERPRINT_KEYS
  assert "loss.consistency_weight" in config_rules.OPTIONAL and "loss.binarise_weight" not in config_rules.OPTIONAL
  # every declared key has a default in its job's config, and every default is declared
  for table, config in ((config_rules.SWEEP, sweep_configs.get_config("smoke")),
                        (config_rules.CLASSIFIER, classifier_configs.get_config("smoke"))):
    flat = {k for k in _flat(config.to_dict()) if not k.startswith("data.split.")}
    assert set(table) - {"data.split"} == flat


def _flat(d, prefix=""):
  out = set()
  for k, v in d.items():
    out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k}
  return out


def test_an_older_config_is_completed_with_what_it_trained_with():
  config = sweep_configs.get_config("smoke")
  saved = json.loads(json.dumps(config.to_dict()))
  del saved["loss"]["consistency_weight"], saved["model"]["search"], saved["data"]["synthetic"]["texture"]
  older = ml_collections.ConfigDict(saved)
  sweep_program.validate_config(older)
  assert older.loss.consistency_weight == 0.0 and older.model.search.enabled is False
  assert older.data.synthetic.texture == "copper"
  del saved["loss"]["binarise_weight"]  # declared required: every saved sweep config has it
  with pytest.raises(ConfigError, match=r"^config.loss.binarise_weight is missing from W/config.json"):
    sweep_program.validate_config(ml_collections.ConfigDict(saved), where="W/config.json")


def _trained_workdir(tmp_path, config):
  """A workdir as a sweep leaves it after its first checkpoint, as far as the resume check reads it."""
  work_dir = workdir.claim(str(tmp_path / "w"), workdir.SWEEP, "--workdir")
  os.makedirs(os.path.join(work_dir, "checkpoints", "3"))
  workdir.atomic_write_json(os.path.join(work_dir, workdir.CONFIG_FILE), config)
  return work_dir


@pytest.mark.parametrize("key, value, shown", [
    ("binarise_weight", 0.3, "loss.binarise_weight 0.1 -> 0.3"),
    ("consistency_weight", 0.5, "loss.consistency_weight 0.0 -> 0.5"),
    ("tolerance", 0.1, "loss.tolerance 0.05 -> 0.1"),
])
def test_a_resume_with_another_loss_weight_is_refused_in_one_line(tmp_path, key, value, shown):
  config = sweep_configs.get_config("smoke")
  work_dir = _trained_workdir(tmp_path, config.to_dict())
  before = open(os.path.join(work_dir, workdir.CONFIG_FILE)).read()
  config.loss[key] = value
  with pytest.raises(ConfigError) as info:
    sweep_run.run_sweep(config, work_dir, quiet=True)
  message = str(info.value)
  assert shown in message and "use a fresh --workdir, or the old values to resume" in message and "\n" not in message
  assert sorted(n for n in os.listdir(work_dir) if n not in (workdir.LOCK_FILE, workdir.MARK_FILE)) == ["checkpoints", workdir.CONFIG_FILE]  # nothing new
  assert open(os.path.join(work_dir, workdir.CONFIG_FILE)).read() == before


def test_an_older_workdir_resumes_with_the_value_it_trained_with_and_not_another(tmp_path):
  config = sweep_configs.get_config("smoke")
  saved = json.loads(json.dumps(config.to_dict()))
  del saved["loss"]["consistency_weight"]  # written before the term existed: it trained without it
  work_dir = _trained_workdir(tmp_path, saved)
  run_config.check_resume(work_dir, config, config_rules.SWEEP, "a sweep")
  config.train.num_steps = 60  # a longer run changes nothing that fixes the checkpoints
  run_config.check_resume(work_dir, config, config_rules.SWEEP, "a sweep")
  config.loss.consistency_weight = 0.5
  with pytest.raises(ConfigError, match=r"loss.consistency_weight 0.0 -> 0.5"):
    run_config.check_resume(work_dir, config, config_rules.SWEEP, "a sweep")


def test_a_classifier_resume_with_another_optimizer_setting_is_refused(tmp_path):
  config = classifier_configs.get_config("smoke")
  work_dir = _trained_workdir(tmp_path, config.to_dict())
  config.optim.b1 = 0.8
  with pytest.raises(ConfigError, match=r"optim.b1 0.9 -> 0.8"):
    run_config.check_resume(work_dir, config, config_rules.CLASSIFIER, "another classifier")
