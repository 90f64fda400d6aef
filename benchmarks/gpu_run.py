"""The measurements only a GPU can give, in one run of a few minutes that writes one JSON: what
`launch/gpu_check.py` runs, so that a session lent a GPU for minutes uses them and nothing else.

Sections, in the order they run (each is skipped, with the reason recorded, when the time left could not hold it;
the JSON is rewritten after each, so a run cut short keeps what it measured):
  mfu            bfloat16 training steps of both models at the paper sweep's shapes against the device's measured
                 bfloat16 matmul peak and its data-sheet peak (model FLOPs utilisation).
  paper_sweep    the `paper` sweep preset's own training loop (`copper_jax.sweep.run.train`) with 2 seeds (8
                 hypotheses and 2 permuted-target controls: 20 members) for a few hundred steps: step time from the
                 log's wall clock, XLA's memory figure, and the projected time of the full 200-epoch run, also
                 scaled to the 16 members without controls.
  members        efficiency (K x one member's step time / the K-member step time) of vmap, chunked lax.map and
                 unrolled members at K = 4, 16, 64 at the paper sweep's shape; unrolled at 64 only when the time
                 left holds four times its K=16 compile.
  deterministic  two smoke sweeps with `--config.deterministic=True` (XLA's deterministic GPU ops) in fresh
                 processes: the same sweep.json and checkpoint bytes, and the record of the flag.
`tiny=True` runs every section at toy sizes, so a CPU test can check the script end to end.
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from benchmarks import benchmark
from benchmarks.benchmark import PAPER_SWEEP, TINY, Preset, SweepSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Data-sheet dense bfloat16 peaks (FLOP/s, without sparsity) by a substring of jax's device_kind.
DATASHEET_BF16_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L4": 121e12}
# The full run the projection is for: configs/sweep.py:paper with 2 seeds, 640 training images (40 per label) of
# 960x1280, 200 epochs. Its controls (permuted targets) add members: the projection scales by the members measured.
FULL_RUN = {"train_images": 640, "epochs": 200}
MEMBER_COUNTS = (4, 16, 64)
PAPER_IMAGE_HW = (960, 1280)


def _datasheet_peak(device_kind: str) -> float | None:
  return next((flops for key, flops in DATASHEET_BF16_FLOPS.items() if key.lower() in device_kind.lower()), None)


def measure_mfu(tiny: bool, log) -> dict:
  shape = dataclasses.replace(TINY, dtype="bfloat16") if tiny else PAPER_SWEEP
  preset = Preset(shapes=(shape,), sweeps=(), predict_shape=shape, predict_hw=(0, 0), pipeline_images_per_label=0,
                  pipeline_preset="", pipeline_shape=shape, conv_shapes=(), peak_n=64 if tiny else 8192,
                  peak_dtypes=("float32", "bfloat16"), repeats=2 if tiny else 5, min_repeat_s=0.0 if tiny else 0.5)
  out = benchmark.measure_training(preset, None, log)
  peak = _datasheet_peak(jax.devices()[0].device_kind)
  for row in out["rows"]:
    row["mfu_of_measured_matmul_peak"] = row.pop("fraction_of_peak")
    row["mfu_of_datasheet_peak"] = None if peak is None else row["gflop_s"]["median"] * 1e9 / peak
  out["datasheet_bf16_flop_s"] = peak
  return out


def measure_members(tiny: bool, time_left, log) -> dict:
  shape = TINY if tiny else PAPER_SWEEP
  counts = (2, 3, 4) if tiny else MEMBER_COUNTS
  preset = Preset(shapes=(), sweeps=(), predict_shape=shape, predict_hw=(0, 0), pipeline_images_per_label=0,
                  pipeline_preset="", pipeline_shape=shape, conv_shapes=(), peak_n=0, peak_dtypes=(),
                  repeats=2 if tiny else 3, min_repeat_s=0.0 if tiny else 0.3)
  chunk = 2 if tiny else 8
  first = dataclasses.replace(preset, sweeps=(SweepSpec(shape, ("vmap", "map", "unrolled"), counts[:2], chunk),
                                              SweepSpec(shape, ("vmap", "map"), counts[2:], chunk)))
  sections, checks = benchmark.measure_sweeps(first, log)
  unrolled = [row for row in sections[0]["rows"] if row["strategy"] == "unrolled" and row["members"] == counts[1]]
  largest = {"members": counts[-1], "strategy": "unrolled"}
  if unrolled and (tiny or 4 * unrolled[0]["compile_s"] < 0.5 * time_left()):
    more, more_checks = benchmark.measure_sweeps(
        dataclasses.replace(preset, sweeps=(SweepSpec(shape, ("unrolled",), counts[2:], chunk),)), log)
    sections += more
    checks.update(more_checks)
  else:
    compile_s = unrolled[0]["compile_s"] if unrolled else None
    largest["skipped"] = (f"its compile would take about 4 x {compile_s} s at K={counts[1]}, more than half the "
                          f"{time_left():.0f} s left")
    sections.append({"skipped": [largest]})
  return {"sections": sections, "checks": checks}


def _sweep_config(tiny: bool, num_steps: int):
  from configs import sweep as sweep_configs
  config = sweep_configs.get_config("smoke" if tiny else "paper")
  config.model_from_grid = ""  # the preset's own net (c=32 d=3 n=2 N=1), not a grid search's: none has run here
  if not tiny:
    config.num_seeds = 2
    config.data.synthetic.images_per_label = 2  # the step time does not depend on how many images patches come from
    config.data.split.update({"train": 1, "val": 1, "test": 0})
  config.train.update({"num_steps": num_steps, "num_epochs": 0, "log_every": max(1, num_steps // 3),
                       "checkpoint_every": num_steps})
  return config


def _log_wall_times(work_dir: str) -> dict:
  """{step: wall time} of the metrics.jsonl lines: a step's metrics are written once it has finished."""
  from copper_jax.store import logs
  return {record["step"]: record["wall_time"] for record in logs.read_metrics(work_dir)}


def measure_paper_sweep(tiny: bool, num_steps: int, log) -> dict:
  from copper_jax import config_utils
  from copper_jax.data import sampler
  from copper_jax.data.prepare import prepare_training_data
  from copper_jax.sweep import program as program_lib
  from copper_jax.sweep import run as sweep_run
  config = _sweep_config(tiny, num_steps)
  with tempfile.TemporaryDirectory() as work_dir:
    start = time.perf_counter()
    dataset, split = prepare_training_data(config, work_dir)
    data_s = time.perf_counter() - start
    sweep_program_ = program_lib.build(config, dataset, num_train_images=len(split["train"]))
    log(f"paper sweep: {sweep_program_.program.num_members} members, {sweep_program_.program.strategy}, "
        f"{num_steps} steps")
    start = time.perf_counter()
    sweep_run.train(config, work_dir, dataset, split, quiet=True)
    train_s = time.perf_counter() - start
    # XLA's figure for the lifted step; the compilation cache (on in launch/gpu_check.py) makes this compile a read.
    program = sweep_program_.program
    batch = {k: v for k, v in sampler.PatchSampler(dataset, split["train"], config.train.patch_size,
                                                    config.train.batch_size, seed=0).batch(0).items()}
    compiled = program.train_step.lower(program.abstract_states(), sweep_program_.member_arrays, batch).compile()
    memory = benchmark._memory(compiled)  # pylint: disable=protected-access
    walls = _log_wall_times(work_dir)
    steps = sorted(walls)
    # From the first logged step on: compilation and the first steps' warm-up are behind.
    step_s = (walls[steps[-1]] - walls[steps[0]]) / (steps[-1] - steps[0])
    member_count = sweep_program_.program.num_members
  # An epoch covers every training image's area once, as the sweep counts it (config_utils.total_steps).
  full = _sweep_config(tiny, num_steps)
  full.train.update({"num_steps": 0, "num_epochs": FULL_RUN["epochs"]})
  steps_full = config_utils.total_steps(full.train, FULL_RUN["train_images"], patches_per_image=sampler.patches_per_image(
      PAPER_IMAGE_HW, config.train.patch_size))
  overhead_s = train_s - num_steps * step_s  # compilation, the first placement and the checkpoint
  return {"preset": config.preset, "members": member_count, "strategy": sweep_program_.program.strategy,
          "image_shape": list(dataset.image_shape), "model": config.model.to_dict(),
          "batch_size": config.train.batch_size, "patch_size": config.train.patch_size, "steps": num_steps,
          "memory": memory,
          "data_s": data_s, "train_s": train_s, "step_s": step_s, "overhead_s": overhead_s,
          "images_per_s": member_count * config.train.batch_size / step_s,
          "projection": {**FULL_RUN, "steps": steps_full,
                         "hours": (steps_full * step_s + overhead_s) / 3600,
                         # without the controls: step time taken as proportional to the members
                         "hours_at_16_members": (steps_full * step_s * 16 / member_count + overhead_s) / 3600}}


def _saved_arrays(work_dir: str, step: int) -> dict:
  import orbax.checkpoint as ocp
  restored = ocp.StandardCheckpointer().restore(os.path.join(work_dir, "checkpoints", str(step), "state"))
  return {jax.tree_util.keystr(p): np.asarray(x).tobytes() for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}


def measure_determinism(tiny: bool, log) -> dict:
  """Two smoke sweeps in fresh processes (XLA reads the flag when its backend starts) with deterministic ops."""
  num_steps = 4 if tiny else 20
  args = ["--config=configs/sweep.py:smoke", "--config.deterministic=True", f"--config.train.num_steps={num_steps}",
          f"--config.train.checkpoint_every={num_steps}", "--quiet"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
             COPPER_JAX_COMPILE_CACHE="off")
  with tempfile.TemporaryDirectory() as tmp:
    runs = []
    for i in range(2):
      work_dir = os.path.join(tmp, f"run{i}")
      log(f"deterministic smoke sweep {i + 1}/2")
      start = time.perf_counter()
      result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sweep.py"), *args,
                               f"--workdir={work_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
      if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:]}
      with open(os.path.join(work_dir, "sweep.json"), encoding="utf-8") as f:
        summary = json.load(f)
      runs.append({"wall_s": time.perf_counter() - start, "summary": summary,
                   "arrays": _saved_arrays(work_dir, num_steps)})
  strip = lambda s: json.dumps({k: v for k, v in s.items() if k not in ("config", "data")}, sort_keys=True)
  return {"record": runs[0]["summary"]["determinism"], "wall_s": [r["wall_s"] for r in runs],
          "same_sweep_json": strip(runs[0]["summary"]) == strip(runs[1]["summary"]),
          "same_checkpoint_bytes": runs[0]["arrays"] == runs[1]["arrays"]}


def run_gpu_check(out_path: str, tiny: bool = False, budget_s: float = 420.0, sweep_steps: int = 300,
                  log=print) -> dict:
  """Runs the sections within `budget_s` seconds, rewriting `out_path` (JSON) after each; returns the result."""
  began = time.perf_counter()
  time_left = lambda: budget_s - (time.perf_counter() - began)
  result = {"schema": 1, "tiny": tiny, "budget_s": budget_s, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": benchmark._versions(), "machine": benchmark._machine(), "sections": {}}  # pylint: disable=protected-access
  # Rough seconds each section needs on an H200 (compiles included); a section is skipped when less is left.
  plan = [("mfu", 45, lambda: measure_mfu(tiny, log)),
          ("paper_sweep", 120, lambda: measure_paper_sweep(tiny, 4 if tiny else sweep_steps, log)),
          ("members", 150, lambda: measure_members(tiny, time_left, log)),
          ("deterministic", 60, lambda: measure_determinism(tiny, log))]
  for name, needs_s, measure in plan:
    if not tiny and time_left() < needs_s:
      result["sections"][name] = {"skipped": f"{time_left():.0f} s left, about {needs_s} s needed"}
    else:
      start = time.perf_counter()
      try:
        result["sections"][name] = measure()
      except Exception as e:  # pylint: disable=broad-except -- one failed section must not lose the others
        result["sections"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
      result["sections"][name]["section_s"] = time.perf_counter() - start
    result["wall_s"] = time.perf_counter() - began
    with open(out_path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    log(f"{name} done, {time_left():.0f} s of the budget left")
  checks = result["sections"].get("members", {}).get("checks", {})
  determinism = result["sections"].get("deterministic", {})
  result["all_checks_passed"] = (all(c["passed"] for c in checks.values())
                                 and determinism.get("same_checkpoint_bytes", True) is not False
                                 and not any("error" in s for s in result["sections"].values()))
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
