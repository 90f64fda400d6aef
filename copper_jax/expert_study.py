"""The paper's human comparison: experts label the held-out images blind, and their results sit next to the model's.

`serve(work_dir, port)` (launch/blind_test.py) serves one local page on 127.0.0.1: first `practice_per_label`
training images of every stress time for practice, then the test images of `workdir/splits.json` in an order seeded
by the expert's name, without labels. Every click is POSTed and saved at once (atomic write) to
`workdir/blind_test/<expert>.json`, so a closed tab loses nothing and reopening resumes. `expert_results(work_dir)`
then scores every expert (accuracy with per-label Wilson intervals, confusion, mean absolute error in label steps,
Spearman), tests each against the classifier on the same images (exact McNemar), draws the paper's Figure 7 (an
expert) and Figure 8 (the classifier), and writes every answer to `workdir/blind_test/answers.csv`.
"""
import datetime
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse
import zlib

import numpy as np

from copper_jax import metrics
from copper_jax.data import prepare
from copper_jax.errors import UserError
from copper_jax.store import tables, workdir
from copper_jax.store.logs import log
from copper_jax.viz import pixels

FOLDER = "blind_test"
RESULTS_FILE = "results.json"
PRACTICE_PER_LABEL = 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# An answer is about 60 bytes of JSON; anything far larger is not one.
MAX_BODY_BYTES = 4096
# Seconds a connection may stay silent: a client that announces more bytes than it sends cannot hold a thread.
READ_TIMEOUT_S = 10.0


class _Refused(UserError):
  """A request refused with an HTTP status other than 400."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


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
      saved = _read_answers(path)
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


def _read_answers(path: str) -> dict:
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


def _content_length(header) -> int:
  """The announced body size in bytes; _Refused unless it is a plain number up to MAX_BODY_BYTES."""
  if header is None:
    raise _Refused(411, "the answer needs a Content-Length header")
  if not header.strip().isdigit():
    raise _Refused(400, f"Content-Length {header[:20]!r} is not a number of bytes")
  length = int(header)
  if length > MAX_BODY_BYTES:
    raise _Refused(413, f"the answer is {length} bytes; at most {MAX_BODY_BYTES} are accepted")
  return length


class _Handler(http.server.BaseHTTPRequestHandler):
  """GET /, /api/state, /image/...; POST /api/answer. Loopback only, JSON in and out."""
  test: BlindTest = None
  default_expert: str = ""
  quiet: bool = True
  timeout = READ_TIMEOUT_S  # socketserver sets it on the connection: a silent client times out

  def log_message(self, fmt, *args):
    """Silent: every image request would be a line; saved answers are logged instead."""

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, obj) -> None:
    self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

  def _json_body(self) -> dict:
    """The POSTed JSON object, read to exactly its announced length (a short body times out, unsaved)."""
    content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
      raise _Refused(415, f"Content-Type {content_type or 'none'!r}: send the answer as application/json")
    length = _content_length(self.headers.get("Content-Length"))
    raw = self.rfile.read(length)
    if len(raw) < length:
      raise UserError(f"the answer ended after {len(raw)} of {length} bytes")
    try:
      body = json.loads(raw)
    except ValueError:
      raise UserError("the answer is not JSON") from None
    if not isinstance(body, dict):
      raise UserError(f"the answer is JSON but not an object ({type(body).__name__}); send "
                      "{\"expert\": ..., \"position\": ..., \"label\": ...}")
    return body

  def _guarded(self, handle) -> None:
    # A page from another site must not reach this server through a name that resolves to 127.0.0.1.
    host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
    if host not in _LOOPBACK_HOSTS:
      self._json(403, {"error": f"host {host!r} refused: open http://127.0.0.1:{self.server.server_port}/"})
      return
    try:
      handle()
    except _Refused as e:
      self._json(e.status, {"error": str(e)})
    except UserError as e:
      self._json(400, {"error": str(e)})
    except TimeoutError:
      raise  # the server closes the connection; nothing was saved
    except Exception as e:  # noqa: BLE001 -- one line for the expert and the log, never a traceback
      log(f"error: {self.command} {self.path[:80]}: {type(e).__name__}: {str(e)[:160]}", False)
      self._json(500, {"error": f"the server could not answer ({type(e).__name__}); see its terminal"})

  def do_GET(self):
    self._guarded(self._get)

  def do_POST(self):
    self._guarded(self._post)

  def _get(self):
    url = urllib.parse.urlparse(self.path)
    query = dict(urllib.parse.parse_qsl(url.query))
    if url.path == "/":
      self._send(200, page(self.default_expert).encode("utf-8"), "text/html; charset=utf-8")
    elif url.path == "/api/state":
      self._json(200, self.test.public_state(check_expert(query.get("expert", ""))))
    elif m := re.fullmatch(r"/image/(practice|test)/(\d+)\.png", url.path):
      self._send(200, self.test.png(m[1], int(m[2]), query.get("expert")), "image/png")
    else:
      self._json(404, {"error": f"no page {url.path}"})

  def _post(self):
    if urllib.parse.urlparse(self.path).path != "/api/answer":
      self._json(404, {"error": f"no endpoint {self.path}"})
      return
    body = self._json_body()
    expert = check_expert(body.get("expert", ""))
    counts = self.test.answer(expert, body.get("position"), body.get("label"))
    log(f"{expert}: answer saved, {counts['answered']} of {counts['total']}", self.quiet)
    self._json(200, counts)


def serve(work_dir: str, port: int = 8000, expert: str | None = None, quiet: bool = False,
          practice_per_label: int = PRACTICE_PER_LABEL):
  """A started server on 127.0.0.1:`port` (0: any free port) in a background thread; `.shutdown()` stops it.
  `practice_per_label` training images of every stress time are shown, labelled, before the test."""
  if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
    raise UserError(f"port {port!r}: use a number from 1 to 65535, or 0 for any free port")
  test = BlindTest(work_dir, practice_per_label)
  handler = type("Handler", (_Handler,), {"test": test, "default_expert": check_expert(expert) if expert else "",
                                          "quiet": quiet})
  try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
  except OSError as e:
    raise UserError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); choose another --port") from None
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


def page(default_expert: str) -> str:
  """The single page: name, practice, blind test, done. Plain DOM and fetch, no libraries."""
  return PAGE.replace("__EXPERT__", json.dumps(default_expert))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Blind test: stress time of SEM images</title>
<link rel="icon" href="data:,">
<style>
body { font-family: sans-serif; max-width: 1100px; margin: 1em auto; padding: 0 1em; color: #222; }
.hidden { display: none; }
.row { display: flex; gap: 8px; align-items: center; margin: 6px 0; }
.row .t { width: 6em; font-weight: bold; }
.row img { width: 180px; }
#question img { width: 100%; max-width: 900px; max-height: 78vh; object-fit: contain; object-position: left top;
  display: block; margin: 0.5em 0; image-rendering: pixelated; }
.answers { display: flex; flex-wrap: wrap; gap: 6px; margin: 0.5em 0; }
.answers button { font-size: 1.1em; min-width: 4em; padding: 0.4em; }
.answers button.chosen { background: #c60; color: white; }
#status { color: #555; min-height: 1.2em; }
#status.error { color: #b00; }
</style></head><body>
<h1>Blind test: the stress time of SEM images</h1>
<section id="name-step" class="hidden">
<p>Your name (letters, digits, '.', '_', '-'); your answers are saved under it, and the same name resumes.</p>
<form id="name-form"><input id="name" required pattern="[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}">
<button>Start</button></form>
</section>
<section id="practice-step" class="hidden">
<h2>Practice: training images by stress time</h2>
<p>Look at these labelled images. Then start the test: the test images come without labels, in random order.</p>
<p><button id="start">Start the blind test</button> <span id="resume-note"></span></p>
<div id="practice"></div>
</section>
<section id="test-step" class="hidden">
<h2 id="counter"></h2>
<p>Which stress time? Your answer is saved as soon as you click.</p>
<div class="answers" id="answers"></div>
<div id="question"><img id="test-image" alt="test image"></div>
<p><button id="previous">previous image</button> <button id="next">next image</button></p>
<p id="status"></p>
</section>
<section id="done-step" class="hidden">
<h2>Done: every test image has an answer.</h2>
<p>Thank you. Your answers are saved; you may close this tab, or <button id="review">review your answers</button>.</p>
</section>
<script>
(function () {
  let expert = __EXPERT__ || new URLSearchParams(location.search).get('expert') || '';
  let state = null, position = 0;
  const $ = function (id) { return document.getElementById(id); };
  function show(step) {
    ['name-step', 'practice-step', 'test-step', 'done-step'].forEach(function (s) {
      $(s).classList.toggle('hidden', s !== step);
    });
  }
  function status(text, error) { $('status').textContent = text; $('status').classList.toggle('error', !!error); }
  function label(t) { return 't = ' + t; }
  function answered() { return state.answers.filter(function (a) { return a !== null; }).length; }
  function firstOpen() { const i = state.answers.indexOf(null); return i < 0 ? state.answers.length : i; }
  async function load() {
    const reply = await fetch('/api/state?expert=' + encodeURIComponent(expert));
    const body = await reply.json();
    if (!reply.ok) { show('name-step'); alert(body.error); return; }
    state = body;
    const practice = $('practice');
    practice.textContent = '';
    state.practice.forEach(function (urls, k) {
      const row = document.createElement('div');
      row.className = 'row';
      const t = document.createElement('span');
      t.className = 't';
      t.textContent = label(state.stress_times[k]);
      row.appendChild(t);
      urls.forEach(function (u) {
        const im = new Image();
        im.src = u;
        im.alt = label(state.stress_times[k]);
        row.appendChild(im);
      });
      practice.appendChild(row);
    });
    const answers = $('answers');
    answers.textContent = '';
    state.stress_times.forEach(function (t, k) {
      const b = document.createElement('button');
      b.className = 'answer';
      b.dataset.label = k;
      b.textContent = t;
      b.addEventListener('click', function () { choose(k); });
      answers.appendChild(b);
    });
    const done = answered();
    $('resume-note').textContent = done ? ('(resumes at image ' + (firstOpen() + 1) + '; ' + done + ' of ' +
        state.answers.length + ' answered)') : '';
    show('practice-step');
  }
  function render() {
    if (position >= state.answers.length) { show('done-step'); return; }
    show('test-step');
    $('counter').textContent = 'Image ' + (position + 1) + ' of ' + state.answers.length;
    $('test-image').src = '/image/test/' + position + '.png?expert=' + encodeURIComponent(expert);
    document.querySelectorAll('button.answer').forEach(function (b) {
      b.classList.toggle('chosen', Number(b.dataset.label) === state.answers[position]);
    });
    $('previous').disabled = position === 0;
    status(answered() + ' of ' + state.answers.length + ' answered');
  }
  async function choose(k) {
    const at = position;
    document.querySelectorAll('button.answer').forEach(function (b) { b.disabled = true; });
    try {
      const reply = await fetch('/api/answer', {method: 'POST', headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({expert: expert, position: at, label: k})});
      const body = await reply.json();
      if (!reply.ok) throw new Error(body.error);
      state.answers[at] = k;
      position = state.answers.indexOf(null, at + 1) >= 0 ? state.answers.indexOf(null, at + 1) : firstOpen();
      render();
    } catch (e) {
      status('Not saved: ' + e.message + '. Click again.', true);
    } finally {
      document.querySelectorAll('button.answer').forEach(function (b) { b.disabled = false; });
    }
  }
  $('start').addEventListener('click', function () { position = firstOpen(); render(); });
  $('previous').addEventListener('click', function () { position = Math.max(0, position - 1); render(); });
  $('next').addEventListener('click', function () {
    position = Math.min(state.answers.length, position + 1);
    render();
  });
  $('review').addEventListener('click', function () { position = 0; render(); });
  $('name-form').addEventListener('submit', function (e) {
    e.preventDefault();
    expert = $('name').value;
    history.replaceState(null, '', '?expert=' + encodeURIComponent(expert));
    load();
  });
  if (expert) load(); else show('name-step');
})();
</script>
</body></html>
"""


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
      session = _read_answers(os.path.join(folder, name))
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
      plots.save(rater_figure("the classifier", model_test, names, 8), os.path.join(folder, FIGURE8))
    done = [q for q in session["questions"] if q["answer"] is not None]
    true_N = np.array([q["true_label"] for q in done], np.int64)
    answer_N = np.array([q["answer"] for q in done], np.int64)
    scores = metrics.summary(true_N, answer_N, len(names))
    scores.update(answered=len(done), total=len(session["questions"]),
                  per_label_interval=metrics.per_label_intervals(scores["confusion"]),
                  model_accuracy=model_test["accuracy"] if model_test else None,
                  comparison=compare_with_model(session["questions"], by_path, len(names)))
    figures = {"figure7": f"{expert}_figure7.png", "per_label": f"{expert}_per_label.png"}
    plots.save(rater_figure(expert, scores, names, 7), os.path.join(folder, figures["figure7"]))
    plots.save(per_label_figure(expert, scores, model_test, names), os.path.join(folder, figures["per_label"]))
    scores["figures"] = figures
    results["experts"][expert] = scores
    rows.extend(answer_rows(session, by_path))
    log(headline(expert, scores), quiet)
  if results["experts"]:
    write_answers_csv(os.path.join(folder, ANSWERS_CSV), rows)
    workdir.atomic_write_json(os.path.join(folder, RESULTS_FILE), results)
    tables.write_blind_test_table(folder, results)
  return results


FIGURE8 = "figure8_classifier.png"


def _interval_errors(scores: dict):
  """(2, K) distances below and above each bar of the Wilson intervals; zeros where a label has no images."""
  values = np.array([np.nan if v is None else v for v in scores["per_label_accuracy"]], float)
  bounds = metrics.per_label_intervals(scores["confusion"])
  low = np.array([np.nan if b[0] is None else b[0] for b in bounds], float)
  high = np.array([np.nan if b[1] is None else b[1] for b in bounds], float)
  return np.nan_to_num(np.stack([values - low, high - values]))


def rater_figure(who: str, scores: dict, names, number: int):
  """The paper's Figure 7 (an expert) or 8 (the classifier): accuracy per true stress time with Wilson 95%
  intervals, and the row-normalised confusion matrix."""
  from copper_jax.viz import plots
  from copper_jax.viz.plots import plt
  x = np.arange(len(names))
  size = max(3.6, 0.3 * len(names) + 1.8)
  fig, (bars, grid) = plt.subplots(1, 2, figsize=(2 * size + 1.2, size))
  heights = np.nan_to_num(np.array([np.nan if v is None else v for v in scores["per_label_accuracy"]], float))
  bars.bar(x, heights, 0.7, yerr=_interval_errors(scores), capsize=2, color="tab:orange" if number == 7 else
           "tab:blue", error_kw={"elinewidth": 0.8})
  bars.set_xticks(x, names, rotation=90 if len(names) > 8 else 0, fontsize=7)
  bars.set_ylim(0, 1.05)
  bars.set_xlabel("true stress time")
  bars.set_ylabel("accuracy (95% Wilson interval)")
  bars.grid(axis="y", alpha=0.3)
  shown = plots.draw_confusion(grid, scores["confusion"], names, xlabel="answered stress time")
  fig.colorbar(shown, ax=grid, fraction=0.046, pad=0.04, label="share of the row")
  accuracy = scores["accuracy"]
  fig.suptitle(f"Figure {number}: {who}, accuracy {'n/a' if accuracy is None else f'{accuracy:.2f}'} on "
               f"{int(np.asarray(scores['confusion']).sum())} test images", fontsize=9)
  return fig


def per_label_figure(expert: str, scores: dict, model_test: dict | None, names):
  """Accuracy per true stress time, the expert's bars next to the classifier's, with Wilson 95% intervals."""
  from copper_jax.viz.plots import plt
  x = np.arange(len(names))
  width = 0.4 if model_test else 0.7
  fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.4))
  bars = [(f"{expert} ({scores['answered']} answers)", scores, "tab:orange")]
  if model_test:
    bars.append(("classifier", model_test, "tab:blue"))
  for b, (label, rater, colour) in enumerate(bars):
    shift = (b - (len(bars) - 1) / 2) * width
    heights = np.array([np.nan if v is None else v for v in rater["per_label_accuracy"]], float)
    ax.bar(x + shift, np.nan_to_num(heights), width, label=label, color=colour, yerr=_interval_errors(rater),
           capsize=2, error_kw={"elinewidth": 0.8})
    for i in np.flatnonzero(np.isnan(heights)):
      ax.text(i + shift, 0.02, "none", rotation=90, ha="center", va="bottom", fontsize=6, color="gray")
  ax.set_xticks(x, names, rotation=90 if len(names) > 8 else 0, fontsize=7)
  ax.set_ylim(0, 1.25)  # headroom for the legend above full bars
  ax.set_xlabel("true stress time")
  ax.set_ylabel("accuracy (95% Wilson interval)")
  ax.legend(fontsize=7, loc="upper center", ncol=2)
  ax.grid(axis="y", alpha=0.3)
  ax.set_title(f"Accuracy per stress time: {expert} and the classifier", fontsize=9)
  return fig
