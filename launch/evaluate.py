"""Re-evaluates a trained workdir from its checkpoint and saved config.json; checkpoints are only read.

  python launch/evaluate.py --workdir=runs/clf_demo [--split=test] [--cam=8] [--checkpoint=best|latest]

A classifier workdir gets results.json, confusion.png, per_label.png (of --split) rewritten and, with --cam=N,
class activation maps of N images of that split in WORKDIR/cam/. A sweep workdir (its kind is recorded in its
ownership mark, .copper_jax.json) is evaluated by copper_jax.sweep.run.evaluate_sweep.
"""
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


def main(argv):
  del argv
  from copper_jax import config_utils
  from copper_jax.errors import UserError
  from copper_jax.store import workdir
  kind = workdir.require_kind(_WORKDIR.value, "--workdir", (workdir.SWEEP, workdir.CLASSIFIER,
                                                             workdir.GRID_SEARCH))
  config = workdir.load_config(_WORKDIR.value)
  if kind == workdir.SWEEP:
    given = [f for f, v in (("--split", _SPLIT.value), ("--cam", _CAM.value or None),
                            ("--checkpoint", _CHECKPOINT.value)) if v is not None]
    if given:  # a sweep reports every split from its latest checkpoint: these would be ignored
      raise UserError(f"{_WORKDIR.value} is a sweep workdir: {', '.join(given)} only apply to a classifier")
    from copper_jax import model_search
    from copper_jax.sweep import run as sweep_run
    sweep_run.evaluate_sweep(config, _WORKDIR.value, _QUIET.value, sections=model_search.saved_sections(_WORKDIR.value))
    print(f"report: {_WORKDIR.value}/report.html")
    return
  if kind == workdir.GRID_SEARCH:
    raise UserError(f"{_WORKDIR.value} is a grid search: evaluate one of its points, "
                    f"--workdir={os.path.join(_WORKDIR.value, 'points', '<c>_<d>_<n>_<N>')}")
  from configs import classifier as classifier_configs
  from copper_jax.classifier import run as classifier_run
  # configs/classifier.py's preset is the reference a saved config.json must match key for key.
  preset = config.get("preset", "demo")
  reference = classifier_configs.get_config(preset if preset in classifier_configs.PRESETS else "demo")
  reference.data.split = config.data.split  # split names and sizes are the user's choice
  config_utils.check_keys(config, reference)
  results = classifier_run.evaluate_classifier(config, _WORKDIR.value, _SPLIT.value, quiet=_QUIET.value,
                                               num_cam=_CAM.value, which=_CHECKPOINT.value)
  if _QUIET.value:
    print(classifier_run.headline(results, results["figures"]["split"]))
  print(f"results: {_WORKDIR.value}/results.json")


if __name__ == "__main__":
  cli.run(main)
