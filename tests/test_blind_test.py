"""The experts' blind test: a scripted expert clicks through the page in Chromium, the answers file follows every
click, a closed tab resumes, and the per-label results sit next to the classifier's."""
import csv
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from copper_jax import metrics
from copper_jax.blind_test import scores as blind_scores, server as blind_server, session as blind_session
from tests.conftest import train_smoke_classifier
from tests.browser import Browser, require_chromium
from tests.reliability_helpers import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
  return train_smoke_classifier(tmp_path_factory, num_epochs=2)


@pytest.fixture
def server(clf_dir):
  server = blind_server.serve(clf_dir, port=0, quiet=True)
  yield server
  server.shutdown()
  server.server_close()


def _request(server, path, body=None, host=None):
  url = f"http://127.0.0.1:{server.server_port}{path}"
  data = None if body is None else json.dumps(body).encode("utf-8")
  request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  if host:
    request.add_unredirected_header("Host", host)
  try:
    with urllib.request.urlopen(request, timeout=HANG_S) as reply:
      return reply.status, reply.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def _answers(clf_dir, expert):
  with open(os.path.join(clf_dir, blind_session.FOLDER, f"{expert}.json")) as f:
    return json.load(f)


def test_a_scripted_expert_clicks_through_and_resumes(clf_dir, server):
  require_chromium()
  url = f"http://127.0.0.1:{server.server_port}/?expert=ana"
  with Browser(height=1000) as browser:
    browser.open(url)
    browser.wait_for("[...document.querySelectorAll('#practice img')].length === 12 && "
                     "[...document.querySelectorAll('#practice img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "t = 0" in browser.eval("document.getElementById('practice').textContent")
    browser.click("#start")
    for k in range(2):
      browser.wait_for(f"document.getElementById('counter').textContent === 'Image {k + 1} of 4'")
      browser.wait_for("document.getElementById('test-image').complete && "
                       "document.getElementById('test-image').naturalWidth > 0")
      browser.click(f'button.answer[data-label="{k}"]')
      browser.wait_for(f"document.getElementById('status').textContent.startsWith('{k + 1} of 4')")
      saved = _answers(clf_dir, "ana")["questions"]
      assert [q["answer"] for q in saved] == [0, 1][:k + 1] + [None] * (3 - k)  # saved at the click
    assert browser.errors == []
  # The tab was closed after two answers; a new one resumes at the third image.
  with Browser(height=1000) as browser:
    browser.open(url)
    browser.wait_for("document.getElementById('resume-note').textContent.includes('resumes at image 3')")
    browser.click("#start")
    for k in (2, 3):
      browser.wait_for(f"document.getElementById('counter').textContent === 'Image {k + 1} of 4'")
      browser.click(f'button.answer[data-label="{k}"]')
    browser.wait_for("!document.getElementById('done-step').classList.contains('hidden')")
    assert browser.errors == []
  questions = _answers(clf_dir, "ana")["questions"]
  assert [q["answer"] for q in questions] == [0, 1, 2, 3]
  results = blind_scores.expert_results(clf_dir)
  ana = results["experts"]["ana"]
  true = [q["true_label"] for q in questions]
  assert ana["confusion"] == metrics.confusion_matrix(true, [0, 1, 2, 3], 4).tolist()
  assert ana["accuracy"] == pytest.approx(metrics.accuracy(true, [0, 1, 2, 3]))
  assert ana["answered"] == ana["total"] == 4
  with open(os.path.join(clf_dir, "results.json")) as f:
    assert results["model"]["accuracy"] == json.load(f)["splits"]["test"]["accuracy"]
  for name in ana["figures"].values():
    assert os.path.getsize(os.path.join(clf_dir, blind_session.FOLDER, name)) > 10_000
  assert os.path.exists(os.path.join(clf_dir, blind_session.FOLDER, blind_session.RESULTS_FILE))


def test_without_a_name_the_page_asks_for_one(clf_dir, server):
  require_chromium()
  with Browser() as browser:
    browser.open(f"http://127.0.0.1:{server.server_port}/")
    browser.wait_for("!document.getElementById('name-step').classList.contains('hidden')")
    browser.click("#name")
    browser.send("Input.insertText", {"text": "gil"})
    browser.click("#name-form button")
    browser.wait_for("!document.getElementById('practice-step').classList.contains('hidden')")
    assert browser.eval("location.search") == "?expert=gil"
    assert browser.errors == []
  assert os.path.exists(os.path.join(clf_dir, blind_session.FOLDER, "gil.json"))


def test_the_page_reveals_no_test_label_and_orders_are_seeded_per_expert(clf_dir, server):
  status, body = _request(server, "/api/state?expert=bo")
  state = json.loads(body)
  assert status == 200 and set(state) == {"expert", "stress_times", "practice", "answers"}
  assert state["answers"] == [None] * 4
  order = [q["path"] for q in _answers(clf_dir, "bo")["questions"]]
  _request(server, "/api/state?expert=cy")
  assert order != [q["path"] for q in _answers(clf_dir, "cy")["questions"]]  # 1 in 24 chance per seed; fixed
  assert order == [q["path"] for q in blind_session.BlindTest(clf_dir).session("bo")["questions"]]
  status, png = _request(server, "/image/test/0.png?expert=bo")
  assert status == 200 and png.startswith(b"\x89PNG")


@pytest.mark.parametrize("path, body, words", [
    ("/api/answer", {"expert": "../etc", "position": 0, "label": 0}, "expert name"),
    ("/api/answer", {"expert": "results", "position": 0, "label": 0}, "expert name"),
    ("/api/answer", {"expert": "dee", "position": 4, "label": 0}, "position 4"),
    ("/api/answer", {"expert": "dee", "position": 0, "label": 9}, "label 9"),
    ("/api/answer", {"expert": "dee", "position": True, "label": 0}, "position True"),
    ("/image/test/7.png?expert=dee", None, "position 7"),
    ("/image/practice/100.png", None, "not a practice image"),
])
def test_bad_requests_are_refused_and_change_nothing(clf_dir, server, path, body, words):
  status, reply = _request(server, path, body)
  assert status == 400 and words in json.loads(reply)["error"]
  assert not os.path.exists(os.path.join(clf_dir, blind_session.FOLDER, "..etc.json"))


def test_requests_through_another_host_name_are_refused(server):
  status, reply = _request(server, "/api/state?expert=ed", host="attacker.example:80")
  assert status == 403 and "refused" in json.loads(reply)["error"]


def test_launcher_serves_saves_and_scores_on_ctrl_c(clf_dir, tmp_path):
  process = subprocess.Popen(
      [sys.executable, "launch/blind_test.py", f"--workdir={clf_dir}", "--port=0", "--expert=fay", "--quiet"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = process.stdout.readline()
    assert line.startswith("blind test: open http://127.0.0.1:") and "?expert=fay" in line
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/answer",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"expert": "fay", "position": 0, "label": 1}).encode())
    with urllib.request.urlopen(request, timeout=HANG_S) as reply:
      assert json.loads(reply.read()) == {"answered": 1, "total": 4}
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=HANG_S)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, err
  assert "fay: 1 of 4 test images answered" in out
  assert np.isclose(blind_scores.expert_results(clf_dir)["experts"]["fay"]["answered"], 1)
  # The same scores as a spreadsheet table.
  with open(os.path.join(clf_dir, blind_session.FOLDER, "results.csv"), newline="") as f:
    table = {row["who"]: row for row in csv.DictReader(f)}
  assert (table["fay"]["answered"], table["fay"]["total"]) == ("1", "4") and "classifier" in table
