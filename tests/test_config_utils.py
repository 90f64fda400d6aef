"""Config helpers: dotted get, validate messages, key checks, training duration, canonical JSON."""
import json

import ml_collections
import numpy as np
import pytest

from copper_jax import config_utils
from copper_jax.errors import ConfigError, DataError


def _config():
  return ml_collections.ConfigDict({
      "model": {"channels": 16, "depth": 3},
      "train": {"batch_size": 8, "num_steps": 0, "num_epochs": 2, "lr": 1e-3},
      "hypotheses": ("smooth", "rough"),
  })


def test_get_walks_dotted_keys():
  config = _config()
  assert config_utils.get(config, "model.channels") == 16
  assert config_utils.get(config.to_dict(), "train.lr") == 1e-3
  assert config_utils.get(config, "model.width", None) is None
  with pytest.raises(ConfigError, match=r"^config.model.width does not exist: check"):
    config_utils.get(config, "model.width")


def test_check_keys_names_unknown_and_missing_keys():
  reference = _config()
  config_utils.check_keys(_config(), reference)
  misspelt = _config()
  del misspelt.model["depth"]
  misspelt.model.deepth = 3
  with pytest.raises(ConfigError, match=r"config.model.deepth is not a known key: did you mean config.model.depth\?"):
    config_utils.check_keys(misspelt, reference)
  missing = _config()
  del missing.train["lr"]
  with pytest.raises(ConfigError, match=r"config.train.lr is missing: add it \(the default config has 0.001\)"):
    config_utils.check_keys(missing, reference)


@pytest.mark.parametrize("num_steps, num_epochs, images, batch, expected", [
    (100, 0, 50, 8, 100),
    (0, 2, 50, 8, 14),  # ceil(50 / 8) = 7 steps per epoch, the last one partial.
    (0, 3, 48, 8, 18),
    (0, 1, 1, 8, 1),
    (None, 1, 16, 8, 2),
])
def test_total_steps(num_steps, num_epochs, images, batch, expected):
  train = ml_collections.ConfigDict({"num_steps": num_steps, "num_epochs": num_epochs, "batch_size": batch})
  assert config_utils.total_steps(train, images) == expected


@pytest.mark.parametrize("num_steps, num_epochs", [(10, 2), (0, 0)])
def test_total_steps_needs_exactly_one_duration(num_steps, num_epochs):
  train = ml_collections.ConfigDict({"num_steps": num_steps, "num_epochs": num_epochs, "batch_size": 8})
  with pytest.raises(ConfigError) as info:
    config_utils.total_steps(train, 100)
  assert str(info.value) == (f"config.train.num_steps={num_steps} and config.train.num_epochs={num_epochs}: "
                             "set exactly one of them > 0 and the other to 0")


def test_total_steps_rejects_bad_values():
  with pytest.raises(ConfigError, match=r"config.train.num_epochs=1.5: must be a whole number >= 0"):
    config_utils.total_steps(ml_collections.ConfigDict({"num_steps": 0, "num_epochs": 1.5, "batch_size": 8}), 10)
  with pytest.raises(ConfigError, match=r"config.train.batch_size=0: must be a whole number > 0"):
    config_utils.total_steps(ml_collections.ConfigDict({"num_steps": 0, "num_epochs": 1, "batch_size": 0}), 10)
  with pytest.raises(DataError, match="no training images"):
    config_utils.total_steps(ml_collections.ConfigDict({"num_steps": 0, "num_epochs": 1, "batch_size": 4}), 0)


def test_config_to_json_is_canonical():
  a = _config()
  b = ml_collections.ConfigDict({"hypotheses": ["smooth", "rough"], "train": dict(a.train.to_dict()),
                                 "model": {"depth": np.int64(3), "channels": 16}})
  assert config_utils.config_to_json(a) == config_utils.config_to_json(b)
  text = config_utils.config_to_json(a)
  assert text.startswith('{"hypotheses":["smooth","rough"],"model":{"channels":16,"depth":3}')
  assert json.loads(config_utils.config_to_json(a, indent=2)) == json.loads(text)
  with pytest.raises(ConfigError, match=r"config.model.fn=<built-in function len>: not JSON-serialisable"):
    config_utils.config_to_json({"model": {"fn": len}})
