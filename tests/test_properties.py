"""Property-based tests: random config values, folder layouts and HTTP requests thrown at the code users reach.

Each property is the promise of docs/reliability.md: a run either goes through with sane results, or stops with one
line (exit status 2 from a launcher) and writes nothing; never a traceback, never a hang. Examples are drawn with a
fixed seed (`derandomize`) and bounded counts, so the suite's time and outcome do not vary between runs.
"""
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax import config_rules, config_utils, hypotheses, optim
from copper_jax.blind_test import server as answer_server, session as blind_session
from copper_jax.classifier import program as classifier_program
from copper_jax.data import prepare, splits
from copper_jax.data.folder import load_folder
from copper_jax.errors import ConfigError, DataError
from copper_jax.store import workdir
from copper_jax.sweep import program as sweep_program
from tests.reliability_helpers import ROOT, launcher_env, strict_json

SEEDED = dict(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Values a user might type, or a script might produce, for any key.
HOSTILE_LIST = [float("nan"), float("inf"), float("-inf"), 0, -1, 1, 2, 0.5, 0.999, 1.0, 1e-12, 1e300, 2 ** 64, True,
                False, None, "", "abc", "linear", "mse", "best", "val", [], (), {}]
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_LIST),
    st.integers(-10 ** 6, 10 ** 6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)




def _near(default):
  """Values a careful user might set in place of `default`: of its type, around it, or one of the rule's choices."""
  if isinstance(default, bool):
    return st.booleans()
  if isinstance(default, int):
    return st.integers(max(0, default // 2 - 1), default * 2 + 2)
  if isinstance(default, float):
    return st.floats(0.0, max(1.0, default * 4), allow_nan=False)
  return st.just(default)


def _changes(config, table):
  """Lists of (key, value): a hostile value, or twice as often one near the key's default."""
  flat = config_utils.flatten(config)

  def values(key):
    rule = table[key]
    near = st.sampled_from(rule.choices) if isinstance(rule, config_rules.OneOf) else _near(flat.get(key))
    return st.tuples(st.just(key), st.one_of(HOSTILE, near, near))
  return st.lists(st.sampled_from(sorted(table)).flatmap(values), min_size=1, max_size=3)


def _with(config, changes: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted keys replaced, whatever the new values' types."""
  values = config.to_dict()
  for key, value in changes.items():
    *sections, leaf = key.split(".")
    node = values
    for section in sections:
      node = node[section]
    node[leaf] = value
  return ml_collections.ConfigDict(values)


def _accepted_config_works(config) -> None:
  """What an accepted config feeds must take it: an optimizer step gives finite numbers, the hypotheses give a
  valid target table, the split fits a dataset with enough images and has held-out images to show."""
  total = config_utils.total_steps(config.train, 40)
  optimizer = optim.make_optimizer(config.optim, total)
  params = {"w": np.zeros(3, np.float32)}
  updates, _ = optimizer.update({"w": np.ones(3, np.float32)}, optimizer.init(params), params)
  assert np.isfinite(np.asarray(updates["w"])).all()
  tau = np.linspace(0.0, 1.0, 4)
  if "hypotheses" in config:
    try:
      table = hypotheses.target_table(hypotheses.expand(config.hypotheses), tau)
      assert np.isfinite(table).all()
    except ConfigError as e:  # a table of the wrong length is only known once the labels are
      assert "\n" not in str(e)
  labels = np.repeat(np.arange(4), 60)
  try:
    made = splits.make_splits(labels, 4, config.data.split.to_dict(), config.seed)
  except DataError as e:
    assert "\n" not in str(e)
    return
  held_out = [name for name in ("val", "test") if len(made.get(name, ()))]
  assert len(made["train"]) and ("hypotheses" not in config or held_out)
  if "hypotheses" in config:
    assert len(splits.pick_overlay_images(labels, made[held_out[-1]], config.eval.num_overlays)) >= 1


def _check_outcome(validate, config, changed: list, record=event) -> None:
  """Refused in one line naming a changed key (or a key whose rule reads it), or accepted and usable downstream;
  `record` counts the outcome (hypothesis's `event` inside a property)."""
  try:
    validate(config)
  except ConfigError as e:
    record("refused")
    message = str(e)
    assert "\n" not in message and message
    assert any(key.rsplit(".", 1)[-1] in message for key in changed) or "hypothes" in message, (changed, message)
    return
  record("accepted")
  _accepted_config_works(config)


@settings(max_examples=250, **SEEDED)
@given(_changes(sweep_configs.get_config("smoke"), config_rules.SWEEP))
def test_any_sweep_values_are_refused_in_one_line_naming_a_key_or_work(changes):
  config = _with(sweep_configs.get_config("smoke"), dict(changes))
  _check_outcome(sweep_program.validate_config, config, [key for key, _ in changes])


@settings(max_examples=150, **SEEDED)
@given(_changes(classifier_configs.get_config("smoke"), config_rules.CLASSIFIER))
def test_any_classifier_values_are_refused_in_one_line_naming_a_key_or_work(changes):
  config = _with(classifier_configs.get_config("smoke"), dict(changes))
  _check_outcome(classifier_program.validate_config, config, [key for key, _ in changes])


@pytest.mark.parametrize("job", ["sweep", "classifier"])
def test_every_key_against_every_listed_value(job):
  """The exhaustive companion of the random tests above: each key of the job's rules, one listed value at a time."""
  configs, table, validate = {"sweep": (sweep_configs, config_rules.SWEEP, sweep_program.validate_config),
                              "classifier": (classifier_configs, config_rules.CLASSIFIER,
                                             classifier_program.validate_config)}[job]
  base = configs.get_config("smoke")
  outcomes = []
  for key in table:
    for value in HOSTILE_LIST:
      _check_outcome(validate, _with(base, {key: value}), [key], record=outcomes.append)
  assert 0 < outcomes.count("accepted") < len(outcomes)


# --- folder layouts -------------------------------------------------------------------------------------------

# A layout is a clean set of stress-time folders plus up to two defects, so that loading succeeds often enough to
# test what it returns, and every defect also meets the others.
LAYOUT = st.fixed_dictionaries({
    "folders": st.lists(st.tuples(st.sampled_from(["0", "1", "2.5", "10", ".5", "3"]), st.integers(1, 3)),
                        min_size=1, max_size=4, unique_by=lambda f: f[0]),
    "defects": st.lists(st.sampled_from([
        "name:0.5", "name:1.0", "name:-1", "name:abc", "name:.hidden", "name:1e400", "name:nan", "name:inf",
        "empty_folder", "uint16", "constant", "all_black", "link_folder", "link_file", "float_image"]), max_size=2),
})


def _write_layout(root: str, layout: dict, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  defects = layout["defects"]
  constant = "constant" in defects or "all_black" in defects
  for name, count in layout["folders"]:
    os.makedirs(os.path.join(root, name))
    for k in range(count):
      pixels = np.full((12, 12), 0 if "all_black" in defects else 9) if constant else rng.integers(0, 200, (12, 12))
      iio.imwrite(os.path.join(root, name, f"im{k}.png"), pixels.astype(np.uint8))
  first = os.path.join(root, layout["folders"][0][0])
  for defect in defects:
    if defect.startswith("name:") and not os.path.exists(os.path.join(root, defect[5:])):
      os.makedirs(os.path.join(root, defect[5:]))
      iio.imwrite(os.path.join(root, defect[5:], "x.png"), rng.integers(0, 200, (12, 12)).astype(np.uint8))
    elif defect == "empty_folder" and not os.path.exists(os.path.join(root, "77")):
      os.makedirs(os.path.join(root, "77"))
    elif defect == "uint16":
      iio.imwrite(os.path.join(first, "deep.png"), rng.integers(0, 60000, (12, 12)).astype(np.uint16))
    elif defect == "float_image":
      iio.imwrite(os.path.join(first, "float.tif"), rng.random((12, 12)).astype(np.float32))
    elif defect == "link_folder" and not os.path.exists(os.path.join(root, "99")):
      os.symlink(first, os.path.join(root, "99"))
    elif (defect == "link_file" and len(layout["folders"]) >= 2
          and not os.path.lexists(os.path.join(root, layout["folders"][1][0], "linked.png"))):
      os.symlink(os.path.join(first, "im0.png"), os.path.join(root, layout["folders"][1][0], "linked.png"))


@settings(max_examples=120, **SEEDED)
@given(LAYOUT)
def test_any_folder_layout_loads_a_trainable_set_or_is_refused_naming_it(layout):
  with tempfile.TemporaryDirectory() as root:
    _write_layout(root, layout)
    try:
      dataset = load_folder(root, standardise="dataset")
    except (DataError, ConfigError) as e:
      event("refused")
      assert "\n" not in str(e) and root in str(e), str(e)
      return
  event("loaded")
  assert dataset.num_classes >= 2 and np.all(np.diff(dataset.stress_times) > 0)
  assert np.isfinite(dataset.stress_times).all()
  assert len({image.dtype for image in dataset.images}) == 1
  assert dataset.std[0] > 0 and np.isfinite(dataset.mean).all()
  assert len(set(dataset.paths)) == len(dataset.paths)
  assert sorted(set(dataset.labels.tolist())) == list(range(dataset.num_classes))


# --- HTTP requests to the blind-test server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def blind_dir(tmp_path_factory):
  """A workdir the blind test can serve: a config, a tiny generated set and its split (no training needed)."""
  work_dir = str(tmp_path_factory.mktemp("blind"))
  config = classifier_configs.get_config("smoke")
  workdir.atomic_write_json(os.path.join(work_dir, workdir.CONFIG_FILE), config.to_dict())
  prepare.prepare_data(config, work_dir)
  return work_dir


@pytest.fixture(scope="module")
def blind_server(blind_dir):
  saved = answer_server._Handler.timeout  # pylint: disable=protected-access
  answer_server._Handler.timeout = 0.5  # pylint: disable=protected-access
  server = answer_server.serve(blind_dir, port=0, quiet=True)
  yield server
  server.shutdown()
  server.server_close()
  answer_server._Handler.timeout = saved  # pylint: disable=protected-access


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 40) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)
ANSWERS = st.fixed_dictionaries({}, optional={
    "expert": st.one_of(st.just("ada"), st.sampled_from(["b-2", "", "../x", "results", 7])),
    "position": st.one_of(st.integers(-1, 30), JSON_VALUES), "label": st.one_of(st.integers(-1, 5), JSON_VALUES)})
REQUEST = st.fixed_dictionaries({
    "method": st.one_of(st.just("POST"), st.sampled_from(["GET", "POST", "PUT", "HEAD"])),
    "path": st.one_of(st.just("/api/answer"), st.sampled_from(["/", "/api/state?expert=ada", "/api/state?expert=..%2Fx",
                             "/image/test/0.png?expert=ada", "/image/test/99999.png?expert=ada",
                             "/image/test/0.png", "/image/practice/0.png", "/nothing", "//api/answer"])),
    "content_type": st.one_of(st.just("application/json"),
                              st.sampled_from([None, "application/json; charset=utf-8", "text/plain"])),
    "body": st.one_of(ANSWERS.map(lambda a: json.dumps(a, allow_nan=True).encode()),
                      JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode()), st.binary(max_size=40)),
    "length": st.one_of(st.just("exact"), st.sampled_from([None, "abc", "-1", "99999999", " 3", "short"])),
})


def _send(port: int, req: dict):
  """(status or None when the server closed without a reply, body)."""
  body = req["body"]
  headers = ["Host: 127.0.0.1"]
  if req["content_type"]:
    headers.append(f"Content-Type: {req['content_type']}")
  length = req["length"]
  if length == "exact":
    headers.append(f"Content-Length: {len(body)}")
  elif length == "short":  # announces more than it sends: the server must time out, not wait for ever
    headers.append(f"Content-Length: {len(body) + 10}")
  elif length is not None:
    headers.append(f"Content-Length: {length}")
  with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    head = f"{req['method']} {req['path']} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    sock.sendall(head.encode("latin-1") + body)
    reply = http.client.HTTPResponse(sock, method=req["method"])
    try:
      reply.begin()
    except (http.client.RemoteDisconnected, ConnectionResetError):
      return None, b""
    return reply.status, reply.read()


@settings(max_examples=200, **SEEDED)
@given(REQUEST)
def test_any_request_gets_one_reply_and_leaves_answer_files_whole(blind_dir, blind_server, req):
  status, body = _send(blind_server.server_port, req)
  event(f"status {status}")
  if status is None:  # only a POST announcing more bytes than it sends may be left to time out
    announced = {"exact": len(req["body"]), "short": len(req["body"]) + 10}.get(req["length"], req["length"])
    assert req["method"] == "POST" and str(announced).strip().isdigit() and int(announced) > len(req["body"]), req
  else:
    assert status < 500 or status == 501, (status, body)  # 501: a method the server does not offer
    if 400 <= status < 500:
      assert "\n" not in json.loads(body)["error"]
  folder = os.path.join(blind_dir, blind_session.FOLDER)
  for name in os.listdir(folder) if os.path.isdir(folder) else []:
    if name.endswith(".json") and not name.startswith("."):  # hidden: the folder's ownership mark
      blind_session.read_answers(os.path.join(folder, name))


# --- the launchers themselves, as real processes ----------------------------------------------------------------

LAUNCHER_KEYS = ["optim.learning_rate", "optim.b1", "optim.eps", "loss.binarise_weight", "eval.num_overlays",
                 "control.permutations", "train.batch_size", "num_seeds", "data.crop_bottom", "seed"]
LAUNCHER_VALUES = st.sampled_from(["nan", "inf", "-1", "0", "1", "0.5", "3", "1e-3", "abc", "''", "True"])


@pytest.mark.slow
@settings(max_examples=8, **SEEDED)
@given(st.sampled_from(LAUNCHER_KEYS), LAUNCHER_VALUES)
def test_the_sweep_launcher_exits_0_with_sane_results_or_2_with_one_line(key, value):
  with tempfile.TemporaryDirectory() as base:
    work_dir = os.path.join(base, "w")
    args = ["--config=configs/sweep.py:smoke", f"--workdir={work_dir}", "--quiet", "--config.train.num_steps=2",
            "--config.train.checkpoint_every=2", "--config.eval.report=False", f"--config.{key}={value}"]
    result = subprocess.run([sys.executable, "launch/sweep.py", *args], cwd=ROOT, env=launcher_env(),
                            capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
      lines = result.stderr.strip().splitlines()
      assert lines[-1].startswith("error: ") and not os.path.exists(work_dir), result.stderr
      return
    assert result.returncode == 0, result.stderr
    summary = strict_json(os.path.join(work_dir, "sweep.json"))  # no NaN or Infinity in the results
    losses = [r["loss"]["val"]["mean"] for r in summary["hypotheses"] if not r["diverged"]]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert set(summary["ranking"]) <= {r["name"] for r in summary["hypotheses"]}


def test_every_preset_passes_its_own_rules():
  for preset in ("smoke", "demo", "paper", "science", "confounded"):
    sweep_program.validate_config(sweep_configs.get_config(preset))
  for preset in classifier_configs.PRESETS:
    classifier_program.validate_config(classifier_configs.get_config(preset))


# --- hostile names and folders that are not ours ------------------------------------------------------------------

from copper_jax.prediction import names as prediction_names  # noqa: E402
from copper_jax.prediction import writers as prediction_writers  # noqa: E402
from copper_jax.store import tables  # noqa: E402

# Name parts a user, another lab or an instrument might produce: formulas, the run's own file names, very long
# names, dots, spaces, non-ASCII, case twins.
NAME_PART = st.one_of(
    st.sampled_from(['=HYPERLINK("http:x","y")', "+cmd|calc", "@SUM(A1)", "-1", "-2+3", "\tx", "\rx", "summary.csv",
                     "Summary.CSV", "samples.csv", "about.txt", "skipped.txt", workdir.MARK_FILE.lstrip("."),
                     "config.json", "a", "A", "café", "x y", "..x", "n" * 250, "é" * 130]),
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=300)
    .filter(lambda s: s not in (".", "..") and not s.startswith(".")))
STEMS = st.lists(st.lists(NAME_PART, min_size=1, max_size=20).map(lambda parts: "/".join(parts)), min_size=1,
                 max_size=8)


@settings(max_examples=300, **SEEDED)
@given(STEMS)
def test_output_names_always_fit_never_clash_and_never_take_the_runs_own_files(tmp_path, stems):
  found = [(f"/in/{stem}.png", stem) for stem in stems]
  out = prediction_names.output_stems(found, str(tmp_path), prediction_writers.RUN_FILES)
  assert out == prediction_names.output_stems(found, str(tmp_path), prediction_writers.RUN_FILES)  # deterministic
  limit = os.pathconf(str(tmp_path), "PC_NAME_MAX")
  seen = set()
  for (file, original), (same_file, safe) in zip(found, out):
    assert same_file == file
    parts = safe.split(os.sep)
    assert all(len(os.fsencode(p)) <= limit for p in parts[:-1])
    assert len(os.fsencode(parts[-1] + prediction_names.LONGEST_SUFFIX)) <= limit
    assert len(parts) == 1 or parts[0].casefold() not in {r.casefold() for r in prediction_writers.RUN_FILES}
    assert len(os.fsencode(os.path.join(str(tmp_path), safe) + prediction_names.LONGEST_SUFFIX)) < 4096
    assert safe.casefold() not in seen
    seen.add(safe.casefold())
  event(f"renamed {sum(a[1] != b[1] for a, b in zip(found, out))} of {len(found)}")


@settings(max_examples=300, **SEEDED)
@given(st.lists(st.one_of(NAME_PART, st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=False), st.none()),
                min_size=1, max_size=6))
def test_every_table_cell_is_shown_as_written_and_never_evaluated(cells):
  import csv
  import io
  text = tables.csv_text(["h"] * len(cells), [cells])
  read = next(csv.reader(io.StringIO(text[text.index("\n") + 1:]), strict=True))
  assert len(read) == len(cells)
  for value, cell in zip(cells, read):
    if value is None:
      assert cell == ""
    elif isinstance(value, (int, float)):
      assert float(cell) == value  # numbers stay numbers
    elif cell.startswith(tables.FORMULA_STARTS):
      assert tables._PLAIN_NUMBER.fullmatch(cell)  # pylint: disable=protected-access -- a plain number
    else:
      shown = value.replace("\r\n", "\n").replace("\r", "\n")
      assert cell in (shown, "'" + shown)


FOREIGN_FILES = st.dictionaries(st.lists(NAME_PART.filter(lambda s: len(os.fsencode(s)) < 200), min_size=1,
                                         max_size=3).map(lambda parts: "/".join(parts)),
                                st.binary(max_size=20), min_size=1, max_size=5)


@settings(max_examples=120, **SEEDED)
@given(FOREIGN_FILES, st.sampled_from(workdir.KINDS))
def test_a_folder_of_someone_elses_files_is_never_claimed_nor_changed(files, kind):
  with tempfile.TemporaryDirectory() as base:
    folder = os.path.join(base, "theirs")
    written = {}
    for rel, data in files.items():
      path = os.path.join(folder, rel)
      if any(os.path.isfile(os.path.join(folder, *rel.split("/")[:i])) for i in range(1, rel.count("/") + 1)) \
          or os.path.isdir(path):
        continue  # a name already taken as a file or a folder: that layout cannot exist
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
      written[rel] = data
    before = {os.path.relpath(os.path.join(p, n), folder): open(os.path.join(p, n), "rb").read()
              for p, _, ns in os.walk(folder) for n in ns}
    recognised = workdir.kind_of(folder)
    try:
      workdir.claim(folder, kind, "--out")
    except Exception as e:  # pylint: disable=broad-except
      assert isinstance(e, workdir.UserError) and "\n" not in str(e), e
      claimed = False
    else:
      claimed = True
    after = {os.path.relpath(os.path.join(p, n), folder): open(os.path.join(p, n), "rb").read()
             for p, _, ns in os.walk(folder) for n in ns}
    after.pop(workdir.MARK_FILE, None)
    assert after == before  # nothing of theirs replaced or deleted
    assert claimed == (recognised == kind)  # only a folder its files show to be that kind of ours
    event(f"recognised as {recognised}")
