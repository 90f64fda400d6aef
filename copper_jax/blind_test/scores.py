"""Scoring the experts' answers: each against the truth and against the classifier on the same images, written to
`workdir/blind_test/` as results.json, results.csv and answers.csv, with the paper's Figures 7 and 8."""
import json
import os
import sys

import numpy as np

from copper_jax import metrics
from copper_jax.blind_test import figures as figures_lib
from copper_jax.blind_test.session import FOLDER, RESULTS_FILE, read_answers
from copper_jax.errors import UserError
from copper_jax.store import tables, workdir
from copper_jax.store.logs import log

FIGURE8 = "figure8_classifier.png"


def _model_results(work_dir: str, classifier_dir: str | None):
  """(source folder, results.json content) of the classifier to compare with, or (None, None)."""
  for folder in (work_dir, classifier_dir):
    if folder and os.path.exists(os.path.join(folder, "results.json")):
      with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        return folder, json.load(f)
  return None, None


def model_answers(model: dict | None) -> dict:
  """{test image path: the classifier's predicted label}; empty for a results.json written before it kept its
  per-image predictions (evaluate the classifier again with launch/evaluate.py to add them)."""
  if not model:
    return {}
  return {p["path"]: int(p["predicted_label"]) for p in model.get("predictions", {}).get("test", ())}


def compare_with_model(questions: list, answers_by_path: dict, num_classes: int) -> dict | None:
  """The expert against the classifier on the test images both answered: exact McNemar on the discordant images
  and each one's accuracy; None when the classifier's per-image answers are unknown."""
  if not answers_by_path:
    return None
  paired = [q for q in questions if q["answer"] is not None and q["path"] in answers_by_path]
  true_N = np.array([q["true_label"] for q in paired], np.int64)
  expert_N = np.array([q["answer"] for q in paired], np.int64)
  model_N = np.array([answers_by_path[q["path"]] for q in paired], np.int64)
  paired_stats = metrics.paired_comparison(true_N, expert_N, model_N, num_classes)
  verdict = {"first better": "the expert is more accurate", "second better": "the classifier is more accurate",
             "no detectable difference": "no detectable difference"}[paired_stats["verdict"]]
  return {"num_images": paired_stats["num_images"], "expert_accuracy": paired_stats["first_accuracy"],
          "model_accuracy": paired_stats["second_accuracy"], "both_right": paired_stats["both_right"],
          "only_expert_right": paired_stats["only_first_right"],
          "only_model_right": paired_stats["only_second_right"], "both_wrong": paired_stats["both_wrong"],
          "mcnemar_p": paired_stats["mcnemar_p"], "alpha": paired_stats["alpha"], "verdict": verdict}


ANSWERS_CSV = "answers.csv"
CSV_COLUMNS = ("expert", "position", "path", "true_label", "true_stress_time", "answer", "answer_stress_time",
               "answered_at", "expert_correct", "model_answer", "model_correct")


def answer_rows(session: dict, answers_by_path: dict) -> list:
  """One CSV row per test image shown to the expert, answered or not (empty cells for what is unknown)."""
  times = session["stress_times"]
  rows = []
  for position, q in enumerate(session["questions"]):
    model = answers_by_path.get(q["path"])
    answered = q["answer"] is not None
    rows.append({"expert": session["expert"], "position": position, "path": q["path"],
                 "true_label": q["true_label"], "true_stress_time": f"{times[q['true_label']]:g}",
                 "answer": q["answer"] if answered else "",
                 "answer_stress_time": f"{times[q['answer']]:g}" if answered else "",
                 "answered_at": q["answered_at"] or "", "expert_correct": int(q["answer"] == q["true_label"])
                 if answered else "", "model_answer": "" if model is None else model,
                 "model_correct": "" if model is None else int(model == q["true_label"])})
  return rows


def write_answers_csv(path: str, rows: list) -> None:
  tables.write_dict_csv(path, CSV_COLUMNS, rows)


def headline(name: str, expert: dict) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  line = (f"{name}: {expert['answered']} of {expert['total']} test images answered; accuracy "
          f"{fmt(expert['accuracy'])}, mean absolute error {fmt(expert['mae_label_steps'])} label steps, Spearman "
          f"{fmt(expert['spearman'])}")
  if expert.get("model_accuracy") is not None:
    line += f" (classifier: accuracy {fmt(expert['model_accuracy'])})"
  paired = expert.get("comparison")
  if paired and paired["num_images"]:
    line += (f"; on the same {paired['num_images']} images, expert {fmt(paired['expert_accuracy'])} against "
             f"classifier {fmt(paired['model_accuracy'])}, exact McNemar p = {paired['mcnemar_p']:.3g}: "
             f"{paired['verdict']}")
  return line


def expert_results(work_dir: str, classifier_dir: str | None = None, quiet: bool = True) -> dict:
  """Scores every expert answer file in `workdir/blind_test/`, compares each with the classifier on the same images,
  draws the paper's Figure 7 (each expert) and Figure 8 (the classifier), and writes `workdir/blind_test/` files
  results.json and answers.csv (every answer); returns results.json's content ({"experts": {}} when nobody answered).

  The classifier's results come from `work_dir/results.json` (a classifier workdir) or `classifier_dir`, on its
  test split: the same images when both workdirs share the dataset and splits.json.
  """
  from copper_jax.viz import plots
  folder = os.path.join(os.path.abspath(work_dir), FOLDER)
  # Hidden files (the folder's ownership mark) are not answers.
  files = sorted(f for f in os.listdir(folder) if f.endswith(".json") and f != RESULTS_FILE
                 and not f.startswith(".")) if os.path.isdir(folder) else []
  model_dir, model = _model_results(work_dir, classifier_dir)
  model_test = model["splits"].get("test") if model else None
  by_path = model_answers(model)
  results = {"experts": {}, "model": None, "skipped": []}
  rows = []
  for name in files:
    try:
      session = read_answers(os.path.join(folder, name))
    except UserError as e:
      # One damaged file must not cost every other expert their results.
      results["skipped"].append(str(e))
      print(f"skipped: {e}", file=sys.stderr)
      continue
    expert = session["expert"]
    names = [f"{t:g}" for t in session["stress_times"]]
    if model_test and results["model"] is None:
      results["model"] = {"workdir": os.path.abspath(model_dir), **model_test,
                          "per_label_interval": metrics.per_label_intervals(model_test["confusion"]),
                          "figure": FIGURE8}
      plots.save(figures_lib.rater_figure("the classifier", model_test, names, 8), os.path.join(folder, FIGURE8))
    done = [q for q in session["questions"] if q["answer"] is not None]
    true_N = np.array([q["true_label"] for q in done], np.int64)
    answer_N = np.array([q["answer"] for q in done], np.int64)
    scores = metrics.summary(true_N, answer_N, len(names))
    scores.update(answered=len(done), total=len(session["questions"]),
                  per_label_interval=metrics.per_label_intervals(scores["confusion"]),
                  model_accuracy=model_test["accuracy"] if model_test else None,
                  comparison=compare_with_model(session["questions"], by_path, len(names)))
    figures = {"figure7": f"{expert}_figure7.png", "per_label": f"{expert}_per_label.png"}
    plots.save(figures_lib.rater_figure(expert, scores, names, 7), os.path.join(folder, figures["figure7"]))
    plots.save(figures_lib.per_label_figure(expert, scores, model_test, names), os.path.join(folder, figures["per_label"]))
    scores["figures"] = figures
    results["experts"][expert] = scores
    rows.extend(answer_rows(session, by_path))
    log(headline(expert, scores), quiet)
  if results["experts"]:
    write_answers_csv(os.path.join(folder, ANSWERS_CSV), rows)
    workdir.atomic_write_json(os.path.join(folder, RESULTS_FILE), results)
    tables.write_blind_test_table(folder, results)
  return results


def saved_results(work_dir: str) -> dict | None:
  """`workdir/blind_test/results.json` as `expert_results` wrote it, or None when nobody has been scored there."""
  path = os.path.join(work_dir, FOLDER, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def expert_figures(work_dir: str, expert: dict) -> tuple:
  """Paths of one scored expert's figures."""
  return tuple(os.path.join(work_dir, FOLDER, name) for name in expert["figures"].values())


def table_links(work_dir: str) -> list:
  """[(path relative to the workdir, what it holds)] of the blind test's tables that exist."""
  tables_ = [(os.path.join(FOLDER, "results.csv"), "the blind test: each expert's scores and the classifier's on the "
              "same test split, with the paired McNemar test"),
             (os.path.join(FOLDER, ANSWERS_CSV), "the blind test: every answer")]
  return [(rel, text) for rel, text in tables_ if os.path.exists(os.path.join(work_dir, rel))]
