"""The blind test's statistics: exact McNemar and Wilson intervals checked against scipy and by simulation, simulated
experts of known accuracy against a model (one as good, one far worse), the answers CSV, Figures 7 and 8, and the
number of practice images per label."""
import csv
import json
import os

import numpy as np
import pytest

import scipy.stats

from copper_jax import metrics
from copper_jax.blind_test import scores as blind_scores, server as blind_server, session as blind_session
from copper_jax.errors import UserError
from copper_jax.store import workdir
from tests.conftest import train_smoke_classifier

NUM_LABELS = 16


def simulated_answers(rng, true_N, accuracy):
  """A rater right with probability `accuracy` on each image, otherwise uniform over the wrong labels."""
  right = rng.random(true_N.size) < accuracy
  wrong = (true_N + rng.integers(1, NUM_LABELS, true_N.size)) % NUM_LABELS
  return np.where(right, true_N, wrong)


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (3, 3), (2, 9), (10, 1), (17, 30), (40, 12)])
def test_exact_mcnemar_is_the_two_sided_binomial_test_of_the_discordant_pairs(b, c):
  expected = 1.0 if b + c == 0 else scipy.stats.binomtest(b, b + c, 0.5).pvalue
  assert metrics.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
  assert metrics.mcnemar_exact(b, c) == metrics.mcnemar_exact(c, b)


def test_wilson_interval_by_hand_and_its_coverage_at_blind_test_sizes():
  # 8 of 10: p = 0.8, z = 1.96; centre (0.8 + 0.19208) / 1.38415, half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38415
  low, high = metrics.wilson_interval(8, 10)
  assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
  assert metrics.wilson_interval(0, 5)[0] == 0.0 and metrics.wilson_interval(5, 5)[1] == 1.0
  assert all(np.isnan(metrics.wilson_interval(0, 0)))
  # Coverage with 5 test images per label (the paper's split) at accuracies a blind test meets.
  rng = np.random.default_rng(0)
  for p in (0.3, 0.6, 0.85):
    hits = rng.binomial(5, p, 4000)
    covered = [lo <= p <= hi for lo, hi in (metrics.wilson_interval(int(k), 5) for k in hits)]
    assert 0.9 <= np.mean(covered) <= 1.0, p


def test_an_expert_as_good_as_the_model_is_not_called_different_and_a_far_worse_one_is():
  rng = np.random.default_rng(1)
  true_N = np.repeat(np.arange(NUM_LABELS), 5)  # the paper's 5 test images per label: 80 images
  as_good, far_worse = [], []
  for _ in range(500):
    model_N = simulated_answers(rng, true_N, 0.7)
    as_good.append(metrics.paired_comparison(true_N, simulated_answers(rng, true_N, 0.7), model_N, NUM_LABELS))
    far_worse.append(metrics.paired_comparison(true_N, simulated_answers(rng, true_N, 0.25), model_N, NUM_LABELS))
  # An equally accurate expert is called different at most as often as the 5% level allows (exact McNemar errs on
  # the safe side), and a far worse one nearly always is, with the right direction.
  assert np.mean([r["verdict"] != "no detectable difference" for r in as_good]) <= 0.05
  assert np.mean([r["verdict"] == "second better" for r in far_worse]) >= 0.99
  assert not any(r["verdict"] == "first better" for r in far_worse)
  # The same answers as the model: nothing discordant, p = 1.
  same = metrics.paired_comparison(true_N, model_N, model_N, NUM_LABELS)
  assert same["mcnemar_p"] == 1.0 and same["only_first_right"] == same["only_second_right"] == 0


def _fake_study(root, rng, experts: dict, model_accuracy=0.7):
  """A workdir holding what expert_results reads: a classifier's results.json with per-image test predictions and
  one answer file per simulated expert (name: accuracy), all on the same 80 test images."""
  times = [float(t) for t in range(NUM_LABELS)]
  paths = [f"{k}/img{i}.png" for k in range(NUM_LABELS) for i in range(5)]
  true_N = np.repeat(np.arange(NUM_LABELS), 5)
  model_N = simulated_answers(rng, true_N, model_accuracy)
  summary = metrics.summary(true_N, model_N, NUM_LABELS)
  workdir.atomic_write_json(os.path.join(root, "results.json"), {
      "splits": {"test": summary},
      "predictions": {"test": [{"path": p, "true_label": int(t), "predicted_label": int(m)}
                               for p, t, m in zip(paths, true_N, model_N)]}})
  os.makedirs(os.path.join(root, blind_session.FOLDER))
  answers = {}
  for name, accuracy in experts.items():
    answer_N = simulated_answers(rng, true_N, accuracy)
    order = rng.permutation(true_N.size)
    questions = [{"path": paths[j], "true_label": int(true_N[j]), "answer": int(answer_N[j]),
                  "answered_at": "2026-11-30T00:00:00+00:00"} for j in order]
    questions[0].update(answer=None, answered_at=None)  # one image left unanswered
    answers[name] = questions
    workdir.atomic_write_json(os.path.join(root, blind_session.FOLDER, f"{name}.json"),
                              {"expert": name, "stress_times": times, "questions": questions})
  return {p: int(m) for p, m in zip(paths, model_N)}, answers


def test_expert_results_pair_each_expert_with_the_model_and_write_every_answer(tmp_path):
  root = str(tmp_path)
  model_by_path, answers = _fake_study(root, np.random.default_rng(2), {"peer": 0.7, "novice": 0.2})
  results = blind_scores.expert_results(root)
  peer, novice = results["experts"]["peer"]["comparison"], results["experts"]["novice"]["comparison"]
  assert peer["verdict"] == "no detectable difference" and peer["mcnemar_p"] > 0.05
  assert novice["verdict"] == "the classifier is more accurate" and novice["mcnemar_p"] < 1e-4
  for name, questions in answers.items():
    comparison = results["experts"][name]["comparison"]
    answered = [q for q in questions if q["answer"] is not None]
    assert comparison["num_images"] == len(answered) == 79
    expert_right = np.array([q["answer"] == q["true_label"] for q in answered])
    model_right = np.array([model_by_path[q["path"]] == q["true_label"] for q in answered])
    assert comparison["only_expert_right"] == int(np.sum(expert_right & ~model_right))
    assert comparison["only_model_right"] == int(np.sum(model_right & ~expert_right))
    assert comparison["expert_accuracy"] == pytest.approx(expert_right.mean())
    intervals = results["experts"][name]["per_label_interval"]
    accuracies = results["experts"][name]["per_label_accuracy"]
    assert len(intervals) == NUM_LABELS
    assert all(lo <= a <= hi for (lo, hi), a in zip(intervals, accuracies))
  folder = os.path.join(root, blind_session.FOLDER)
  with open(os.path.join(folder, blind_scores.ANSWERS_CSV), newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 2 * 80 and tuple(rows[0]) == blind_scores.CSV_COLUMNS
  unanswered = [r for r in rows if r["answer"] == ""]
  assert len(unanswered) == 2 and all(r["expert_correct"] == "" for r in unanswered)
  for r in rows:
    assert int(r["model_answer"]) == model_by_path[r["path"]]
    assert r["model_correct"] == str(int(model_by_path[r["path"]] == int(r["true_label"])))
  # Figure 7 per expert, Figure 8 once for the classifier, as the paper numbers them.
  assert results["model"]["figure"] == blind_scores.FIGURE8
  assert os.path.getsize(os.path.join(folder, blind_scores.FIGURE8)) > 10_000
  for name in answers:
    assert os.path.getsize(os.path.join(folder, results["experts"][name]["figures"]["figure7"])) > 10_000
  with open(os.path.join(folder, blind_session.RESULTS_FILE)) as f:
    assert json.load(f)["experts"]["novice"]["comparison"]["verdict"] == "the classifier is more accurate"
  assert "exact McNemar p =" in blind_scores.headline("novice", results["experts"]["novice"])


def test_without_per_image_model_answers_there_is_no_paired_test(tmp_path):
  root = str(tmp_path)
  _fake_study(root, np.random.default_rng(3), {"ida": 0.6})
  with open(os.path.join(root, "results.json")) as f:
    old = json.load(f)
  del old["predictions"]  # a results.json written before it kept them
  workdir.atomic_write_json(os.path.join(root, "results.json"), old)
  results = blind_scores.expert_results(root)
  assert results["experts"]["ida"]["comparison"] is None
  assert results["experts"]["ida"]["model_accuracy"] == old["splits"]["test"]["accuracy"]


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
  return train_smoke_classifier(tmp_path_factory, num_epochs=1)


def test_a_trained_classifier_keeps_its_answers_per_image_and_an_expert_is_paired_with_them(clf_dir):
  with open(os.path.join(clf_dir, "results.json")) as f:
    saved = json.load(f)
  test = blind_session.BlindTest(clf_dir)
  predictions = saved["predictions"]["test"]
  assert sorted(p["path"] for p in predictions) == test.test_paths
  assert metrics.confusion_matrix([p["true_label"] for p in predictions],
                                  [p["predicted_label"] for p in predictions], 4).tolist() == \
      saved["splits"]["test"]["confusion"]
  # This expert gives the classifier's own answers: perfectly concordant.
  by_path = {p["path"]: p["predicted_label"] for p in predictions}
  for position, q in enumerate(test.session("twin")["questions"]):
    test.answer("twin", position, by_path[q["path"]])
  twin = blind_scores.expert_results(clf_dir)["experts"]["twin"]
  assert twin["comparison"]["num_images"] == 4 and twin["comparison"]["mcnemar_p"] == 1.0
  assert twin["accuracy"] == saved["splits"]["test"]["accuracy"]


@pytest.mark.parametrize("count", [0, 1, 2])
def test_practice_images_per_label_are_settable(clf_dir, count):
  test = blind_session.BlindTest(clf_dir, practice_per_label=count)
  assert [len(row) for row in test.practice] == [count] * 4
  assert len(test.public_state("gus")["practice"][0]) == count


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_a_bad_number_of_practice_images_is_one_clear_error(clf_dir, bad):
  with pytest.raises(UserError, match=r"practice_per_label=.*: use a whole number >= 0"):
    blind_server.serve(clf_dir, port=0, practice_per_label=bad)
