"""Re-evaluates a trained workdir from its checkpoint and saved config.json; checkpoints are only read.

  python launch/evaluate.py --workdir=runs/clf_demo [--split=test] [--cam=8] [--checkpoint=best|latest]

A classifier workdir gets results.json, confusion.png, per_label.png (of --split) rewritten and, with --cam=N,
class activation maps of N images of that split in WORKDIR/cam/. A sweep workdir (config.json with
"hypotheses") is evaluated by copper_jax.sweep.evaluate_sweep.
"""
import importlib.util
import os

from absl import flags

from copper_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by launch/train.py or launch/sweep.py.",
                               required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to draw and report (default: config.eval.split).")
_CAM = flags.DEFINE_integer("cam", 0, "Classifier only: CAM overlays of this many images of --split.",
                            lower_bound=0)
_CHECKPOINT = flags.DEFINE_enum("checkpoint", None, ["best", "latest"],
                                "Classifier only: which checkpoint (default: config.eval.checkpoint).")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors and the final line.")


def _default_classifier_config(preset: str):
  """configs/classifier.py's preset, the reference a saved config.json must match key for key."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "classifier.py")
  spec = importlib.util.spec_from_file_location("classifier_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset if preset in module.PRESETS else "demo")


def main(argv):
  del argv
  from copper_jax import config_utils, workdir
  from copper_jax.errors import UserError
  config = workdir.load_config(_WORKDIR.value)
  if "hypotheses" in config:
    from copper_jax import sweep
    sweep.evaluate_sweep(config, _WORKDIR.value, _SPLIT.value, _QUIET.value)
    print(f"report: {_WORKDIR.value}/report.html")
    return
  if "grid" in config:
    raise UserError(f"{_WORKDIR.value} is a grid search: evaluate one of its points, "
                    f"--workdir={os.path.join(_WORKDIR.value, 'points', '<c>_<d>_<n>_<N>')}")
  from copper_jax import classifier
  reference = _default_classifier_config(config.get("preset", "demo"))
  reference.data.split = config.data.split  # split names and sizes are the user's choice
  config_utils.check_keys(config, reference)
  results = classifier.evaluate_classifier(config, _WORKDIR.value, _SPLIT.value, quiet=_QUIET.value,
                                           num_cam=_CAM.value, which=_CHECKPOINT.value)
  if _QUIET.value:
    print(classifier.headline(results, results["figures"]["split"]))
  print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  cli.run(main)
