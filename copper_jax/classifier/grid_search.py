"""The paper's architecture search for the classifier: train every (c, d, n, N) that fits a memory budget.

`run_grid(config, workdir)` is what launch/grid_search.py calls. Every point trains with the same data, split,
seed and schedule (only the model differs) in `workdir/points/<c>_<d>_<n>_<N>/` via
`classifier_run.train_and_evaluate`, so a point is an ordinary classifier workdir (launch/evaluate.py works on it).
A point whose results.json exists is finished and is not trained again; a half-trained one resumes.
Outputs: grid.csv, grid.json and grid.md (ranked by validation accuracy, best named).
"""
import itertools
import os

import jax
import ml_collections

from copper_jax import config_rules
from copper_jax.classifier import program as classifier_program
from copper_jax.classifier import run as classifier_run
from copper_jax.data.prepare import prepare_data
from copper_jax.errors import ConfigError, UserError
from copper_jax.models import analysis
from copper_jax.store import checkpoint, tables, workdir
from copper_jax.store.logs import log

POINTS_DIR = "points"
MEMORY_CACHE = "grid_memory.json"
AXES = ("c", "d", "n", "N")
# Everything but the model must be shared by every point of one search workdir.
SHARED_KEYS = [k for k in classifier_program.FINGERPRINT_KEYS if not k.startswith("model.")] + [
    "data.root", "data.crop_bottom", "data.skip_unreadable", "data.split", "data.synthetic", "train.num_steps",
    "train.num_epochs"]
CSV_COLUMNS = ("name", "c", "d", "n", "N", "status", "val_accuracy", "val_loss", "test_accuracy",
               "test_mae_label_steps", "test_spearman", "params", "depth", "receptive_field", "step_time_ms",
               "peak_memory_mb", "train_memory_mb", "eval_memory_mb", "train_time_s", "reason")


def grid_points(grid) -> list[tuple[int, int, int, int]]:
  """The (c, d, n, N) points: `grid.points` when given, else the product of the value lists; duplicates dropped."""
  if len(grid.points):
    points = [tuple(p) for p in grid.points]
    where = "config.grid.points"
  else:
    for axis in AXES:
      if not len(grid[axis]):
        raise ConfigError(f"config.grid.{axis} is empty: give at least one value")
    points = list(itertools.product(*(grid[axis] for axis in AXES)))
    where = "config.grid.{c,d,n,N}"
  for p in points:
    if len(p) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p):
      raise ConfigError(f"{where} has the point {p!r}: each point is (c, d, n, N), four integers >= 1")
  return list(dict.fromkeys(points))


def point_name(point) -> str:
  return "_".join(str(v) for v in point)


def point_config(config, point, data_root: str) -> ml_collections.ConfigDict:
  """The classifier config of one point: the search's config without `grid`, with this model, on shared data."""
  values = config.to_dict()
  values.pop("grid")
  point_cfg = ml_collections.ConfigDict(values)
  point_cfg.model.update(dict(zip(AXES, point)))
  point_cfg.data.root = config.data.root or data_root
  return point_cfg


def _memory(name: str, point_cfg, dataset, cache: dict) -> dict:
  """XLA's memory analysis of the point's train and eval steps in MiB; `cache` keeps it across restarts."""
  _, key = checkpoint.config_fingerprint(point_cfg, classifier_program.FINGERPRINT_KEYS + ["eval.batch_size"])
  key = f"{key}:{jax.default_backend()}:{dataset.image_shape}"
  if cache.get(name, {}).get("key") != key:
    # The schedule's length changes values, not memory.
    program = classifier_program.ClassifierProgram(point_cfg, dataset.num_classes, None)
    stats = program.memory_analysis(point_cfg.eval.batch_size, dataset.image_shape)
    cache[name] = {"key": key, **{k.replace("_bytes", "_memory_mb"): round(v / 2 ** 20, 2) for k, v in stats.items()}}
  return {k: v for k, v in cache[name].items() if k != "key"}


def _row_from_results(row: dict, results: dict) -> None:
  splits = results["splits"]
  val, test = splits.get("val", {}), splits.get("test", {})
  training = results.get("training") or {}
  step_time = training.get("step_time_s")
  row.update(status="trained", val_accuracy=val.get("accuracy"), val_loss=val.get("loss"),
             test_accuracy=test.get("accuracy"), test_mae_label_steps=test.get("mae_label_steps"),
             test_spearman=test.get("spearman"), train_time_s=training.get("train_time_s"),
             step_time_ms=None if step_time is None else round(1000 * step_time, 2))


def _rank_key(row: dict):
  """Highest validation accuracy first; then lower validation loss; then fewer parameters."""
  acc = row.get("val_accuracy")
  loss = row.get("val_loss")
  return (acc is None, -(acc or 0.0), float("inf") if loss is None else loss, row["params"])


def _check_shared(config, work_dir: str) -> None:
  """config.json of the search; everything but the grid and the model must match an earlier run's."""
  saved = workdir.save_config(work_dir, config, keys=SHARED_KEYS)
  if saved is not None:
    diffs = workdir.config_differences(saved, config, SHARED_KEYS)
    raise ConfigError(f"{work_dir} holds a grid search with other shared settings ({', '.join(diffs)}): use a "
                      "fresh --workdir, or change only config.grid and config.eval to extend this one")


def run_grid(config, work_dir: str, quiet: bool = False) -> dict:
  """Measures, trains and ranks every grid point; returns the content of grid.json."""
  points = grid_points(config.grid)
  config_rules.check(config, config_rules.GRID)
  work_dir = workdir.check_output_folder(work_dir, "--workdir", inputs=[config.data.root])
  data_root = os.path.join(work_dir, "data")
  for point in points:
    classifier_program.validate_config(point_config(config, point, data_root))
  workdir.claim(work_dir, workdir.GRID_SEARCH, "--workdir")
  with workdir.WorkdirLock(work_dir):
    _check_shared(config, work_dir)
    dataset, split = prepare_data(config, work_dir)
    cache_path = os.path.join(work_dir, MEMORY_CACHE)
    cache = workdir.read_json(cache_path, {})
    rows = []
    for number, point in enumerate(points, start=1):
      name = point_name(point)
      point_dir = os.path.join(work_dir, POINTS_DIR, name)
      point_cfg = point_config(config, point, data_root)
      row = {"name": name, **dict(zip(AXES, point)),
             **analysis.describe("classifier", *point, dataset.num_classes)}
      row.pop("kind")
      row.update(_memory(name, point_cfg, dataset, cache))
      workdir.atomic_write_json(cache_path, cache)
      results_path = os.path.join(point_dir, classifier_run.RESULTS_FILE)
      where = f"point {number}/{len(points)} (c={point[0]}, d={point[1]}, n={point[2]}, N={point[3]})"
      if os.path.exists(results_path):
        _row_from_results(row, workdir.read_json(results_path))
        log(f"{where}: finished earlier, val accuracy {row['val_accuracy']}", quiet)
      elif row["peak_memory_mb"] > config.grid.budget_mb:
        row.update(status="skipped", reason=f"needs {row['peak_memory_mb']:g} MiB per step (train "
                   f"{row['train_memory_mb']:g}, eval {row['eval_memory_mb']:g}) > grid.budget_mb="
                   f"{config.grid.budget_mb:g}")
        log(f"{where}: skipped, {row['reason']}", quiet)
      else:
        log(f"{where}: training ({row['params']} parameters, peak {row['peak_memory_mb']:g} MiB)", quiet)
        workdir.claim(point_dir, workdir.CLASSIFIER, "a grid point's workdir")
        # The search's split, so every point is judged on the same images.
        if not os.path.exists(os.path.join(point_dir, "splits.json")):
          with open(os.path.join(work_dir, "splits.json"), "rb") as f:
            workdir.atomic_write_bytes(os.path.join(point_dir, "splits.json"), f.read())
        try:
          _row_from_results(row, classifier_run.train_and_evaluate(point_cfg, point_dir, quiet=quiet))
        except UserError as e:  # a diverged point must not end the search; its reason goes into the table
          row.update(status="failed", reason=str(e))
          log(f"{where}: failed, {e}", quiet)
        else:
          log(f"{where}: val accuracy {row['val_accuracy']}, test accuracy {row['test_accuracy']}", quiet)
      rows.append(row)
      grid = _summary(config, rows, points)
      write_outputs(work_dir, grid)
  log(headline(grid), quiet)
  return grid


def _summary(config, rows, points) -> dict:
  trained = sorted((r for r in rows if r["status"] == "trained"), key=_rank_key)
  for rank, row in enumerate(trained, start=1):
    row["rank"] = rank
  return {"budget_mb": config.grid.budget_mb, "backend": jax.default_backend(),
          "num_points": len(points), "points": trained + [r for r in rows if r["status"] != "trained"],
          "best": trained[0]["name"] if trained else None, "finished": len(rows) == len(points)}


def best_architecture(grid_dir: str) -> dict:
  """{"c", "d", "n", "N"} of the best trained point of the finished search in `grid_dir` (its grid.json)."""
  path = os.path.join(os.path.abspath(grid_dir), "grid.json")
  if not os.path.exists(path):
    raise ConfigError(f"config.model_from_grid={grid_dir!r}: no grid.json there; run launch/grid_search.py "
                      f"--config=configs/grid_search.py:paper --workdir={grid_dir} first, or set it to '' and choose "
                      "config.model.c/d/n/N yourself")
  grid = workdir.read_json(path, fix="rerun the grid search to rewrite it")
  if not grid.get("finished"):
    raise ConfigError(f"config.model_from_grid={grid_dir!r}: the grid search there is unfinished "
                      f"({len(grid.get('points', []))} of {grid.get('num_points')} points); rerun it to finish")
  if not grid.get("best"):
    raise ConfigError(f"config.model_from_grid={grid_dir!r}: no point of that grid search was trained (see its "
                      "grid.md); raise grid.budget_mb and rerun it")
  best = next(r for r in grid["points"] if r["name"] == grid["best"])
  return {axis: int(best[axis]) for axis in AXES}


def headline(grid: dict) -> str:
  if grid["best"] is None:
    return "grid search: no point was trained (all skipped or failed); raise grid.budget_mb or check grid.md"
  best = grid["points"][0]
  return (f"best of {sum(r['status'] == 'trained' for r in grid['points'])} trained points: {best['name']} "
          f"(c={best['c']}, d={best['d']}, n={best['n']}, N={best['N']}), val accuracy {best['val_accuracy']}, "
          f"test accuracy {best['test_accuracy']}")


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(grid: dict) -> str:
  """The table a paper would print: trained points by validation accuracy, then skipped and failed ones."""
  lines = ["# Classifier grid search over (c, d, n, N)", "",
           f"Memory budget {grid['budget_mb']:g} MiB per step, judged from XLA's compiled memory analysis "
           f"(arguments + outputs - donated + temporaries) of the train and eval steps on the `{grid['backend']}` "
           "backend. On CPU, XLA may run a fused block through a library that keeps its buffers outside this "
           "analysis, so CPU figures can under-count; on GPU they are what XLA allocates.", "",
           "| rank | c | d | n | N | val acc | test acc | test MAE (label steps) | test Spearman | params | depth | "
           "receptive field (px) | step time (ms) | peak memory (MiB) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in grid["points"]:
    if r["status"] != "trained":
      continue
    lines.append(f"| {r['rank']} | {r['c']} | {r['d']} | {r['n']} | {r['N']} | {_fmt(r['val_accuracy'])} | "
                 f"{_fmt(r['test_accuracy'])} | {_fmt(r['test_mae_label_steps'])} | {_fmt(r['test_spearman'])} | "
                 f"{r['params']} | {r['depth']} | {r['receptive_field']} | {_fmt(r['step_time_ms'], 1)} | "
                 f"{_fmt(r['peak_memory_mb'], 1)} |")
  lines.append("")
  if grid["best"]:
    best = grid["points"][0]
    lines.append(f"**Best: {best['name']}** (c={best['c']}, d={best['d']}, n={best['n']}, N={best['N']}): "
                 f"validation accuracy {_fmt(best['val_accuracy'])}, test accuracy {_fmt(best['test_accuracy'])}, "
                 f"in `points/{best['name']}/`.")
  else:
    lines.append("**No point was trained.**")
  for status, title in (("skipped", "Skipped (over the memory budget)"), ("failed", "Failed")):
    chosen = [r for r in grid["points"] if r["status"] == status]
    if chosen:
      lines += ["", f"## {title}", ""]
      lines += [f"- {r['name']} (c={r['c']}, d={r['d']}, n={r['n']}, N={r['N']}): {r['reason']}" for r in chosen]
  if not grid["finished"]:
    lines += ["", f"Search unfinished: {len(grid['points'])} of {grid['num_points']} points so far."]
  return "\n".join(lines) + "\n"


def write_outputs(work_dir: str, grid: dict) -> None:
  """grid.json, grid.csv and grid.md, each replaced atomically."""
  workdir.atomic_write_json(os.path.join(work_dir, "grid.json"), grid)
  tables.write_dict_csv(os.path.join(work_dir, "grid.csv"), ("rank",) + CSV_COLUMNS, grid["points"])
  workdir.atomic_write_text(os.path.join(work_dir, "grid.md"), markdown(grid))
