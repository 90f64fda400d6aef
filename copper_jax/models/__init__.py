"""The paper's two models (Flax Linen) and tools to size them: receptive field, parameters, class maps."""
from typing import Any

import jax.numpy as jnp

from copper_jax.errors import ConfigError
from copper_jax.models.analysis import (check_kind, class_activation_maps, describe, measure_receptive_field,
                                        param_count, receptive_field)
from copper_jax.models.classifier import ResNetClassifier
from copper_jax.models.layers import check_norm
from copper_jax.models.segmentation import SegmentationNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["ResNetClassifier", "SegmentationNet", "make_model", "receptive_field", "measure_receptive_field",
           "param_count", "describe", "class_activation_maps"]


def make_model(kind: str, model_config: Any, num_classes: int | None = None):
  """Builds the model of `kind` ("classifier" | "segmentation") from a config with fields c, d, n, N, norm and
  dtype ("float32" | "bfloat16"); the classifier also needs num_classes."""
  check_kind(kind)
  for key in ("c", "d", "n", "N"):
    value = getattr(model_config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"model.{key} is {value!r}; valid values: integers >= 1")
  check_norm(model_config.norm)
  if model_config.dtype not in DTYPES:
    raise ConfigError(f"model.dtype is {model_config.dtype!r}; valid values: {', '.join(DTYPES)}")
  c, d, n, N = model_config.c, model_config.d, model_config.n, model_config.N
  dtype = DTYPES[model_config.dtype]
  if kind == "segmentation":
    return SegmentationNet(c, d, n, N, norm=model_config.norm, dtype=dtype)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ConfigError(f"num_classes is {num_classes!r} for kind 'classifier'; valid values: integers >= 1")
  return ResNetClassifier(c, d, n, N, num_classes, norm=model_config.norm, dtype=dtype)
