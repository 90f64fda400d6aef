"""CSV tables for spreadsheets (Excel, LibreOffice, pandas): the one writer every table of the project goes through,
and the tables a sweep or a blind test writes from its JSON.

Each table is long and flat: one header row, one value per cell, numbers in plain decimal. Mask fractions are on
the hypothesis's scale (g(t_min) = 0, g(t_max) = 1), which the column names say. Text that a spreadsheet would
evaluate as a formula (sample names come from other labs and instruments) is written with a leading apostrophe.
"""
import csv
import io
import numbers
import os
import re

from copper_jax.store import workdir

TABLES_DIR = "tables"
# A spreadsheet evaluates a cell starting with one of these (tab and carriage return hide the others).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# ...except a plain number, which it reads as that number: "-0.5" stays a number.
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value):
  """`value` as a CSV cell: None empty, numbers (and booleans) unchanged, text that a spreadsheet would evaluate
  prefixed with an apostrophe (shown, not run), every line break as LF, and characters of a file name that are not
  UTF-8 as backslash escapes."""
  if value is None:
    return ""
  if isinstance(value, (bool, numbers.Number)):
    return value
  # csv quotes a field holding "\n" (our line end) but not a lone "\r", which spreadsheets read as a row break.
  text = str(value).replace("\r\n", "\n").replace("\r", "\n")
  text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a name's undecodable bytes arrive as surrogates
  if str(value).startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
    return "'" + text
  return text


def csv_text(header: list, rows: list) -> str:
  """The CSV text of a table: one header row, then `rows` (lists of cells, see `csv_cell`)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow([csv_cell(v) for v in header])
  writer.writerows([[csv_cell(v) for v in row] for row in rows])
  return buffer.getvalue()


def write_csv(path: str, header: list, rows: list) -> str:
  """Replaces `path` atomically with the table; returns `path`."""
  workdir.atomic_write_text(path, csv_text(header, rows))
  return path


def write_dict_csv(path: str, columns, rows: list) -> str:
  """`write_csv` of dict rows, one column per key of `columns` (other keys left out, missing ones empty)."""
  columns = list(columns)
  return write_csv(path, columns, [[row.get(k) for k in columns] for row in rows])


def _write(folder: str, name: str, header: list, rows: list) -> str:
  return write_csv(os.path.join(folder, name), header, rows)


def _role(row: dict) -> str:
  """What a hypothesis is there for: a guess of g, the learned g, or a negative control (scrambled targets)."""
  if row.get("control") or row.get("permuted") or row.get("family") == "permuted":
    return "control"
  return "learned" if row.get("learned") else "hypothesis"


def ranking_rows(summary: dict) -> tuple[list, list]:
  """(header, rows) of the ranking: per hypothesis its rank, role, and for each split the error's mean and 95%
  interval, then the excess over the leader with its paired interval, then the evidence that would tell it from
  the leader (or settle a control) where the verdict left that open (sweep.json's evidence_needed)."""
  splits = [s for s in ("train", "val", "test") if any(s in r["loss"] for r in summary["hypotheses"])]
  header = ["rank", "hypothesis", "role", "diverged"]
  for split in splits:
    header += [f"{split}_error", f"{split}_error_ci95_low", f"{split}_error_ci95_high", f"{split}_num_images"]
  header += ["excess_over_leader", "excess_ci95_low", "excess_ci95_high", "excess_split", "rmse_to_f_true"]
  header += ["needed_units_per_label", "needed_seeds", "have_units_per_label", "have_seeds"]
  needed = {r["name"]: r for r in summary.get("evidence_needed") or []}
  rows = []
  for r in sorted(summary["hypotheses"], key=lambda r: (r["rank"] is None, r["rank"] or 0)):
    row = [r["rank"], r["name"], _role(r), r["diverged"]]
    for split in splits:
      loss = r["loss"].get(split)
      row += [loss["mean"], *loss["ci95"], loss["num_images"]] if loss else [None] * 4
    excess = r.get("excess_over_leader")
    row += [excess["mean"], *excess["ci95"], excess["split"]] if excess else [None] * 4
    row.append(r.get("rmse_to_f_true"))
    need = needed.get(r["name"], {})
    row += [need.get("units_per_label"), need.get("seeds"), need.get("have_units_per_label"), need.get("have_seeds")]
    rows.append(row)
  return header, rows


def mean_mask_rows(summary: dict) -> tuple[list, list]:
  """(header, rows), one per hypothesis, split and stress time: the mean mask fraction and the target g(t)."""
  times = summary["labels"]["stress_times"]
  header = ["hypothesis", "split", "stress_time", "mean_mask_on_g_scale", "target_g"]
  rows = []
  for r in summary["hypotheses"]:
    for split, values in r["mean_mask"].items():
      rows += [[r["name"], split, t, v, g] for t, v, g in zip(times, values, r["targets"])]
  return header, rows


def learned_g_rows(summary: dict) -> tuple[list, list] | None:
  """(header, rows), one per stress time: the learned g (mean and per seed) and the isotonic fit of its masks."""
  learned = summary.get("learned_g")
  if not learned:
    return None
  seeds = learned["per_seed"]
  fit = learned.get("isotonic_fit_of_train_masks") or [None] * len(learned["curve"])
  header = ["stress_time", "learned_g"] + [f"learned_g_seed{s}" for s in range(len(seeds))] + [
      "isotonic_fit_of_train_masks"]
  rows = [[t, g, *[seed[i] for seed in seeds], fit[i]]
          for i, (t, g) in enumerate(zip(summary["labels"]["stress_times"], learned["curve"]))]
  return header, rows


def write_sweep_tables(work_dir: str, summary: dict) -> dict:
  """Writes W/tables/{ranking,mean_masks,learned_g}.csv; returns {name: path relative to the workdir}."""
  folder = os.path.join(work_dir, TABLES_DIR)
  os.makedirs(folder, exist_ok=True)
  written = {"ranking": _write(folder, "ranking.csv", *ranking_rows(summary)),
             "mean_masks": _write(folder, "mean_masks.csv", *mean_mask_rows(summary))}
  learned = learned_g_rows(summary)
  if learned:
    written["learned_g"] = _write(folder, "learned_g.csv", *learned)
  return {k: os.path.relpath(v, work_dir) for k, v in written.items()}


def write_blind_test_table(folder: str, results: dict) -> str:
  """Writes FOLDER/results.csv, one row per expert (and the classifier on the same test split)."""
  header = ["who", "answered", "total", "accuracy", "mae_label_steps", "spearman", "paired_images",
            "mcnemar_p_vs_classifier", "verdict_vs_classifier"]
  rows = []
  for name, s in sorted(results["experts"].items()):
    paired = s.get("comparison") or {}
    rows.append([name, s["answered"], s["total"], s["accuracy"], s["mae_label_steps"], s["spearman"],
                 paired.get("num_images"), paired.get("mcnemar_p"), paired.get("verdict")])
  model = results.get("model")
  if model:
    rows.append(["classifier", model.get("num_images"), model.get("num_images"), model.get("accuracy"),
                 model.get("mae_label_steps"), model.get("spearman"), None, None, None])
  return _write(folder, "results.csv", header, rows)
