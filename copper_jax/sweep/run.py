"""The main job: train a family of hypotheses g(t) side by side, evaluate them on held-out images, report.

`run_sweep(config, workdir)` is what `launch/sweep.py` calls, `evaluate_sweep(config, workdir)` what
`launch/evaluate.py` calls. The program itself (steps, member table, restore) is `sweep.program`; the statistics
are `sweep.results`; this module is the job around them: the training loop, evaluation and the files it writes.
"""
import copy
import os

import numpy as np

from copper_jax import config_rules, determinism, device_memory, members, preemption, processes, run_config
from copper_jax import masks as masks_lib
from copper_jax.blind_test import scores as blind_scores
from copper_jax.classifier import maps as classifier_maps
from copper_jax.data import folder, sampler, splits
from copper_jax.data.prepare import check_patch_fits, prepare_data, prepare_training_data
from copper_jax.errors import CheckpointError, UserError
from copper_jax.models import analysis
from copper_jax.store import checkpoint, workdir
from copper_jax.store import tables
from copper_jax.store.logs import LateFetch, MetricWriter, Progress, is_time, log, read_metrics, truncate_after
from copper_jax.sweep import program as program_lib
from copper_jax.sweep import results

SWEEP_FILE = "sweep.json"


def train(config, work_dir: str, dataset, split, hyps=None, quiet: bool = False):
  """Trains (or resumes) every member; returns the built sweep and the final stacked states."""
  sweep = program_lib.build(config, dataset, hyps, num_train_images=len(split["train"]))
  program, member_arrays, total = sweep.program, sweep.member_arrays, sweep.total_steps
  states, start = program_lib.restore(work_dir, sweep)
  # Metrics a killed run wrote after its last checkpoint (all of them, if it saved none) are dropped.
  truncate_after(work_dir, start)
  if states is None:
    states = program.init_states()
  else:
    log(f"resuming the sweep from step {start} of {total}", quiet)

  patches = sampler.PatchSampler(dataset, split["train"], config.train.patch_size, config.train.batch_size,
                                 seed=config.seed, flips=config.train.flips, rot90=config.train.rot90)
  train_step = program.train_step
  if start < total:
    # XLA's own figure for the whole lifted step, activations included, before any step runs; the compiled
    # program is then the one that trains, so this costs no second compile.
    first = members.place(patches.batch(start), program.shared_sharding)
    train_step = program.train_step.lower(states, member_arrays, first).compile()
    device_memory.check_memory(
        "num_seeds", config.num_seeds, device_memory.compiled_bytes(train_step), device_memory.available_memory_bytes(),
        "XLA's memory analysis of the training step: lower num_seeds, the number of hypotheses or train.batch_size")
  writer = MetricWriter(work_dir, quiet=True, resume_step=start)  # the progress bar shows the mean loss; the file has them all
  progress = Progress(total, "sweep", quiet=quiet, initial=start)
  names = [f"{sweep.hypotheses[k].name}/seed{s}" for k, s in sweep.rows]

  def write_metrics(step, metrics):
    metrics = processes.to_host(metrics)
    loss_M = metrics["loss_sum"] / np.maximum(metrics["count"], 1.0)
    scalars = {f"train/loss/{name}": float(loss) for name, loss in zip(names, loss_M)}
    scalars["train/loss_mean"] = float(np.mean(loss_M))
    scalars["train/diverged_members"] = int(np.sum(metrics["diverged"]))
    if program.consistency_weight > 0:  # runs without the term keep their metrics.jsonl as it was
      consistency_M = metrics["consistency_sum"] / np.maximum(metrics["count"], 1.0)
      scalars["train/consistency_mean"] = float(np.mean(consistency_M))
    writer.write(step, scalars)
    progress.set_postfix(loss=float(np.mean(loss_M)))

  late = LateFetch(write_metrics)
  ckpt = checkpoint.Checkpointer(os.path.join(work_dir, "checkpoints"))
  try:
    with preemption.StopOnSignal() as stop:
      for step, batch in patches.iterate(start, total - start):
        states, metrics = train_step(states, member_arrays, members.place(batch, program.shared_sharding))
        done = step + 1
        late.dispatched(done, metrics, keep=is_time(done, config.train.log_every, total))
        progress.update(1)
        stopping = stop.due(done)  # asked at every step: with several processes it is a sync point
        if stopping or is_time(done, config.train.checkpoint_every, total):
          late.flush()
          ckpt.save(done, states, dict(sweep.meta, step=done))
        if stopping:
          raise preemption.Preempted(stop.signal_name, done, total, ckpt.directory)
  finally:
    progress.close()
    writer.close()
    ckpt.close()
  return sweep, states


def _device_batches(program, dataset, indices, batch_size, with_masks=False):
  """Whole-image batches placed for the program, with the mask of real (not padding) images and their indices."""
  for batch in sampler.whole_image_batches(dataset, indices, batch_size, with_masks=with_masks):
    keep = batch["weight"] > 0
    placed = members.place({k: v for k, v in batch.items() if k != "index"}, program.shared_sharding)
    yield placed, keep, batch


def evaluate_members(sweep, states, dataset, split, batch_size: int):
  """Per-member, per-image results on every split: mask fraction, target and pixel counts against truth."""
  with_masks = dataset.masks is not None
  raw = {}
  for name in ("train", "val", "test"):
    idx = split.get(name)
    if idx is None or len(idx) == 0:
      continue
    parts = []
    for placed, keep, batch in _device_batches(sweep.program, dataset, idx, batch_size, with_masks):
      out = processes.to_host(sweep.program.eval_step(states, sweep.member_arrays, placed))
      parts.append({"index": batch["index"][keep], "label": batch["label"][keep],
                    **{k: v[:, keep] for k, v in out.items()}})
    raw[name] = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
  return raw


def overlay_masks(sweep, states, dataset, indices, batch_size):
  """Masks of every member for chosen images: (M, len(indices), H, W) float32."""
  masks = [np.asarray(processes.to_host(sweep.program.predict_masks(states, sweep.member_arrays, placed)))[:, keep]
           for placed, keep, _ in _device_batches(sweep.program, dataset, indices, batch_size)]
  return np.concatenate(masks, axis=1)


def held_out_mask_quality(sweep, states, dataset, indices, batch_size) -> dict:
  """Mean IoU against the true masks on held-out images, per hypothesis, of its masks as trained ("single", every
  seed's masks pooled), averaged over the four test-time flips ("flips"), averaged over its seeds
  ("seed_ensemble") and both ("flips_and_seeds"); and of the training-free local-std filter (`copper_jax.masks`).
  Controls are left out: their masks answer scrambled targets."""
  num_seeds = sweep.program.num_seeds
  ranked = [k for k, h in enumerate(sweep.hypotheses) if not h.control]
  counts = {(k, variant): None for k in ranked for variant in ("single", "flips", "seed_ensemble", "flips_and_seeds")}
  baseline = None
  for _, keep, batch in _device_batches(sweep.program, dataset, indices, batch_size, with_masks=True):
    truth = batch["mask"][keep]

    def predict(images_BxHxW):
      placed = members.place({"image": np.ascontiguousarray(images_BxHxW)[..., None], "label": batch["label"],
                              "weight": batch["weight"]}, sweep.program.shared_sharding)
      return np.asarray(processes.to_host(sweep.program.predict_masks(states, sweep.member_arrays, placed)))

    images = batch["image"][..., 0]
    plain_MxBxHxW = predict(images)[:, keep]
    flipped_MxBxHxW = masks_lib.flip_average(predict, images)[:, keep]
    for k in ranked:
      rows = members.hypothesis_members(k, num_seeds)
      for variant, masks_SxBxHxW in (("single", plain_MxBxHxW[rows]), ("flips", flipped_MxBxHxW[rows]),
                                     ("seed_ensemble", plain_MxBxHxW[rows].mean(0, keepdims=True)),
                                     ("flips_and_seeds", flipped_MxBxHxW[rows].mean(0, keepdims=True))):
        counts[(k, variant)] = masks_lib.add_counts(counts[(k, variant)], masks_lib.confusion(masks_SxBxHxW, truth))
    baseline = masks_lib.add_counts(baseline, masks_lib.confusion(masks_lib.local_std_masks(images[keep]), truth))
  per_hypothesis = {sweep.hypotheses[k].name: {variant: masks_lib.mean_iou(counts[(k, variant)])["mean_iou"]
                                               for variant in ("single", "flips", "seed_ensemble", "flips_and_seeds")}
                    for k in ranked}
  return {"num_images": int(len(indices)), "local_std_filter": masks_lib.mean_iou(baseline),
          "local_std_window_px": masks_lib.LOCAL_STD_WINDOW, "mean_iou": per_hypothesis}


def model_from_grid(config, quiet: bool = False):
  """`config`, or a copy whose model.c/d/n/N are those of the best classifier of the grid search named by
  `config.model_from_grid`: the paper extends that baseline into its segmentation net."""
  grid_dir = config.model_from_grid
  if not grid_dir:
    return config
  from copper_jax.classifier import grid_search  # only when a grid search is named
  best = grid_search.best_architecture(grid_dir)
  config = copy.deepcopy(config)
  config.model.update(best)
  log(f"segmentation net from the best classifier of {grid_dir}: " + ", ".join(f"{k}={v}" for k, v in best.items()),
      quiet)
  return config


def run_sweep(config, work_dir: str, quiet: bool = False, sections: dict | None = None) -> dict:
  """Trains, evaluates and reports a hypothesis sweep; returns the content of `workdir/sweep.json`. `sections`:
  finished parts of sweep.json from a job that composes sweeps (e.g. the model search's table), kept as given."""
  hyps = program_lib.validate_config(config)
  if config.model_from_grid:
    config = model_from_grid(config, quiet)
    program_lib.validate_config(config)  # the grid's net against the rest of the config
  work_dir = workdir.check_output_folder(work_dir, "--workdir", inputs=[config.data.root])
  check_patch_fits(config)
  program_lib.check_memory(config, len(hyps))
  with workdir.locked_start(work_dir, workdir.SWEEP) as start:
    # Every check that needs the data or the workdir's checkpoints comes before the run writes a file of its own.
    run_config.check_resume(work_dir, config, config_rules.SWEEP, "a sweep")
    dataset, split = prepare_training_data(config, work_dir)
    # The target table needs the stress times: a hypothesis the labels cannot take is refused here, not later.
    program_lib.member_table(hyps, config.num_seeds, dataset.tau)
    run_config.save(work_dir, config, config_rules.SWEEP, "a sweep")
    start.commit()
    sweep, states = train(config, work_dir, dataset, split, hyps, quiet)
    return finish(config, work_dir, dataset, split, sweep, states, quiet, sections)


def finish(config, work_dir, dataset, split, sweep, states, quiet=False, sections=None) -> dict:
  """Evaluation, summary, figures and report from trained states (shared by the sweep and `evaluate`)."""
  log("evaluating every member on whole images", quiet)
  raw = evaluate_members(sweep, states, dataset, split, config.eval.batch_size)
  final_targets_MxT = np.asarray(processes.to_host(sweep.program.final_targets(states, sweep.member_arrays)))
  diverged_M = np.asarray(processes.to_host(states.diverged))
  held_out = split["test"] if len(split.get("test", [])) else split["val"]
  overlay_idx = splits.pick_overlay_images(dataset.labels, held_out, config.eval.num_overlays)
  masks = overlay_masks(sweep, states, dataset, overlay_idx, config.eval.batch_size)
  rf = analysis.receptive_field("segmentation", config.model.c, config.model.d, config.model.n, config.model.N)
  more = {**(sections or {}), "config": config.to_dict(), "determinism": determinism.record()}
  if dataset.masks is not None:
    more["mask_quality"] = {"split": "test" if len(split.get("test", [])) else "val", **held_out_mask_quality(
        sweep, states, dataset, held_out, config.eval.batch_size)}
  summary = {**results.summarise(raw=raw, hypotheses=sweep.hypotheses, num_seeds=config.num_seeds,
                                 final_targets=final_targets_MxT, diverged=diverged_M, dataset=dataset,
                                 receptive_field=rf), **more}
  if processes.is_primary():  # the other processes computed the same summary (copper_jax.processes)
    write_outputs(work_dir, summary, dataset, overlay_idx, masks, make_report=config.eval.report)
  log(results.headline(summary), quiet)
  return summary


def write_outputs(work_dir, summary, dataset, overlay_idx, masks_MxIxHxW, make_report=True):
  """sweep.json, the figures and report.html; each file replaced atomically, checkpoints untouched."""
  from copper_jax.viz import plots, report  # matplotlib is imported only when figures are drawn
  figures = plots.sweep_figures(work_dir, summary, dataset, overlay_idx, masks_MxIxHxW)
  training = read_metrics(work_dir)
  if training:
    figures["loss_curves"] = plots.save(plots.loss_curves_figure(training),
                                        os.path.join(work_dir, "figures", "loss_curves.png"))
  summary["figures"] = {k: os.path.relpath(v, work_dir) for k, v in figures.items()}
  summary["tables"] = tables.write_sweep_tables(work_dir, summary)
  workdir.atomic_write_json(os.path.join(work_dir, SWEEP_FILE), summary)
  if make_report:
    report.save_overlays(work_dir, summary, dataset, overlay_idx, masks_MxIxHxW)
    write_report(work_dir, summary)


def write_report(work_dir, summary, classifier_dir=None) -> str:
  """report.html, handed its finished sections: a classifier workdir's results and its CAMs of the mask viewer's
  images next to the masks, and the blind test's experts of this workdir and the classifier's; `classifier_dir`
  defaults to the sweep config's eval.classifier_workdir."""
  from copper_jax.viz import report
  classifier_dir = classifier_dir or summary["config"]["eval"]["classifier_workdir"] or None
  classifier = _classifier_section(work_dir, summary, classifier_dir) if classifier_dir else None
  experts, more_tables = [], blind_scores.table_links(work_dir)
  for where in [work_dir] + ([classifier_dir] if classifier_dir else []):
    results = blind_scores.saved_results(where)
    for name, expert in sorted((results or {"experts": {}})["experts"].items()):
      experts.append(report.ExpertSection(name, blind_scores.headline(name, expert),
                                          blind_scores.expert_figures(where, expert)))
  if classifier and classifier.grid_csv:
    more_tables.append((classifier.grid_csv, "the classifier's grid search"))
  return report.write_sweep_report(work_dir, summary, classifier=classifier, experts=experts,
                                   more_tables=more_tables)


def _classifier_section(work_dir, summary, classifier_dir):
  """What the report shows of a classifier workdir: its results.json, its CAMs of the mask viewer's images (or why
  there are none) and its grid search's table."""
  from copper_jax.viz import report
  results_path = os.path.join(classifier_dir, "results.json")
  results = workdir.read_json(results_path)
  grid_csv = os.path.join(classifier_dir, "grid.csv")
  overlays = os.path.join(work_dir, report.OVERLAYS_FILE)
  cams = None
  if os.path.exists(overlays):
    with np.load(overlays) as f:
      paths = [os.path.join(summary["data"]["root"], str(rel)) for rel in f["path"]]
    try:
      cams = classifier_maps.cam_overlays(classifier_dir, [folder.read_image(p) for p in paths], paths)
    except UserError as e:
      cams = str(e)
  return report.ClassifierSection(classifier_dir, results=results, cams=cams,
                                  grid_csv=grid_csv if os.path.exists(grid_csv) else None)


def evaluate_sweep(config, work_dir: str, quiet: bool = False, sections: dict | None = None) -> dict:
  """Recomputes sweep.json, the figures and the report from the workdir's saved config and latest checkpoint;
  `sections` as for `run_sweep`.

  The checkpoints are only read. A sweep reports every split and ranks on validation.
  """
  work_dir = os.path.abspath(work_dir)
  program_lib.validate_config(config, where=os.path.join(work_dir, workdir.CONFIG_FILE))
  with workdir.WorkdirLock(work_dir):
    dataset, split = prepare_data(config, work_dir)
    sweep = program_lib.build(config, dataset, num_train_images=len(split["train"]))
    states, step = program_lib.restore(work_dir, sweep)
    if states is None:
      raise CheckpointError(f"no checkpoint in {work_dir}/checkpoints; train first with launch/sweep.py")
    log(f"evaluating the sweep checkpoint of step {step}", quiet)
    return finish(config, work_dir, dataset, split, sweep, states, quiet, sections)
