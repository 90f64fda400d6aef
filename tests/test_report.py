"""The sweep report: self-contained, complete, and rendered by headless Chromium without console errors."""
import html
import json
import os
import re
import shutil

import numpy as np
import pytest

from configs import classifier as classifier_configs
from configs import sweep as sweep_configs
from copper_jax.classifier import run as classifier
from copper_jax.data.prepare import prepare_data
from copper_jax.data.splits import pick_overlay_images
from copper_jax.store import workdir
from copper_jax.sweep import program as sweep_program
from copper_jax.sweep import results as sweep_results
from copper_jax.sweep import run as sweep
from copper_jax.viz import report
from tests.browser import Browser, require_chromium

SCREENSHOT = "report_screenshot.png"


def _save_overlays(work_dir, summary):
  """What the end of a sweep does for the mask viewer: the held-out images' masks through the sweep's program."""
  config = workdir.load_config(work_dir)
  dataset, split = prepare_data(config, work_dir)
  built = sweep_program.build(config, dataset)
  states, _ = sweep_program.restore(work_dir, built)
  chosen = pick_overlay_images(dataset.labels, split["test"], config.eval.num_overlays)
  masks = sweep.overlay_masks(built, states, dataset, chosen, config.eval.batch_size)
  report.save_overlays(work_dir, summary, dataset, chosen, masks)
  return dataset, chosen, masks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A finished smoke sweep with its overlays, and a briefly trained classifier on the same synthetic set."""
  sweep_dir = str(tmp_path_factory.mktemp("sweep"))
  summary = sweep.run_sweep(sweep_configs.get_config("smoke"), sweep_dir, quiet=True)
  config = classifier_configs.get_config("smoke")
  config.train.num_epochs = 2
  config.train.eval_every_epochs = 1
  config.eval.num_cam = 0
  clf_dir = str(tmp_path_factory.mktemp("clf"))
  classifier.train_and_evaluate(config, clf_dir, quiet=True)
  return sweep_dir, summary, clf_dir


def _external_references(page: str) -> list:
  """Every src/href that would reach outside the page: anything but data: URIs, in-page anchors and links to the
  CSV tables beside the report (a link is followed only when clicked, and stays in the workdir)."""
  return [u for u in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
          if not u.startswith(("data:", "#")) and not (u.endswith(".csv") and ":" not in u and ".." not in u)]


def _table_links(page: str) -> list:
  return [u for u in re.findall(r'href\s*=\s*"([^"]*)"', page) if u.endswith(".csv")]


def test_without_overlays_the_report_shows_the_static_figure(runs, tmp_path):
  sweep_dir, summary, _ = runs
  copy = tmp_path / "sweep"
  shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "data", report.OVERLAYS_FILE))
  page = open(report.write_sweep_report(str(copy), summary)).read()
  assert 'id="opacity"' not in page and 'alt="Masks on held-out images"' in page
  assert _external_references(page) == []


def test_report_is_complete_and_self_contained(runs):
  sweep_dir, summary, clf_dir = runs
  dataset, chosen, masks = _save_overlays(sweep_dir, summary)
  page = open(sweep.write_report(sweep_dir, summary, classifier_dir=clf_dir)).read()
  assert _external_references(page) == []
  assert "Content-Security-Policy" in page  # the browser itself refuses any network request
  for text in (html.escape(summary["verdict"]), html.escape(sweep_results.WHAT_THE_MASK_IS), "Figure 10", "Figure 9",
               "The learned hypothesis", "Stress-time classifier", "receptive field 10 pixels", "Training curves",
               'alt="Loss curves"', "Tables for spreadsheets"):
    assert text in page, text
  assert sorted(_table_links(page)) == ["tables/learned_g.csv", "tables/mean_masks.csv", "tables/ranking.csv"]
  for h in summary["hypotheses"]:
    assert f"<td>{h['name']}" in page.replace(" <em>(closest to the true f)</em>", "")
  with np.load(os.path.join(sweep_dir, report.OVERLAYS_FILE)) as f:
    assert f["mask"].shape == (len(summary["hypotheses"]), len(chosen), *dataset.image_shape)
    np.testing.assert_array_equal(f["mask"][0], np.rint(masks[0] * 255).astype(np.uint8))
    assert list(f["path"]) == [dataset.paths[i] for i in chosen]
  data = json.loads(re.search(r'id="mask-data">(.*?)</script>', page, re.S)[1])
  # The menu offers the ranked hypotheses first, then the controls (and any diverged member), each with its masks.
  assert list(data) == summary["ranking"] + [h["name"] for h in summary["hypotheses"]
                                             if h["name"] not in summary["ranking"]]
  assert all(len(v) == len(chosen) for v in data.values())
  assert page.count('alt="CAM of image') == len(chosen)


def test_report_renders_in_chromium_and_the_slider_works(runs, tmp_path):
  require_chromium()
  sweep_dir, summary, clf_dir = runs
  if not os.path.exists(os.path.join(sweep_dir, report.OVERLAYS_FILE)):
    _save_overlays(sweep_dir, summary)
  path = sweep.write_report(sweep_dir, summary, classifier_dir=clf_dir)
  with Browser(width=1200, height=3000) as browser:
    browser.open(f"file://{path}")
    assert browser.eval("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert browser.eval("document.querySelector('img[alt=\"Loss curves\"]').naturalWidth") > 300
    links = browser.eval("[...document.querySelectorAll('a')].map(a => a.href)")
    assert len(links) == 3 and all(os.path.exists(link[len("file://"):]) for link in links)
    assert browser.eval("document.querySelector('h1').textContent").startswith("Hypothesis sweep")
    opacity = "getComputedStyle(document.querySelector('img.mask')).opacity"
    assert float(browser.eval(opacity)) == pytest.approx(0.6)
    # A real click near the left end of the slider lowers the mask's opacity.
    browser.eval("window.scrollTo(0, 0)")
    box = browser.eval("(() => { const s = document.getElementById('opacity'); s.scrollIntoView({block: 'center'}); "
                       "const r = s.getBoundingClientRect(); return [r.x + 0.1 * r.width, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
      browser.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                "clickCount": 1})
    assert float(browser.eval(opacity)) < 0.3
    assert browser.eval("document.getElementById('opacity-value').textContent").endswith("%")
    # Choosing another hypothesis swaps the mask images.
    before = browser.eval("document.querySelector('img.mask').src")
    other = summary["ranking"][-1]
    browser.eval(f"(() => {{ const s = document.getElementById('hypothesis'); s.value = {json.dumps(other)}; "
                 "s.dispatchEvent(new Event('change')); })()")
    assert browser.eval("document.querySelector('img.mask').src") != before
    browser.click("#truth")
    assert browser.eval("getComputedStyle(document.querySelector('img.truth')).display") == "none"
    browser.eval("window.scrollTo(0, 0)")
    browser.screenshot(str(tmp_path / SCREENSHOT))
    assert browser.errors == []
  assert os.path.getsize(tmp_path / SCREENSHOT) > 50_000


def test_a_broken_classifier_workdir_leaves_a_note_not_a_crash(runs, tmp_path):
  sweep_dir, summary, _ = runs
  if not os.path.exists(os.path.join(sweep_dir, report.OVERLAYS_FILE)):
    _save_overlays(sweep_dir, summary)
  copy = tmp_path / "sweep"
  shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "data"))
  page = open(sweep.write_report(str(copy), summary, classifier_dir=str(tmp_path / "nothing"))).read()
  assert "No class activation maps" in page and "No classifier results" in page
