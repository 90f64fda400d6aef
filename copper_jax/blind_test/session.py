"""One workdir's blind test: its images, their hidden labels and every expert's saved answers (thread-safe)."""
import datetime
import json
import os
import re
import threading
import zlib

import numpy as np

from copper_jax import config_rules
from copper_jax.data import prepare
from copper_jax.errors import UserError
from copper_jax.store import workdir
from copper_jax.viz import pixels

FOLDER = "blind_test"
RESULTS_FILE = "results.json"
PRACTICE_PER_LABEL = 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_expert(name: str) -> str:
  """The expert's name, usable as a file name; UserError otherwise."""
  if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".json") or name == "results":
    raise UserError(f"expert name {name!r}: use letters, digits, '.', '_' or '-' (up to 64), not 'results'")
  return name


def check_practice(practice_per_label) -> int:
  """The number of labelled training images shown per stress time before the test; UserError otherwise."""
  if isinstance(practice_per_label, bool) or not isinstance(practice_per_label, int) or practice_per_label < 0:
    raise UserError(f"practice_per_label={practice_per_label!r}: use a whole number >= 0 of training images shown "
                    f"per stress time ({PRACTICE_PER_LABEL} by default)")
  return practice_per_label


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _display_png(image_HxW, lo: float, hi: float) -> bytes:
  """8-bit PNG of an image on one gray scale for the whole dataset, so relative brightness stays a cue."""
  if image_HxW.dtype == np.uint8:
    return pixels.png_bytes(image_HxW)
  return pixels.png_bytes(pixels.gray_levels(image_HxW, lo, hi))


class BlindTest:
  """The images, their labels and every expert's answer file of one workdir; thread-safe."""

  def __init__(self, work_dir: str, practice_per_label: int = PRACTICE_PER_LABEL):
    check_practice(practice_per_label)
    self.work_dir = os.path.abspath(work_dir)
    config = workdir.load_config(self.work_dir)
    config_rules.complete(config, config_rules.COMMON)  # an older workdir's data keys
    self.seed = int(config.seed)
    dataset, split = prepare.prepare_data(config, self.work_dir)
    if len(split.get("test", ())) == 0:
      raise UserError(f"{self.work_dir}/splits.json has no test images to show")
    self.dataset = dataset
    self.stress_times = [float(t) for t in dataset.stress_times]
    self.test_paths = sorted(dataset.paths[i] for i in split["test"])
    self._index = {p: i for i, p in enumerate(dataset.paths)}
    self.practice = [[int(i) for i in split["train"][dataset.labels[split["train"]] == k][:practice_per_label]]
                     for k in range(dataset.num_classes)]
    self._lo = float(min(im.min() for im in dataset.images))
    self._hi = float(max(im.max() for im in dataset.images))
    self._png = {}
    self._lock = threading.Lock()
    workdir.claim(os.path.join(self.work_dir, FOLDER), workdir.BLIND_TEST_ANSWERS, "the answers folder")

  def path(self, expert: str) -> str:
    return os.path.join(self.work_dir, FOLDER, f"{check_expert(expert)}.json")

  def session(self, expert: str) -> dict:
    """The expert's answer file, created with a fresh seeded order on first use."""
    with self._lock:
      return self._session(expert)

  def _session(self, expert: str) -> dict:
    path = self.path(expert)
    if os.path.exists(path):
      saved = read_answers(path)
      if sorted(q["path"] for q in saved["questions"]) != self.test_paths:
        raise UserError(f"{path} was made for other test images (splits.json changed); move it away to restart")
      return saved
    order = np.random.default_rng([self.seed, zlib.crc32(expert.encode("utf-8"))]).permutation(
        len(self.test_paths))
    questions = []
    for j in order:
      p = self.test_paths[j]
      questions.append({"path": p, "true_label": int(self.dataset.labels[self._index[p]]), "answer": None,
                        "answered_at": None})
    session = {"expert": expert, "workdir": self.work_dir, "split": "test", "stress_times": self.stress_times,
               "started": _now(), "updated": _now(), "questions": questions}
    workdir.atomic_write_json(path, session)
    return session

  def answer(self, expert: str, position: int, label: int) -> dict:
    """Records one answer and saves the file at once; returns the counts the page shows."""
    with self._lock:
      session = self._session(expert)
      if type(position) is not int or not 0 <= position < len(session["questions"]):
        raise UserError(f"position {position!r}: no such test image")
      if type(label) is not int or not 0 <= label < len(self.stress_times):
        raise UserError(f"label {label!r}: no such stress time")
      question = session["questions"][position]
      question["answer"], question["answered_at"] = label, _now()
      session["updated"] = question["answered_at"]
      workdir.atomic_write_json(self.path(expert), session)
    return {"answered": sum(q["answer"] is not None for q in session["questions"]),
            "total": len(session["questions"])}

  def public_state(self, expert: str) -> dict:
    """What the page needs: no paths and no true labels of test images, only positions."""
    session = self.session(expert)
    return {"expert": expert, "stress_times": self.stress_times,
            "practice": [[f"/image/practice/{i}.png" for i in row] for row in self.practice],
            "answers": [q["answer"] for q in session["questions"]]}

  def png(self, kind: str, number: int, expert: str | None) -> bytes:
    if kind == "practice":
      if not any(number in row for row in self.practice):
        raise UserError(f"image {number} is not a practice image")
      index = number
    else:
      questions = self.session(expert)["questions"]
      if not 0 <= number < len(questions):
        raise UserError(f"position {number}: no such test image")
      index = self._index[questions[number]["path"]]
    if index not in self._png:
      self._png[index] = _display_png(self.dataset.images[index], self._lo, self._hi)
    return self._png[index]


def read_answers(path: str) -> dict:
  """An expert's answer file, checked for the fields scoring reads; UserError naming the file otherwise."""
  fix = "move it away to restart that expert, or restore it from a backup"
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    questions = saved["questions"]
    if not isinstance(saved["expert"], str) or not all(isinstance(t, (int, float)) for t in saved["stress_times"]):
      raise TypeError("expert or stress_times")
    num_labels = len(saved["stress_times"])
    for q in questions:
      answer, true = q["answer"], q["true_label"]
      if not isinstance(q["path"], str) or type(true) is not int or not (answer is None or type(answer) is int):
        raise TypeError("a question's path, true_label or answer")
      if not 0 <= true < num_labels or not (answer is None or 0 <= answer < num_labels):
        raise ValueError("a label outside the stress times")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path}: not a readable answer file ({type(e).__name__}: {str(e)[:80]}); {fix}") from None
  return saved
