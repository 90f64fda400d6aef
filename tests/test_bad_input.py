"""Bad inputs a new user meets, one test per case: each is refused in one line naming the thing and the fix, before
anything is written, or handled so the result stays right. Grouped by the mechanism that catches them:
config rules, data identity, dataset checks, output paths, the blind-test server, and messages.
"""
import http.client
import json
import os
import shutil
import socket

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax import hypotheses, predict
from copper_jax.blind_test import scores as blind_scores, server as blind_server, session as blind_session
from copper_jax.classifier import program as classifier_program
from copper_jax.data import synthetic
from copper_jax.data.folder import load_folder
from copper_jax.errors import ConfigError, DataError, UserError
from copper_jax.store import workdir
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import results
from copper_jax.sweep import run as sweep_run


def _one_line(error) -> str:
  message = str(error.value)
  assert "\n" not in message and message, message
  return message


def _smoke(**changes) -> ml_collections.ConfigDict:
  """The smoke sweep config, shortened to 3 steps, with `changes` ({"optim.b1": nan, ...}) applied."""
  config = sweep_configs.get_config("smoke")
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  config.eval.report = False
  for key, value in changes.items():
    *sections, leaf = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
  """Two tiny synthetic sets with the same file names and sizes of image but other pixels: (a, b)."""
  base = tmp_path_factory.mktemp("roots")
  roots = []
  for seed in (0, 1):
    root = str(base / f"set{seed}")
    synthetic.generate(root, preset="tiny", seed=seed, workers=1)
    roots.append(root)
  return roots


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_roots):
  """A 3-step smoke sweep trained on data_roots[0]: (workdir, config)."""
  config = _smoke(**{"data.root": data_roots[0]})
  work_dir = str(tmp_path_factory.mktemp("trained"))
  sweep_run.run_sweep(config, work_dir, quiet=True)
  return work_dir, config


def _listing(folder):
  return sorted(os.path.relpath(os.path.join(p, f), folder) for p, _, files in os.walk(folder) for f in files)


# --- config values: checked by rule, before anything is written -----------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("optim.learning_rate", float("inf"), ["optim.learning_rate", "finite"]),
    ("optim.b1", float("nan"), ["optim.b1", "finite"]),
    ("optim.b2", float("nan"), ["optim.b2"]),  # once named learning_rate
    ("optim.eps", -1.0, ["optim.eps", "> 0"]),
    ("loss.binarise_weight", float("inf"), ["loss.binarise_weight", "finite"]),
    ("loss.consistency_weight", -1.0, ["loss.consistency_weight", ">= 0"]),
    ("eval.num_overlays", 0, ["eval.num_overlays", ">= 1"]),
    ("eval.num_overlays", -1, ["eval.num_overlays"]),
    ("control.permutations", -1, ["control.permutations", ">= 0"]),
    ("data.split", ml_collections.ConfigDict({"train": 4}), ["data.split", "held-out"]),
    ("data.split", ml_collections.ConfigDict({"train": 4, "val": 0, "test": 0}), ["data.split", "held-out"]),
    ("data.standardise", "pixel", ["data.standardise", "dataset"]),
    ("seed", -3, ["seed", ">= 0"]),
    ("hypotheses", ("linear", "power(gamma=[])"), ["gamma=[]"]),
])
def test_a_bad_sweep_value_is_refused_in_one_line_and_writes_nothing(tmp_path, key, value, words):
  work_dir = tmp_path / "w"
  with pytest.raises(ConfigError) as error:
    sweep_run.run_sweep(_smoke(**{key: value}), str(work_dir), quiet=True)
  for word in words:
    assert word in _one_line(error)
  assert not work_dir.exists()


def test_the_consistency_term_needs_a_patch_larger_than_the_pooling_period(tmp_path):
  # smoke's model.d=1: a 2-pixel patch is allowed, but leaves no crop to shift within the pooling period.
  with pytest.raises(ConfigError) as error:
    sweep_run.run_sweep(_smoke(**{"train.patch_size": 2, "loss.consistency_weight": 1.0}), str(tmp_path / "w"),
                        quiet=True)
  assert "config.loss.consistency_weight=1.0" in _one_line(error) and "train.patch_size > 2" in _one_line(error)
  assert not (tmp_path / "w").exists()


def test_a_consistency_weight_of_another_type_in_a_saved_config_is_refused_in_one_line():
  # A ConfigDict refuses a string for a float key, so such a value only arrives through a saved config.json.
  saved = _smoke().to_dict()
  saved["loss"]["consistency_weight"] = "x"
  with pytest.raises(ConfigError) as error:
    sweep_program.validate_config(ml_collections.ConfigDict(saved), "config.json")
  assert "config.loss.consistency_weight='x'" in _one_line(error)


def test_a_saved_config_from_before_the_consistency_term_still_loads_and_trains_without_it():
  saved = _smoke().to_dict()
  del saved["loss"]["consistency_weight"]
  config = ml_collections.ConfigDict(saved)
  sweep_program.validate_config(config, "config.json")
  assert sweep_program.SweepProgram(config, num_labels=2, num_members=1, total_steps=None).consistency_weight == 0


def test_power_with_an_empty_grid_no_longer_drops_the_hypothesis():
  with pytest.raises(ConfigError, match=r"gamma=\[\] lists no value"):
    hypotheses.expand(("linear", "power(gamma=[])"))
  assert [h.name for h in hypotheses.expand(("power(gamma=[0.5, 2])",))] == ["power(gamma=0.5)", "power(gamma=2)"]


@pytest.mark.parametrize("key, value", [("eval.split", "val"), ("eval.split", "holdout"),
                                        ("optim.b2", float("nan")), ("eval.num_cam", -1)])
def test_the_classifier_checks_the_same_rules(tmp_path, key, value):
  config = classifier_configs.get_config("smoke")
  config.data.split = ml_collections.ConfigDict({"train": 4, "val": 0, "test": 1})
  section, leaf = key.split(".")
  with config.unlocked():
    config[section][leaf] = value
  with pytest.raises(ConfigError) as error:
    classifier_program.validate_config(config)
  assert f"config.{key}" in _one_line(error)


def test_a_refusal_that_needs_the_data_leaves_no_workdir(tmp_path, data_roots):
  # The split asks for more images than a label holds: only the loaded data can tell, so the workdir was made.
  config = _smoke(**{"data.root": data_roots[0], "data.split": ml_collections.ConfigDict({"train": 6, "test": 1})})
  with pytest.raises(DataError) as error:
    sweep_run.run_sweep(config, str(tmp_path / "w"), quiet=True)
  assert "lower the split sizes" in _one_line(error)
  assert not (tmp_path / "w").exists()


def test_one_hypothesis_is_not_called_clear_of_others():
  row = {"name": "linear", "loss": {"val": {"mean": 0.01, "ci95": [0.0, 0.02]}}}
  control = {"ran": True, "state": "passed", "text": ""}
  evidence = {"text": "2 seeds, 32 held-out (val) images of 16 stress times"}
  verdict = results._verdict([row], "val", {}, control, evidence)  # pylint: disable=protected-access
  assert verdict["leader"] == "linear" and not verdict["distinguishable"]
  assert "Only linear was tried" in verdict["verdict"] and "fits best" not in verdict["verdict"]


# --- data identity and duration: a resume or an evaluation on other data is refused ----------------------------

def test_resume_on_other_images_under_the_same_names_is_refused(trained, data_roots):
  work_dir, config = trained
  before = _listing(work_dir)
  other = _smoke(**{"data.root": data_roots[1]})
  with pytest.raises(DataError) as error:
    sweep_run.run_sweep(other, work_dir, quiet=True)
  message = _one_line(error)
  assert "trained on other data" in message and "fresh --workdir" in message
  with pytest.raises(DataError, match="trained on other data"):
    sweep_run.evaluate_sweep(other, work_dir, quiet=True)
  assert _listing(work_dir) == before


def test_resume_with_another_standardisation_is_refused(trained):
  work_dir, config = trained
  # data.standardise changes what training computes, so it fixes the checkpoints: refused before the data load
  with pytest.raises(ConfigError) as error:
    sweep_run.run_sweep(_smoke(**{"data.root": config.data.root, "data.standardise": "image"}), work_dir, quiet=True)
  assert "data.standardise 'dataset' -> 'image'" in _one_line(error)


def test_a_duration_shorter_than_the_checkpoint_is_refused(trained):
  work_dir, config = trained
  with open(os.path.join(work_dir, "config.json"), encoding="utf-8") as f:
    saved_config = f.read()
  shorter = _smoke(**{"data.root": config.data.root, "train.num_steps": 2})
  with pytest.raises(ConfigError) as error:
    sweep_run.run_sweep(shorter, work_dir, quiet=True)
  assert "train.num_steps=2" in _one_line(error) and "step 3" in _one_line(error)
  with open(os.path.join(work_dir, "config.json"), encoding="utf-8") as f:
    assert f.read() == saved_config  # the refused config did not replace the checkpoints' one


def test_evaluate_refuses_what_the_sweep_refuses(trained):
  work_dir, config = trained
  with pytest.raises(ConfigError, match="config.loss.binarise_weight=inf"):
    sweep_run.evaluate_sweep(_smoke(**{"data.root": config.data.root, "loss.binarise_weight": float("inf")}),
                             work_dir, quiet=True)


def test_a_missing_section_is_called_missing_not_unknown(trained, tmp_path):
  work_dir, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(work_dir, copy)
  saved = workdir.load_config(copy).to_dict()
  del saved["eval"]
  with pytest.raises(ConfigError) as error:
    sweep_run.evaluate_sweep(ml_collections.ConfigDict(saved), copy, quiet=True)
  assert "config.eval" in _one_line(error) and "is missing" in _one_line(error)


# --- dataset checks ---------------------------------------------------------------------------------------------

def _image(path, pixels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  iio.imwrite(path, pixels)


def _random(seed=0, dtype=np.uint8):
  return np.random.default_rng(seed).integers(0, 200, (16, 16)).astype(dtype)


def test_a_folder_named_like_half_is_a_stress_time_and_collides_with_its_twin(tmp_path):
  for t in (".5", "1"):
    _image(str(tmp_path / "a" / t / "x.png"), _random())
  assert load_folder(tmp_path / "a").label_names == [".5", "1"]
  _image(str(tmp_path / "a" / "0.5" / "x.png"), _random())
  with pytest.raises(DataError, match="same stress time 0.5"):
    load_folder(tmp_path / "a")


@pytest.mark.parametrize("case", ["8_and_16_bit", "all_black", "constant", "linked_label", "linked_file",
                                  "one_label", "manifest_label_deleted"])
def test_a_dataset_that_cannot_train_is_refused_naming_the_folder(tmp_path, case):
  root = tmp_path / "sem"
  if case == "manifest_label_deleted":
    synthetic.generate(str(root), preset="tiny", workers=1)
    shutil.rmtree(root / "images" / "2")
    expected = r"missing \['2'\].*manifest.json"
  else:
    _image(str(root / "0" / "a.png"), _random(0))
    _image(str(root / "1" / "b.png"), _random(1))
    expected = {
        "8_and_16_bit": "uint16 pixels but .* uint8",
        "all_black": "every pixel of every image is 0",
        "constant": "every pixel of every image is 7",
        "linked_label": "same file",
        "linked_file": "same file",
        "one_label": "one stress-time folder",
    }[case]
    if case == "8_and_16_bit":
      _image(str(root / "1" / "c.png"), _random(2, np.uint16) * 300)
    elif case in ("all_black", "constant"):
      level = 0 if case == "all_black" else 7
      for name in ("0/a.png", "1/b.png"):
        _image(str(root / name), np.full((16, 16), level, np.uint8))
    elif case == "linked_label":
      os.symlink(root / "0", root / "2")
    elif case == "linked_file":
      os.symlink(root / "0" / "a.png", root / "1" / "a_again.png")
    elif case == "one_label":
      shutil.rmtree(root / "1")
  with pytest.raises(DataError, match=expected) as error:
    load_folder(root)
  assert str(root) in _one_line(error)


# --- output paths -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["empty", "a_file", "under_a_file", "read_only", "inside_data"])
def test_an_unusable_workdir_is_refused_before_any_work(tmp_path, data_roots, case):
  (tmp_path / "file").write_text("not a folder")
  work_dir = {"empty": "", "a_file": str(tmp_path / "file"), "under_a_file": str(tmp_path / "file" / "w"),
              # /proc refuses new files even to root, like a read-only mount
              "read_only": "/proc/copper_jax_w", "inside_data": os.path.join(data_roots[0], "images", "w")}[case]
  words = {"empty": "is empty", "a_file": "is a file", "under_a_file": "is a file", "read_only": "cannot write",
           "inside_data": "inside the input"}[case]
  config = _smoke(**{"data.root": data_roots[0]})
  before = _listing(data_roots[0])
  with pytest.raises(UserError) as error:
    sweep_run.run_sweep(config, work_dir, quiet=True)
  assert "--workdir" in _one_line(error) and words in _one_line(error)
  assert (tmp_path / "file").read_text() == "not a folder" and _listing(data_roots[0]) == before


def _fake_sweep_workdir(path):
  workdir.claim(path, workdir.SWEEP, "--workdir")
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(_smoke().to_dict(), f, default=list)


def test_predict_never_writes_among_its_inputs(tmp_path):
  work_dir = str(tmp_path / "w")
  _fake_sweep_workdir(work_dir)
  images = tmp_path / "images"
  _image(str(images / "a.png"), _random())
  (images / "a_overlay.png").write_bytes(b"the user's own file")
  for out, inputs in ((images, [str(images)]), (tmp_path, [str(images)]), (images, [str(images / "a.png")])):
    with pytest.raises(UserError, match="--out=.* (is|holds) the input") as error:
      predict.predict(work_dir, inputs, str(out), quiet=True)
    _one_line(error)
  assert (images / "a_overlay.png").read_bytes() == b"the user's own file"
  assert sorted(os.listdir(images)) == ["a.png", "a_overlay.png"]


def test_predict_on_an_empty_folder_names_the_folder_not_a_missing_list(tmp_path):
  work_dir = str(tmp_path / "w")
  _fake_sweep_workdir(work_dir)
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError) as error:
    predict.predict(work_dir, [str(tmp_path / "empty")], str(tmp_path / "out"), quiet=True)
  assert "no image files" in _one_line(error) and "skipped.txt" not in _one_line(error)


def test_predict_after_a_fully_diverged_sweep_says_so(trained, tmp_path):
  work_dir, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(work_dir, copy)
  summary = workdir.read_json(os.path.join(copy, "sweep.json"))
  summary.update(ranking=[], verdict="every hypothesis diverged; nothing can be ranked")
  workdir.atomic_write_json(os.path.join(copy, "sweep.json"), summary)
  with pytest.raises(UserError) as error:
    predict.SweepPredictor(copy)
  assert "diverged" in _one_line(error) and "no ranking" not in _one_line(error)


# --- the blind-test server --------------------------------------------------------------------------------------

@pytest.fixture
def server(trained, monkeypatch):
  monkeypatch.setattr(blind_server._Handler, "timeout", 1.0)  # pylint: disable=protected-access
  server = blind_server.serve(trained[0], port=0, quiet=True)
  yield server
  server.shutdown()
  server.server_close()


def _raw_post(server, headers: dict, body: bytes, timeout=10.0):
  """(status, reply body) of a hand-made POST; (None, b"") when the server closed without a reply."""
  with socket.create_connection(("127.0.0.1", server.server_port), timeout=timeout) as sock:
    lines = ["POST /api/answer HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    reply = http.client.HTTPResponse(sock)
    try:
      reply.begin()
    except (http.client.RemoteDisconnected, ConnectionResetError):
      return None, b""
    return reply.status, reply.read()


ANSWER = json.dumps({"expert": "ada", "position": 0, "label": 1}).encode()


@pytest.mark.parametrize("headers, body, status", [
    ({"Content-Type": "application/json", "Content-Length": "2"}, b"[]", 400),       # JSON, not an object
    ({"Content-Type": "application/json", "Content-Length": "4"}, b"1234", 400),
    ({"Content-Type": "application/json", "Content-Length": "abc"}, ANSWER, 400),
    ({"Content-Type": "application/json", "Content-Length": "-1"}, ANSWER, 400),     # once: read to the end
    ({"Content-Type": "application/json", "Content-Length": "99999999"}, ANSWER, 413),
    ({"Content-Type": "application/json"}, ANSWER, 411),
    ({"Content-Type": "text/plain", "Content-Length": str(len(ANSWER))}, ANSWER, 415),
])
def test_a_malformed_answer_gets_one_error_reply_and_saves_nothing(trained, server, headers, body, status):
  got, reply = _raw_post(server, headers, body)
  assert got == status and "error" in json.loads(reply)
  assert not os.path.exists(os.path.join(trained[0], blind_session.FOLDER, "ada.json"))


def test_a_body_shorter_than_announced_times_out_unsaved(trained, server):
  got, _ = _raw_post(server, {"Content-Type": "application/json", "Content-Length": "40"}, ANSWER[:10])
  assert got is None  # the server gave up after its read timeout instead of waiting for ever
  assert not os.path.exists(os.path.join(trained[0], blind_session.FOLDER, "ada.json"))
  other = json.dumps({"expert": "cy", "position": 0, "label": 1}).encode()
  assert _raw_post(server, {"Content-Type": "application/json", "Content-Length": str(len(other))}, other)[0] == 200


def test_a_port_out_of_range_is_one_line(trained):
  with pytest.raises(UserError, match="port 70000"):
    blind_server.serve(trained[0], port=70000)


def test_a_truncated_answer_file_is_skipped_and_the_others_scored(trained, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns(blind_session.FOLDER))
  test = blind_session.BlindTest(copy)
  for expert in ("ada", "bob"):
    test.answer(expert, 0, 1)
  path = test.path("bob")
  with open(path, "rb") as f:
    text = f.read()
  with open(path, "wb") as f:
    f.write(text[:len(text) // 2])
  summary = blind_scores.expert_results(copy)
  assert list(summary["experts"]) == ["ada"]
  assert len(summary["skipped"]) == 1 and "bob.json" in summary["skipped"][0]
  with pytest.raises(UserError, match="not a readable answer file"):
    test.answer("bob", 1, 1)


# --- what a workdir holds: whose it is, and what is read back from it ---------------------------------------------

def _tree(folder) -> dict:
  return {os.path.relpath(os.path.join(p, n), folder): open(os.path.join(p, n), "rb").read()
          for p, _, names in os.walk(folder) for n in names}


def test_a_project_folder_given_as_workdir_is_refused_and_its_files_kept(tmp_path, data_roots):
  project = tmp_path / "project"
  (project / "tables").mkdir(parents=True)
  for name, text in {"config.json": '{"my": "settings"}', "report.html": "<h1>my report</h1>",
                     "tables/ranking.csv": "my,ranking\n"}.items():
    (project / name).write_text(text)
  before = _tree(project)
  for run in (lambda: sweep_run.run_sweep(_smoke(**{"data.root": data_roots[0]}), str(project), quiet=True),
              lambda: predict.predict(str(project), [data_roots[0]], str(tmp_path / "out"), quiet=True)):
    with pytest.raises(UserError) as error:
      run()
    assert "project" in _one_line(error)
  assert _tree(project) == before and not (tmp_path / "out").exists()


def _copy_of(trained, tmp_path) -> str:
  copy = str(tmp_path / "copy")
  shutil.copytree(trained[0], copy)
  return copy


def test_evaluate_with_splits_json_deleted_refuses_instead_of_re_splitting(trained, tmp_path):
  copy = _copy_of(trained, tmp_path)
  os.remove(os.path.join(copy, "splits.json"))
  before = _tree(copy)
  with pytest.raises(DataError) as error:
    sweep_run.evaluate_sweep(workdir.load_config(copy), copy, quiet=True)
  assert "splits.json is missing" in _one_line(error) and "restore it" in _one_line(error)
  assert _tree(copy) == before  # no new split, no rewritten results


@pytest.mark.parametrize("damage", ["nan_std", "one_time", "not_json"])
def test_a_damaged_data_summary_is_named_not_used(trained, tmp_path, damage):
  copy = _copy_of(trained, tmp_path)
  path = os.path.join(copy, "data_summary.json")
  summary = workdir.read_json(path)
  if damage == "not_json":
    open(path, "w").write("{")
  else:
    summary.update({"nan_std": {"std": float("nan")}, "one_time": {"stress_times": [0.0]}}[damage])
    open(path, "w").write(json.dumps(summary))
  image = os.path.join(trained[1].data.root, "images", "0", sorted(os.listdir(os.path.join(
      trained[1].data.root, "images", "0")))[0])
  with pytest.raises(UserError) as error:
    predict.predict(copy, [image], str(tmp_path / "out"), quiet=True)
  assert "data_summary.json" in _one_line(error) and "delete it" in _one_line(error)


def test_a_damaged_sweep_json_is_named(trained, tmp_path):
  copy = _copy_of(trained, tmp_path)
  open(os.path.join(copy, "sweep.json"), "w").write('{"ranking": ')
  with pytest.raises(UserError) as error:
    predict.SweepPredictor(copy)
  assert "sweep.json is not valid JSON" in _one_line(error) and "--member" in _one_line(error)


def test_a_workdir_from_before_the_ownership_mark_is_recognised_and_resumes(trained, tmp_path):
  copy = _copy_of(trained, tmp_path)
  os.remove(os.path.join(copy, workdir.MARK_FILE))
  assert workdir.kind_of(copy) == workdir.SWEEP  # by its lock and its sweep config.json
  config = trained[1]
  sweep_run.run_sweep(config, copy, quiet=True)  # the same command: resumes (nothing left to train) and reports
  assert workdir.read_mark(copy) == {"kind": "sweep", "format": 1, "made_by": "copper_jax",
                                     "recognised_from_earlier_version": True}
  with pytest.raises(UserError, match="is a sweep workdir, not a classifier workdir"):
    from copper_jax.classifier import run as classifier_run
    classifier_run.train_and_evaluate(classifier_configs.get_config("smoke"), copy, quiet=True)


def test_a_read_only_workdir_is_named_in_one_line_and_left_as_it_was(trained, tmp_path):
  """A finished workdir on a read-only mount (an archive, a shared drive): evaluating or resuming it says so in one
  line; its files are as they were."""
  import subprocess
  mount = str(tmp_path / "ro")
  os.makedirs(mount)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mount], check=False).returncode:
    pytest.skip("no tmpfs mount here (needs root)")
  try:
    copy = os.path.join(mount, "w")
    shutil.copytree(trained[0], copy)
    subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
    before = _tree(copy)
    for run in (lambda: sweep_run.evaluate_sweep(workdir.load_config(copy), copy, quiet=True),
                lambda: sweep_run.run_sweep(trained[1], copy, quiet=True)):
      with pytest.raises(UserError) as error:
        run()
      assert copy in _one_line(error) and ("cannot be written" in _one_line(error)
                                           or "cannot write" in _one_line(error))
    assert _tree(copy) == before
  finally:
    subprocess.run(["umount", "-l", mount], check=False)
