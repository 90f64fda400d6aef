"""The segmentation net chosen by the data: a job above the sweep that trains one sweep per candidate net, keeps the
candidates whose permuted-target control passed, and runs the sweep with the best of them.

Too small a receptive field and the net cannot recognise the texture, so the masks do not localise and the ranking
falls to whichever target is easiest to fit; too large and it can estimate the global fraction (or any other cue of
t) and fit any g. The permuted-target control measures the second failure on any data. So for each candidate
(c, d, n, N) of `config.model.search.points`, within `model.search.memory_mb`, `choose_model` trains the sweep's
hypotheses and its permuted controls (briefly, or for the full duration) in `workdir/search/<c>_<d>_<n>_<N>/`,
keeps the candidates whose control passed, and among them picks the one whose best fixed hypothesis has the lowest
error on the ranking split. A candidate whose sweep.json exists is finished and is not trained again.

Each candidate trains on patches that hold its receptive field (`candidate_patch`): a net trained on patches
smaller than its field has only ever seen zero padding where its outer field should be, so a wide candidate would
be judged with a field it never learned to use, and the search could not reach the side of the trade-off where the
field is wide enough to read t.

Which receptive field lets masks localise without reading t globally: see below. `search_then_sweep(config,
workdir)` is what launch/sweep.py calls when `model.search.enabled`. Writes workdir/search.json and search.md, and
hands the table to the sweep as a finished section of sweep.json and the report; the sweep does not know the search
exists. Each candidate's result is read as a `results.Outcome`.
"""
import copy
import os
import shutil

import dataclasses

from copper_jax import device_memory, members
from copper_jax.data import sampler
from copper_jax.data.prepare import check_patch_fits, prepare_training_data
from copper_jax.errors import ConfigError, UserError
from copper_jax.models import analysis
from copper_jax.store import workdir
from copper_jax.store.logs import log
from copper_jax.sweep import program as program_lib
from copper_jax.sweep import results
from copper_jax.sweep import run as sweep_run

SEARCH_DIR = "search"
SEARCH_FILE = "search.json"
AXES = ("c", "d", "n", "N")


def candidates(config) -> list[tuple[int, int, int, int]]:
  """The (c, d, n, N) candidates of `config.model.search.points` (checked by config_rules); duplicates dropped."""
  return list(dict.fromkeys(tuple(p) for p in config.model.search.points))


def candidate_name(point) -> str:
  return "_".join(str(v) for v in point)


def candidate_patch(config, point, image_shape) -> tuple[int, int]:
  """(patch_size, batch_size) a candidate trains on: `train.patch_size`, raised to the smallest multiple of 2**d
  that holds the candidate's receptive field (at most the largest that fits the images), with the batch cut so a
  step sees about as many pixels as the configured patch and batch do (the same compute per step)."""
  multiple = 2 ** point[1]
  field = analysis.receptive_field("segmentation", *point)
  largest = min(image_shape) // multiple * multiple
  patch = max(config.train.patch_size, min(-(-field // multiple) * multiple, largest))
  if patch == config.train.patch_size:
    return patch, config.train.batch_size
  pixels = config.train.batch_size * config.train.patch_size ** 2
  return patch, max(1, round(pixels / patch ** 2))


def candidate_config(config, point, data_root: str, image_shape):
  """The sweep config of one candidate: this model, its patch and batch, the search's data, its training length,
  no report, no search."""
  cfg = copy.deepcopy(config)
  cfg.model.update(dict(zip(AXES, point)))
  cfg.train.patch_size, cfg.train.batch_size = candidate_patch(config, point, image_shape)
  cfg.model.search.enabled = False
  cfg.data.root = config.data.root or data_root
  if config.model.search.num_steps:
    cfg.train.num_steps, cfg.train.num_epochs = config.model.search.num_steps, 0
  cfg.eval.report = False
  return cfg


def _training_memory_mb(cfg, dataset, split) -> float:
  """XLA's figure (MiB) for one compiled training step of every member of this candidate."""
  sweep = program_lib.build(cfg, dataset, num_train_images=len(split["train"]))
  patches = sampler.PatchSampler(dataset, split["train"], cfg.train.patch_size, cfg.train.batch_size, seed=cfg.seed)
  first = members.place(patches.batch(0), sweep.program.shared_sharding)
  compiled = sweep.program.train_step.lower(sweep.program.abstract_states(), sweep.member_arrays, first).compile()
  return device_memory.compiled_bytes(compiled) / 2 ** 20


def _trained_row(row: dict, outcome: results.Outcome) -> None:
  row.update(status="trained", **dataclasses.asdict(outcome))


def search_then_sweep(config, work_dir: str, quiet: bool = False) -> dict:
  """Chooses the net (`choose_model`), then runs the sweep with it in `work_dir`, handing it the search's table;
  returns the sweep's sweep.json content."""
  program_lib.validate_config(config)
  work_dir = workdir.check_output_folder(work_dir, "--workdir", inputs=[config.data.root])
  check_patch_fits(config)
  with workdir.locked_start(work_dir, workdir.SWEEP) as start:
    # The candidates' runs are minutes of work each: kept even if a later check refuses this start.
    start.commit()
    chosen = choose_model(config, work_dir, quiet)
  return sweep_run.run_sweep(chosen, work_dir, quiet, sections=saved_sections(work_dir))


def choose_model(config, work_dir: str, quiet: bool = False):
  """Trains every candidate not trained yet as a sweep of its own (in workdir/search/<name>/), writes search.json /
  search.md, and returns a copy of `config` whose model.c/d/n/N are the chosen candidate's. When candidates train
  for the sweep's full duration, the chosen one's checkpoints become the sweep's, so it is not trained twice. Call
  inside the workdir's lock."""
  points = candidates(config)
  data_root = os.path.join(work_dir, "data")
  dataset, split = prepare_training_data(config, work_dir)
  rows = []
  for number, point in enumerate(points, start=1):
    name = candidate_name(point)
    cfg = candidate_config(config, point, data_root, dataset.image_shape)
    point_dir = os.path.join(work_dir, SEARCH_DIR, name)
    row = {"name": name, **dict(zip(AXES, point)),
           "receptive_field": analysis.receptive_field("segmentation", *point),
           "patch_size": cfg.train.patch_size, "batch_size": cfg.train.batch_size,
           "train_steps": sampler.run_steps(cfg.train, dataset.image_shape, len(split["train"]))}
    where = f"candidate {number}/{len(points)} ({name}, receptive field {row['receptive_field']} px)"
    done = os.path.join(point_dir, sweep_run.SWEEP_FILE)
    if os.path.exists(done):
      _trained_row(row, results.outcome(workdir.read_json(done, fix="delete that candidate's folder to train it "
                                                                     "again")))
      log(f"{where}: finished earlier, control {row['control']}", quiet)
      rows.append(row)
      continue
    if config.model.search.memory_mb:
      row["memory_mb"] = round(_training_memory_mb(cfg, dataset, split), 1)
      if row["memory_mb"] > config.model.search.memory_mb:
        row.update(status="skipped", reason=f"needs {row['memory_mb']:g} MiB per training step > "
                   f"model.search.memory_mb={config.model.search.memory_mb:g}")
        log(f"{where}: skipped, {row['reason']}", quiet)
        rows.append(row)
        continue
    log(f"{where}: training {row['train_steps']} steps", quiet)
    workdir.claim(point_dir, workdir.SWEEP, "a candidate's workdir")
    if not os.path.exists(os.path.join(point_dir, "splits.json")):  # every candidate judged on the same images
      with open(os.path.join(work_dir, "splits.json"), "rb") as f:
        workdir.atomic_write_bytes(os.path.join(point_dir, "splits.json"), f.read())
    try:
      _trained_row(row, results.outcome(sweep_run.run_sweep(cfg, point_dir, quiet=True)))
    except UserError as e:  # one candidate that cannot run must not end the search; its reason goes in the table
      row.update(status="failed", reason=str(e))
      log(f"{where}: failed, {e}", quiet)
    else:
      log(f"{where}: control {row['control']}, best {row['best_hypothesis']} error {row['best_error']:.5f}", quiet)
    rows.append(row)

  table = _table(config, rows)
  workdir.atomic_write_json(os.path.join(work_dir, SEARCH_FILE), table)
  workdir.atomic_write_text(os.path.join(work_dir, "search.md"), markdown(table))
  if table["chosen"] is None:
    raise ConfigError(f"config.model.search: no candidate's permuted-target control passed (table in {work_dir}/"
                      "search.md); add candidates with smaller receptive fields, or more held-out images or seeds "
                      "if the controls were inconclusive")
  chosen = next(r for r in rows if r["name"] == table["chosen"])
  config = copy.deepcopy(config)
  config.model.update({axis: chosen[axis] for axis in AXES})
  config.train.patch_size, config.train.batch_size = chosen["patch_size"], chosen["batch_size"]
  if not config.model.search.num_steps:
    _adopt_checkpoints(os.path.join(work_dir, SEARCH_DIR, chosen["name"]), work_dir)
  log(f"model search chose {chosen['name']} (receptive field {chosen['receptive_field']} px): "
      f"{table['reason']}", quiet)
  return config


def _adopt_checkpoints(point_dir: str, work_dir: str) -> None:
  """The chosen candidate's checkpoints as the sweep's, when the sweep has none: the same config, data, split
  and duration, so its training is the sweep's training."""
  target = os.path.join(work_dir, "checkpoints")
  if os.path.isdir(target) and any(name.isdigit() for name in os.listdir(target)):
    return
  shutil.copytree(os.path.join(point_dir, "checkpoints"), target, dirs_exist_ok=True)


def _table(config, rows) -> dict:
  kept = [r for r in rows if r.get("status") == "trained" and r["control"] == "passed"
          and r["best_error"] is not None]
  chosen = min(kept, key=lambda r: (r["best_error"], r["receptive_field"])) if kept else None
  for r in rows:
    r["kept"] = r in kept
  reason = (f"of {len(kept)} candidate(s) whose permuted-target control passed, its best fixed hypothesis "
            f"({chosen['best_hypothesis']}) has the lowest {chosen['error_split']} error, {chosen['best_error']:.5f}"
            if chosen else "no candidate's control passed")
  return {"points": rows, "chosen": chosen["name"] if chosen else None, "reason": reason,
          "num_steps": int(config.model.search.num_steps), "memory_mb": config.model.search.memory_mb,
          "rule": "keep the candidates whose permuted-target control passed; among them, the lowest held-out error "
                  "of the best fixed hypothesis (ties: the smaller receptive field)"}


def _fmt(value, digits=4):
  if value is None:
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _patch(row) -> str:
  return f"{row['patch_size']} x {row['batch_size']}" if "patch_size" in row else "-"


def markdown(table: dict) -> str:
  lines = ["# Segmentation net chosen by the data", "", f"Rule: {table['rule']}.", "",
           "| candidate | receptive field (px) | patch x batch | steps | control | control share [95%] | bar | best "
           "fixed hypothesis | its error | its mean IoU | local-std filter IoU | kept |",
           "|---|---:|---:|---:|---|---|---:|---|---:|---:|---:|---|"]
  for r in table["points"]:
    if r.get("status") != "trained":
      lines.append(f"| {r['name']} | {r['receptive_field']} | {_patch(r)} | - | {r.get('status')}: "
                   f"{r.get('reason')} | - | - | - | - | - | - | no |")
      continue
    ci = r["control_ci95"]
    share = f"{_fmt(r['control_share'], 2)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]" if ci else "-"
    lines.append(f"| {r['name']} | {r['receptive_field']} | {_patch(r)} | {r['train_steps']} | {r['control']} | "
                 f"{share} | "
                 f"{_fmt(r['control_bar'], 2)} | {r['best_hypothesis']} | {_fmt(r['best_error'], 5)} | "
                 f"{_fmt(r['best_mean_iou'], 3)} | {_fmt(r['local_std_mean_iou'], 3)} | "
                 f"{'yes' if r['kept'] else 'no'} |")
  lines += ["", f"**Chosen: {table['chosen']}**: {table['reason']}." if table["chosen"] else
            "**No candidate chosen**: no candidate's control passed."]
  return "\n".join(lines) + "\n"


def saved_sections(work_dir: str) -> dict:
  """The sections the search hands the sweep's sweep.json and report: {"model_search": search.json}, or {} when
  the workdir's net was not searched (evaluating a workdir again hands them again)."""
  path = os.path.join(work_dir, SEARCH_FILE)
  if not os.path.exists(path):
    return {}
  return {"model_search": workdir.read_json(path, fix="delete it and rerun the sweep to search again")}
