"""The `paper` presets run: two training steps of the sweep and of the classifier on generated 960x1280 images in
bfloat16, so the presets cannot rot unnoticed, and XLA's memory figure of the full paper sweep step.

Only what a CPU can afford is cut: the number of members, labels and images, and the batch; the image size, the
model and its dtype are the preset's. The sweep's `paper` preset takes its net from a grid search's workdir
(`model_from_grid`, tested in test_paper_presets.py on tiny images); here it uses the net the preset states.
"""
import json
import types

import jax
import numpy as np
import pytest

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax import device_memory, hypotheses, members
from copper_jax.classifier import run as classifier_run
from copper_jax.data import synthetic
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import run as sweep_run

HEIGHT, WIDTH = 960, 1280


def _small_paper_data(config):
  """The paper preset's images (960x1280) and dtype, on 2 labels x 3 images, 2 steps of a batch of 4."""
  config.data.synthetic.update({"num_labels": 2, "images_per_label": 3})
  config.data.split.update({"train": 1, "val": 1, "test": 1})
  config.train.update({"num_steps": 2, "num_epochs": 0, "batch_size": 4})
  config.eval.batch_size = 2
  return config


@pytest.mark.slow
def test_paper_sweep_preset_trains_two_steps_on_paper_shapes(tmp_path):
  config = _small_paper_data(sweep_configs.get_config("paper"))
  assert synthetic.PRESETS["paper"]["height"] == HEIGHT and synthetic.PRESETS["paper"]["width"] == WIDTH
  assert config.model.dtype == "bfloat16"
  config.update({"hypotheses": ("linear", "learned"), "num_seeds": 1, "model_from_grid": ""})
  config.train.update({"log_every": 1, "checkpoint_every": 2})
  config.eval.update({"num_overlays": 1, "report": False})
  summary = sweep_run.run_sweep(config, str(tmp_path), quiet=True)
  assert summary["data"]["image_shape"] == [HEIGHT, WIDTH], summary["data"]
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [line["step"] for line in lines] == [1, 2]
  assert all(np.isfinite(line["train/loss_mean"]) and line["train/diverged_members"] == 0 for line in lines)


@pytest.mark.slow
def test_paper_classifier_preset_trains_two_steps_on_paper_shapes(tmp_path):
  config = _small_paper_data(classifier_configs.get_config("paper"))
  assert config.model.dtype == "bfloat16"
  results = classifier_run.train_and_evaluate(config, str(tmp_path), quiet=True)
  assert results["training"]["steps"] == 2 and results["model"]["dtype"] == "bfloat16"
  assert results["splits"]["test"]["num_images"] == 2


@pytest.mark.slow
def test_xla_memory_figure_of_the_full_paper_sweep_step(tmp_path):
  """The whole paper sweep (every hypothesis, control and seed, batch 32 of 256x256 patches) as a GPU runs it
  (`vmap`), compiled but not run: XLA's figure for the step, activations included. XLA's CPU backend makes it here;
  the GPU script (benchmarks/gpu_run.py) records the GPU's own."""
  config = sweep_configs.get_config("paper")
  config.members.strategy = "vmap"
  num_labels = synthetic.PRESETS["paper"]["num_labels"]
  data = types.SimpleNamespace(num_classes=num_labels, tau=np.linspace(0.0, 1.0, num_labels),
                               stress_times=np.arange(num_labels, dtype=np.float64), image_shape=(HEIGHT, WIDTH))
  sweep = sweep_program.build(config, data, num_train_images=640)
  program, member_arrays = sweep.program, sweep.member_arrays
  patch, batch = config.train.patch_size, config.train.batch_size
  batch_spec = {"image": jax.ShapeDtypeStruct((batch, patch, patch, 1), np.float32),
                "label": jax.ShapeDtypeStruct((batch,), np.int32), "tau": jax.ShapeDtypeStruct((batch,), np.float32),
                "index": jax.ShapeDtypeStruct((batch,), np.int32)}
  compiled = program.train_step.lower(program.abstract_states(), member_arrays, batch_spec).compile()
  total = device_memory.compiled_bytes(compiled)
  figure = {"members": len(member_arrays["targets"]), "strategy": "vmap", "backend": jax.default_backend(),
            "bytes": total, "gib": round(total / 2 ** 30, 2)}
  (tmp_path / "paper_sweep_memory.json").write_text(json.dumps(figure))
  print(f"\nXLA memory figure of the paper sweep step: {figure}")
  assert total > 0 and figure["members"] == (len(hypotheses.expand(config.hypotheses))
                                             + config.control.permutations) * config.num_seeds
  assert members.resolve_strategy("auto", "gpu") == "vmap"
