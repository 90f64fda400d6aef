"""`workdir/report.html`: one self-contained static page for experts (figures embedded, no network, inline JS).

Sections: the verdict, what the mask fraction is (and is not), run and data, the ranking with 95% intervals, the
paper's Figure 10, masks on held-out images with an opacity slider (and the classifier's CAM of the same image when
a classifier workdir is named), the learned g, the classifier's confusion matrix and the blind test of experts.

The mask viewer reads `workdir/overlays.npz`, written by `save_overlays` at the end of a sweep; without it the
report shows the static overlay figure instead.
"""
import base64
import dataclasses
import html
import io
import json
import os

import numpy as np

from copper_jax import members
from copper_jax.store import workdir
from copper_jax.viz import pixels

OVERLAYS_FILE = "overlays.npz"
# Longest side, in pixels, of the images embedded in the mask viewer; larger images are block-averaged.
VIEWER_SIDE = 512
TRUTH_RGBA = (0, 230, 255, 255)


def save_overlays(work_dir, summary, dataset, overlay_idx, masks_MxIxHxW) -> str:
  """`workdir/overlays.npz` for the report's mask viewer, at the viewer's resolution (at most VIEWER_SIDE pixels a
  side): the held-out images as display gray levels, the mask of seed 0 of every hypothesis (uint8, 255 =
  smoothed) and the true masks (uint8 {0, 1}) where known."""
  overlay_idx = np.asarray(overlay_idx, np.int64)
  masks_KxIxHxW = members.first_seed(np.asarray(masks_MxIxHxW), summary["num_seeds"])
  arrays = {
      "index": overlay_idx, "path": np.array([dataset.paths[i] for i in overlay_idx]),
      "stress_time": dataset.stress_times[dataset.labels[overlay_idx]],
      "hypotheses": np.array([h["name"] for h in summary["hypotheses"]]),
      "image": np.stack([_to_uint8(_shrink(pixels.display_gray(dataset.images[i]))) for i in overlay_idx]),
      "mask": np.stack([[_to_uint8(_shrink(m) * 255) for m in masks_IxHxW] for masks_IxHxW in masks_KxIxHxW]),
  }
  if dataset.masks is not None:
    arrays["truth"] = np.stack([(_shrink(dataset.masks[i]) >= 0.5) for i in overlay_idx]).astype(np.uint8)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  path = os.path.join(work_dir, OVERLAYS_FILE)
  workdir.atomic_write_bytes(path, buffer.getvalue())
  return path


def _png_uri(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _image(path, alt, css_class="figure"):
  with open(path, "rb") as f:
    uri = _png_uri(f.read())
  return f'<img class="{css_class}" alt="{html.escape(alt)}" src="{uri}">'


def _fmt(x, digits=4):
  return "n/a" if x is None else f"{x:.{digits}g}"


def _to_uint8(x):
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _shrink(image_HxW, side=VIEWER_SIDE):
  """(H, W, ...) block mean by the smallest integer factor that brings the longest side to at most `side` pixels."""
  factor = -(-max(image_HxW.shape[:2]) // side)
  if factor <= 1:
    return image_HxW
  H, W = (image_HxW.shape[0] // factor) * factor, (image_HxW.shape[1] // factor) * factor
  blocks = image_HxW[:H, :W].astype(np.float32).reshape(H // factor, factor, W // factor, factor,
                                                         *image_HxW.shape[2:])
  return blocks.mean(axis=(1, 3))


def _mask_png(mask_HxW_uint8) -> bytes:
  """RGBA: the overlay tint with alpha = mask, so the slider's opacity fades the whole mask at once."""
  rgba = np.empty((*mask_HxW_uint8.shape, 4), np.uint8)
  rgba[..., :3] = pixels.TINT_RGB.astype(np.uint8)
  rgba[..., 3] = mask_HxW_uint8
  return pixels.png_bytes(rgba)


def _truth_png(truth_HxW) -> bytes:
  """RGBA: the border of the true smoothed regions, transparent elsewhere."""
  inside = truth_HxW > 0
  border = np.zeros_like(inside)
  border[1:] |= inside[1:] != inside[:-1]
  border[:, 1:] |= inside[:, 1:] != inside[:, :-1]
  rgba = np.zeros((*inside.shape, 4), np.uint8)
  rgba[border] = TRUTH_RGBA
  return pixels.png_bytes(rgba)


def _ranking_table(summary):
  split = summary["rank_split"]
  head = ("<tr><th>rank</th><th>hypothesis</th><th>train error</th><th>val error [95%]</th>"
          "<th>test error [95%]</th><th>IoU smoothed (test)</th><th>mean IoU (test)</th></tr>")
  body = []
  rows = sorted((r for r in summary["hypotheses"] if not r.get("control")),
                key=lambda r: (r["rank"] is None, r["rank"] or 0))
  truth = summary.get("f_true", {}).get("closest_hypothesis")
  tied = set(summary.get("tied_with_leader", [])) | {summary.get("leader")}
  for r in rows:
    def cell(s):
      loss = r["loss"].get(s)
      if loss is None:
        return "<td>-</td>"
      return f"<td>{_fmt(loss['mean'])} [{_fmt(loss['ci95'][0])}, {_fmt(loss['ci95'][1])}]</td>"
    iou = r["iou"].get("test") or r["iou"].get(split) or {}
    name = html.escape(r["name"]) + (" <em>(closest to the true f)</em>" if r["name"] == truth else "")
    status = str(r["rank"]) if r["rank"] else "diverged"
    excess = r.get("excess_over_leader")
    if excess:
      name += (f'<br><span class="note">excess over {html.escape(str(summary.get("leader") or ""))}: '
               f'{_fmt(excess["mean"])} [{_fmt(excess["ci95"][0])}, {_fmt(excess["ci95"][1])}]</span>')
    train = r["loss"].get("train")
    css = ' class="lead"' if r["name"] in tied and not summary.get("distinguishable", False) else ""
    body.append(f"<tr{css}><td>{status}</td><td>{name}</td><td>{_fmt(train['mean']) if train else '-'}</td>"
                f"{cell('val')}{cell('test')}<td>{_fmt(iou.get('smoothed'), 3)}</td>"
                f"<td>{_fmt(iou.get('mean_iou'), 3)}</td></tr>")
  note = ('<p class="note">Shaded rows: the leader and the hypotheses the verdict could not tell from it (chosen on '
          'one held-out split, their paired interval of excess error on the other reaches zero); the data do not '
          'order them.</p>' if not summary.get("distinguishable", True) else "")
  if summary.get("evidence"):
    note += f'<p class="note">Intervals are over {html.escape(summary["evidence"]["text"])}.</p>'
    if summary["evidence"].get("note"):
      note += f'<p class="note">{html.escape(summary["evidence"]["note"])}</p>'
  return f"<table>{head}{''.join(body)}</table>{note}{_evidence_needed_table(summary)}"


def _evidence_needed_table(summary):
  """What would settle what the verdict left open (sweep.json's evidence_needed), next to the ranking."""
  rows = summary.get("evidence_needed") or []
  if not rows:
    return ""
  def count(v, cap):
    return str(v) if v is not None else f"more than {cap}"
  body = "".join(
      f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(r['against'])}</td>"
      f"<td>{count(r['units_per_label'], 500)} (has {r['have_units_per_label']})</td>"
      f"<td>{count(r['seeds'], 50)} (has {r['have_seeds']})</td><td>{html.escape(r['text'])}</td></tr>"
      for r in rows)
  return ('<h3>Evidence that would settle it</h3><table><tr><th>rival or control</th><th>against</th>'
          '<th>held-out units per stress time, at this run\'s seeds</th><th>seeds, at this run\'s units</th>'
          f'<th>in words</th></tr>{body}</table><p class="note">Each figure is where the interval is expected to '
          f'clear with {rows[0]["power"]:.0%} probability, projected from this run\'s own seed and image variation '
          '(a planning figure: docs/science.md, "The evidence needed").</p>')


def _control_section(summary):
  """The permuted-target control: what it is, its result in words, and each control member's figures."""
  control = summary.get("control") or {}
  if not control.get("ran"):
    return f'<p class="note">{html.escape(control.get("text", "No control ran."))}</p>'
  css = "caveat" if control.get("state") == "passed" else "alarm"
  rows = "".join(
      f"<tr><td>{html.escape(name)}</td><td>{_fmt(m['error'])}</td><td>{m['explained_share']:.0%} "
      f"[{m['ci95'][0]:.0%}, {m['ci95'][1]:.0%}]</td><td>{m['expected_if_local']:.0%}</td><td>{m['bar']:.0%}</td>"
      "</tr>" for name, m in control.get("per_member", {}).items())
  return (f'<p class="{css}">{html.escape(control["text"])}</p>'
          "<p>Each control member trains exactly like a hypothesis, on the linear targets put in a scrambled order "
          "of the stress times. A model that only tells smoothed from rough texture can reproduce no such order; "
          "such a model explains of a control about what an affine function of the leading curves explains "
          f"(column 'if local'). The control fires when one explains {control['margin']:.0%} more than that (the "
          "bar), and is inconclusive while the upper end of a 95% interval reaches the bar.</p>"
          f"<table><tr><th>control</th><th>{control['split']} error</th><th>share of its targets' variance "
          f"explained [95%]</th><th>if local</th><th>bar</th></tr>{rows}</table>")


def _run_table(summary):
  data, config = summary["data"], summary.get("config", {})
  model = config.get("model", {})
  train = config.get("train", {})
  duration = (f"{train.get('num_steps')} steps" if train.get("num_steps") else
              f"{train.get('num_epochs')} epochs (each covers every training image's area once)")
  rows = [
      ("data", f"{html.escape(str(data['root']))}"),
      ("images", f"{data['num_images']} of {data['image_shape'][0]} x {data['image_shape'][1]} pixels; split "
                 + ", ".join(f"{k} {v}" for k, v in sorted(data["split_sizes"].items()))),
      ("stress times", ", ".join(f"{t:g}" for t in summary["labels"]["stress_times"])),
      ("skipped files", html.escape("; ".join(data.get("skipped", []))) or "none"),
      ("model", f"segmentation net c={model.get('c')} d={model.get('d')} n={model.get('n')} N={model.get('N')}, "
                f"{model.get('norm')} norm; receptive field {summary['receptive_field']} pixels"),
      ("training", f"{duration} of {train.get('batch_size')} patches of {train.get('patch_size')} pixels, loss "
                   f"{html.escape(str(config.get('loss', {}).get('kind')))}; {summary['num_seeds']} seed(s) "
                   f"per hypothesis"),
      ("ranking", f"{html.escape(summary['ranking_measure'])}, on the {summary['rank_split']} split"),
  ]
  return "<table class=\"kv\">" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _search_section(summary):
  """The table of candidate nets the model search trained, and which it chose (copper_jax/sweep/search.py)."""
  table = summary.get("model_search")
  if not table:
    return ""
  rows = []
  for r in table["points"]:
    trained = r.get("status") == "trained"
    ci = r.get("control_ci95") if trained else None
    share = f"{_fmt(r['control_share'], 2)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]" if ci else "-"
    state = html.escape(str(r.get("control") if trained else f"{r.get('status')}: {r.get('reason')}"))
    patch = f"{r['patch_size']} x {r['batch_size']}" if "patch_size" in r else "-"
    rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{r['receptive_field']}</td><td>{patch}</td>"
                f"<td>{state}</td>"
                f"<td>{share}</td><td>{html.escape(str(r.get('best_hypothesis') or '-'))}</td>"
                f"<td>{_fmt(r.get('best_error'), 5)}</td><td>{_fmt(r.get('best_mean_iou'), 3)}</td>"
                f"<td>{'chosen' if r['name'] == table['chosen'] else ('kept' if r.get('kept') else 'no')}</td></tr>")
  return ("<h2>Segmentation net chosen by the data</h2>"
          f"<p>{html.escape(table['rule'][0].upper() + table['rule'][1:])}. Chosen: <b>{html.escape(str(table['chosen']))}"
          f"</b> ({html.escape(table['reason'])}).</p>"
          "<table><tr><th>candidate (c_d_n_N)</th><th>receptive field (px)</th><th>patch x batch</th>"
          "<th>control</th><th>control share "
          "[95%]</th><th>best fixed hypothesis</th><th>its error</th><th>its mean IoU</th><th></th></tr>"
          + "".join(rows) + "</table>")


def _mask_quality_section(summary):
  """Held-out mean IoU of the masks as trained, with test-time flips, averaged over seeds, and of the local-std
  filter that needs no training."""
  quality = summary.get("mask_quality")
  if not quality:
    return ""
  variants = ("single", "flips", "seed_ensemble", "flips_and_seeds")
  rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(v[k], 3)}</td>" for k in variants)
                 + "</tr>" for name, v in quality["mean_iou"].items())
  return (f"<p>Mean IoU against the true masks on {quality['num_images']} held-out ({quality['split']}) images: "
          f"a local standard-deviation filter ({quality['local_std_window_px']} px window, Otsu threshold per image, "
          f"no training) scores {_fmt(quality['local_std_filter']['mean_iou'], 3)}.</p>"
          "<table><tr><th>hypothesis</th><th>each seed's masks</th><th>test-time flips</th><th>mean over seeds"
          "</th><th>both</th></tr>" + rows + "</table>")


def _learned_table(summary):
  learned = summary["learned_g"]
  t = summary["labels"]["stress_times"]
  columns = [("learned g", learned["curve"])]
  if learned.get("isotonic_fit_of_train_masks"):
    columns.append(("isotonic fit of its masks", learned["isotonic_fit_of_train_masks"]))
  if "f_true" in summary:
    columns.append(("true f", summary["f_true"]["values"]))
  head = "<tr><th>t</th>" + "".join(f"<th>{html.escape(c)}</th>" for c, _ in columns) + "</tr>"
  body = "".join("<tr><td>" + f"{t[i]:g}</td>" + "".join(f"<td>{v[i]:.3f}</td>" for _, v in columns) + "</tr>"
                 for i in range(len(t)))
  return f"<table>{head}{body}</table>"


def _viewer(work_dir, summary, cams):
  """Held-out images with a mask layer: an opacity slider, a hypothesis menu, the true border, the CAM."""
  with np.load(os.path.join(work_dir, OVERLAYS_FILE)) as f:
    overlays = {k: f[k] for k in f.files}
  names = [str(n) for n in overlays["hypotheses"]]
  ranked = [n for n in summary["ranking"] if n in names] + [n for n in names if n not in summary["ranking"]]
  masks = {n: [_png_uri(_mask_png(m)) for m in overlays["mask"][names.index(n)]] for n in ranked}
  cam_note = ""
  if isinstance(cams, str):
    cams, cam_note = {}, f'<p class="note">No class activation maps: {html.escape(cams)}</p>'
  cams = {j: (_png_uri(pixels.png_bytes(_to_uint8(_shrink(rgb)))), caption) for j, (rgb, caption) in
          (cams or {}).items()}
  cells = []
  for j in range(len(overlays["path"])):
    image = _png_uri(pixels.png_bytes(overlays["image"][j]))
    truth = (f'<img class="truth layer" alt="true border" src="{_png_uri(_truth_png(overlays["truth"][j]))}">'
             if "truth" in overlays else "")
    stack = (f'<div class="stack"><img class="base" alt="held-out image {j}" src="{image}">'
             f'<img class="mask layer" alt="mask" data-image="{j}" src="{masks[ranked[0]][j]}">{truth}</div>')
    caption = f"t={float(overlays['stress_time'][j]):g}: {html.escape(str(overlays['path'][j]))}"
    cam = ""
    if j in cams:
      cam = (f'<figure><img class="base" alt="CAM of image {j}" src="{cams[j][0]}">'
             f'<figcaption>{html.escape(cams[j][1])}</figcaption></figure>')
    cells.append(f'<div class="pair"><figure>{stack}<figcaption>{caption}</figcaption></figure>{cam}</div>')
  options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in ranked)
  truth_box = ('<label><input type="checkbox" id="truth" checked> true border (cyan)</label>'
               if "truth" in overlays else "")
  cam_text = (" Right of each image: the class activation map of the classifier's predicted stress time (red: "
              "evidence for it, blue: against)." if cams else "")
  return f"""
<p>Orange: the mask (smoothed surface) of seed 0 of the chosen hypothesis over the held-out image.{cam_text}</p>
<div class="controls">
<label>hypothesis <select id="hypothesis">{options}</select></label>
<label>mask opacity <input type="range" id="opacity" min="0" max="100" value="60">
<span id="opacity-value">60%</span></label>
{truth_box}
</div>
{cam_note}
<div class="viewer">{''.join(cells)}</div>
<script type="application/json" id="mask-data">{json.dumps(masks)}</script>
"""


VIEWER_JS = """
(function () {
  const slider = document.getElementById('opacity');
  if (!slider) return;
  const masks = JSON.parse(document.getElementById('mask-data').textContent);
  const layers = document.querySelectorAll('img.mask');
  function setOpacity() {
    layers.forEach(function (m) { m.style.opacity = slider.value / 100; });
    document.getElementById('opacity-value').textContent = slider.value + '%';
  }
  slider.addEventListener('input', setOpacity);
  document.getElementById('hypothesis').addEventListener('change', function (e) {
    layers.forEach(function (m) { m.src = masks[e.target.value][Number(m.dataset.image)]; });
  });
  const truth = document.getElementById('truth');
  if (truth) truth.addEventListener('change', function () {
    document.querySelectorAll('img.truth').forEach(function (t) { t.style.display = truth.checked ? '' : 'none'; });
  });
  setOpacity();
})();
"""

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.kv th { background: #f3f3f3; white-space: nowrap; }
tr.lead { background: #fff4d6; }
img.figure { max-width: 100%; }
.verdict { font-size: 1.15em; background: #f3f3f3; padding: 0.6em; border-left: 5px solid #c60; }
.alarm { font-size: 1.1em; background: #ffe9e6; padding: 0.6em; border-left: 5px solid #c00; }
.caveat { background: #eef6ff; padding: 0.6em; border-left: 5px solid #369; }
.note { color: #555; font-size: 0.9em; }
.controls { margin: 0.5em 0; display: flex; gap: 2em; align-items: center; flex-wrap: wrap; }
.viewer { display: flex; flex-wrap: wrap; gap: 14px; }
.pair { display: flex; gap: 6px; }
.stack { position: relative; display: inline-block; line-height: 0; }
.stack img.base { display: block; width: 256px; image-rendering: pixelated; }
.stack img.layer { position: absolute; left: 0; top: 0; width: 100%; height: 100%; image-rendering: pixelated; }
figure { margin: 0; } figure > img.base { width: 256px; image-rendering: pixelated; }
figcaption { font-size: 0.75em; color: #444; max-width: 256px; overflow-wrap: anywhere; line-height: 1.3; }
pre { background: #f8f8f8; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
"""


@dataclasses.dataclass(frozen=True)
class ClassifierSection:
  """A classifier workdir shown next to the sweep, as its caller found it: its results.json (None when it has
  none), its CAMs of the mask viewer's images ({position: (uint8 RGB overlay, caption)}, or why there are none) and
  its grid search's table, if any."""
  workdir: str
  results: dict | None = None
  cams: dict | str | None = None
  grid_csv: str | None = None


@dataclasses.dataclass(frozen=True)
class ExpertSection:
  """One expert of the blind test: the headline of their scores and their figures (paths)."""
  name: str
  headline: str
  figures: tuple


def _classifier_section(section: ClassifierSection):
  """The classifier's headline numbers and its confusion and per-label figures, from its results.json."""
  classifier_dir, results = section.workdir, section.results
  if results is None:
    return f'<p class="note">No classifier results in {html.escape(classifier_dir)} (results.json).</p>'
  split = results.get("figures", {}).get("split", "test")
  s = results["splits"][split]
  text = (f"<p>Classifier in {html.escape(classifier_dir)}, {split} split of {s['num_images']} images: accuracy "
          f"{_fmt(s['accuracy'], 3)}, mean absolute error {_fmt(s['mae_label_steps'], 3)} label steps, Spearman "
          f"{_fmt(s['spearman'], 3)}.</p>")
  figures = "".join(_image(os.path.join(classifier_dir, results["figures"][k]), k)
                    for k in ("confusion", "per_label") if k in results.get("figures", {}))
  return text + figures


def _blind_test_section(experts):
  """Each expert's headline and figures."""
  parts = []
  for expert in experts:
    parts.append(f"<h3>{html.escape(expert.name)}</h3><p>{html.escape(expert.headline)}</p>")
    parts.extend(_image(path, os.path.basename(path)) for path in expert.figures)
  return "".join(parts)


def _training_section(work_dir, summary):
  """The loss curves drawn from metrics.jsonl, when the sweep wrote them."""
  path = summary.get("figures", {}).get("loss_curves")
  if not path or not os.path.exists(os.path.join(work_dir, path)):
    return ""
  return ("<h2>Training curves</h2><p>Loss per hypothesis against step, each seed thin and their mean thick, "
          "from metrics.jsonl (which also records wall time and steps per second). A curve still falling at the "
          "last step has not converged; its ranking may change with more training.</p>"
          + _image(os.path.join(work_dir, path), "Loss curves"))


def _tables_section(summary, more_tables):
  """Links to the CSV tables beside the report, for a spreadsheet: the sweep's, then `more_tables`."""
  described = {
      "ranking": "the ranking: each hypothesis's error per split with its 95% interval, its role (hypothesis, "
                 "learned, control) and its excess over the leader",
      "mean_masks": "mean mask fraction (on g's scale) per hypothesis, split and stress time, with its target g(t)",
      "learned_g": "the learned g per stress time, per seed, and the isotonic fit of its masks",
  }
  links = [(rel, described.get(name, name)) for name, rel in summary.get("tables", {}).items()]
  links += list(more_tables)
  if not links:
    return ""
  items = "".join(f'<li><a href="{html.escape(rel)}">{html.escape(os.path.basename(rel))}</a>: {html.escape(text)}'
                  f"</li>" for rel, text in links)
  return f"<h2>Tables for spreadsheets</h2><p>CSV files beside this report (open them in Excel or LibreOffice):</p><ul>{items}</ul>"


def write_sweep_report(work_dir, summary, classifier: ClassifierSection | None = None, experts=(),
                       more_tables=()) -> str:
  """Writes report.html from sweep.json's content, the figures it names and, when present, overlays.npz, with
  the finished sections its caller hands it: a classifier shown next to the sweep, the blind test's experts
  (`ExpertSection`s) and more tables to link, [(path, what it holds)].
  """
  config = summary.get("config", {})
  cams = classifier.cams if classifier else None
  figures = summary.get("figures", {})
  figure = lambda key, title: (_image(os.path.join(work_dir, figures[key]), title) if key in figures else "")
  truth = ""
  if "f_true" in summary:
    f = summary["f_true"]
    if f["confounded"]:
      truth = ("<p>Negative control: a synthetic set whose stress time is carried by a global blur while the "
               "smoothed area stays the same for every label. No hypothesis of area is true here; a sound "
               "analysis does not single one out, and its masks do not follow the smoothed regions.</p>")
    else:
      truth = (f"<p>Synthetic data with known ground truth: f_true = <b>{html.escape(str(f['name']))}</b>. "
               f"Closest fixed hypothesis on the hypotheses' pinned scale: "
               f"<b>{html.escape(f['closest_hypothesis'])}</b>, ranked {f['closest_rank']} among the fixed "
               "hypotheses.</p>")
  baseline = summary.get("iou_all_smoothed_baseline")
  baseline_text = (f'<p class="note">For comparison, a mask that calls everything smoothed scores mean IoU '
                   f"{_fmt(baseline['mean_iou'], 3)}.</p>" if baseline else "")
  if os.path.exists(os.path.join(work_dir, OVERLAYS_FILE)):
    masks = _viewer(work_dir, summary, cams)
  else:
    masks = figure("overlays", "Masks on held-out images")
  learned = ""
  if "learned_g" in summary:
    better = (" It fits clearly better than every listed hypothesis (paired 95% interval below zero): none of the "
              "listed hypotheses is adequate, and the table below gives the curve the data prefer."
              if summary.get("adequacy", {}).get("learned_fits_better") else "")
    learned = ("<h2>The learned hypothesis</h2><p>A monotone g learned jointly with its model, endpoints pinned. "
               f"Where it follows the isotonic fit of its own masks, model and curve agree.{better}</p>"
               + figure("learned_g", "learned g") + _learned_table(summary))
  classifier_html = (f"<h2>Stress-time classifier</h2>{_classifier_section(classifier)}" if classifier else "")
  experts_html = _blind_test_section(experts)
  experts_html = f"<h2>Blind test of experts</h2>{experts_html}" if experts_html else ""
  page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>copper_jax sweep report</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{STYLE}</style></head><body>
<h1>Hypothesis sweep: which g(t) describes the smoothed area?</h1>
<p class="verdict">{html.escape(summary['verdict'])}</p>
<h2>Does the model read the smoothed area? The permuted-target control</h2>
{_control_section(summary)}
{truth}
<p class="caveat"><b>What the mask fraction is.</b> {html.escape(summary['what_the_mask_is'])}</p>
<h2>Run and data</h2>
{_run_table(summary)}
<h2>Ranking with 95% intervals</h2>
{_ranking_table(summary)}
{baseline_text}
{_mask_quality_section(summary)}
{_search_section(summary)}
{figure('ranking', 'Ranking with 95% intervals')}
<h2>Mean mask against stress time (Figure 10)</h2>
<p>Per hypothesis, the mean mask of each split against t, over its target curve g(t): a hypothesis the model can
follow has its points on its curve. Mask fractions are on the hypothesis's scale (every g is pinned to 0 at the
first stress time and 1 at the last), not absolute smoothed areas.</p>
{figure('curves', 'Mean mask against stress time')}
<h2>Masks on held-out images (Figure 9)</h2>
{masks}
{learned}
{_training_section(work_dir, summary)}
{classifier_html}
{experts_html}
{_tables_section(summary, more_tables)}
<h2>Configuration</h2>
<details><summary>config.json of the run</summary>
<pre>{html.escape(json.dumps(config, indent=1, sort_keys=True))}</pre></details>
<script>{VIEWER_JS}</script>
</body></html>
"""
  path = os.path.join(work_dir, "report.html")
  workdir.atomic_write_text(path, page)
  return path
