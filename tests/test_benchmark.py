"""The benchmark: a quick run of the launcher has the documented schema and its fast paths equal the plain ones;
the FLOP count, the interleaving and the alternative formulations are checked by hand. No timing is asserted."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import benchmark, conv
from copper_jax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = {"median", "min", "max", "n"}


def _is_stats(value, n=None):
  return set(value) == STATS and value["min"] <= value["median"] <= value["max"] and (n is None or value["n"] == n)


@pytest.mark.slow
def test_quick_run_writes_the_schema_and_its_checks_pass(tmp_path):
  out = tmp_path / "bench.json"
  run = subprocess.run([sys.executable, "launch/benchmark.py", "--preset=cpu", "--quick", f"--out={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stdout + run.stderr
  assert "checks: " in run.stdout and "all passed" in run.stdout
  result = json.loads(out.read_text())
  repeats = result["repeats"]
  assert result["quick"] and result["preset"] == "cpu" and result["all_checks_passed"]
  assert {"jax", "flax", "optax"} <= set(result["versions"]) and result["machine"]["cpu_count"] >= 1
  # on glibc Linux the launcher keeps freed memory by default
  assert isinstance(result["reuse_freed_memory"], bool)

  training = result["training"]
  assert _is_stats(training["peak_gflop_s"]["float32"], repeats)
  assert {(row["kind"], row["shape"]["name"]) for row in training["rows"]} == {("segmentation", "tiny"),
                                                                              ("classifier", "tiny")}
  for row in training["rows"]:
    for key in ("step_s", "images_per_s", "megapixels_per_s", "gflop_s", "minor_faults_per_step"):
      assert _is_stats(row[key], repeats), key
    assert row["compile_s"] > 0 and row["gflop_per_step"] > 0 and row["fraction_of_peak"] > 0
    assert row["memory"]["peak_bytes"] > 0 and "temp_size_in_bytes" in row["memory"]

  (sweep,) = result["sweep"]
  assert {(row["strategy"], row["members"]) for row in sweep["rows"]} == {(s, 2) for s in benchmark.STRATEGIES}
  assert all(_is_stats(row["efficiency"], repeats) for row in sweep["rows"])
  assert sweep["fastest"]["2"] in benchmark.STRATEGIES

  prediction = result["prediction"]
  assert _is_stats(prediction["whole"]["s_per_image"], repeats) and prediction["gflop_forward"] > 0
  assert _is_stats(result["pipeline"]["patches_per_s"], repeats) and result["pipeline"]["headroom"] > 0
  assert {row["op"] for row in result["layers"]["rows"]} == {"max_pool", "upsample", "conv3x3"}
  (passes,) = result["conv_passes"]["rows"]
  assert passes["shape"] == "tiny" and passes["gflop_per_pass"] > 0
  assert all(_is_stats(passes[which]["jax_s"], repeats) for which in benchmark.CONV_PASSES)

  # the fast paths were compared with the plain ones, and matched
  names = set(result["checks"])
  assert {"max_pool_tiny", "upsample_tiny", "conv3x3_tiny", "prediction_tiled_vs_whole"} <= names
  assert {f"members_tiny_{s}_K2_vs_separate" for s in benchmark.STRATEGIES} <= names
  assert all(check["passed"] for check in result["checks"].values())


def test_conv_flops_by_hand():
  shape = benchmark.Shape("hand", c=2, d=2, n=1, N=1, patch=8, batch=1)
  stem = 2 * 8 * 8 * 1 * 2 * 9
  level_0, level_1 = 2 * 8 * 8 * 2 * 2 * 9, 2 * 4 * 4 * 2 * 2 * 9
  seg_forward = stem + 2 * (level_0 + level_1) + 2 * 8 * 8 * 2  # down and up paths, 1x1 head
  cls_forward = stem + level_0 + level_1 + 2 * 2 * benchmark.NUM_CLASSES  # dense head
  assert benchmark.conv_flops("segmentation", shape) == {"forward": seg_forward, "train": 3 * seg_forward - stem}
  assert benchmark.conv_flops("classifier", shape) == {"forward": cls_forward, "train": 3 * cls_forward - stem}
  assert benchmark.conv_flops("segmentation", shape, 16, 8)["forward"] == 2 * seg_forward


def test_interleave_runs_round_robin_after_calibration():
  calls = []

  def item(name, seconds_per_step):
    def run(steps):
      calls.append((name, steps))
      return seconds_per_step * steps
    return benchmark.Item(name, run)

  fast, slow = item("fast", 0.01), item("slow", 0.2)
  benchmark.interleave([fast, slow], repeats=3, min_repeat_s=0.1, log=lambda line: None)
  assert calls[:2] == [("fast", 1), ("slow", 1)]  # one calibration step each
  assert calls[2:] == [("fast", 10), ("slow", 1)] * 3  # then rounds of about min_repeat_s each
  assert fast.per_step_s == pytest.approx([0.01] * 3) and slow.per_step_s == pytest.approx([0.2] * 3)
  assert benchmark.paired_ratio(slow, fast)["median"] == pytest.approx(20)


def _value_and_grads(fn, *args):
  weights = jnp.asarray(np.random.default_rng(1).normal(size=jax.eval_shape(fn, *args).shape), jnp.float32)
  return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * weights), argnums=tuple(range(len(args)))))(*args)


@pytest.mark.parametrize("shape", [(2, 6, 10, 3), (1, 7, 5, 2)])
def test_im2col_conv_equals_xla(shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, shape[-1], 4)), jnp.float32)
  (ours, ours_grads), (xla, xla_grads) = (_value_and_grads(lambda x, k, impl=impl: conv.conv3x3(x, k, impl), x,
                                                           kernel) for impl in ("im2col", "xla"))
  np.testing.assert_allclose(ours, xla, rtol=1e-5)
  for a, b in zip(ours_grads, xla_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="im2col"):
    conv.conv3x3(x, kernel, "winograd")


def test_upsample_gradient_equals_image_resize():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 3)), jnp.float32)
  (ours, (ours_grad,)), (ref, (ref_grad,)) = (_value_and_grads(fn, x) for fn in (
      layers.upsample_bilinear_2x, lambda x: jax.image.resize(x, (2, 10, 14, 3), "bilinear")))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the PyTorch twins (benchmarks/torch_nets.py): these need an interpreter with torch, so they skip without one


def _torch_python() -> str:
  """$COPPER_JAX_TORCH_PYTHON (a venv with torch and numpy, as launch/benchmark.py's --torch_python), else this
  interpreter when it has torch; skips otherwise (the project itself does not depend on torch)."""
  python = os.environ.get("COPPER_JAX_TORCH_PYTHON")
  if python:
    return python
  pytest.importorskip("torch")
  return sys.executable


def test_torch_worker_answers_and_its_twins_have_our_parameter_counts():
  from copper_jax.models import describe
  worker = benchmark.TorchWorker(_torch_python(), reuse_memory=True)
  try:
    assert worker.info["torch"] and worker.info["threads"] >= 1
    # the paper-scale default (14,448 and 28,209 parameters) and a second shape
    for c, d, n, N in ((16, 3, 2, 1), (8, 2, 1, 2)):
      for kind in ("classifier", "segmentation"):
        item = worker.item(f"{kind}_{c}", "train", kind=kind, c=c, d=d, n=n, N=N, batch=2, patch=2 ** d * 2)
        assert item.info["params"] == describe(kind, c, d, n, N, benchmark.NUM_CLASSES)["params"]
        assert item.info["first_s"] > 0 and item.run(2) > 0
      infer = worker.item(f"infer_{c}", "infer", c=c, d=d, n=n, N=N, height=20, width=28)
      assert infer.info["params"] == describe("segmentation", c, d, n, N)["params"] and infer.run(1) > 0
    assert describe("classifier", 16, 3, 2, 1, 16)["params"] == 14448
    assert describe("segmentation", 16, 3, 2, 1)["params"] == 28209
    conv_pass = worker.item("conv", "conv", batch=2, size=8, c=4, which="weight_grad")
    assert conv_pass.run(3) > 0
    # a bad request is reported, and the worker goes on
    with pytest.raises(RuntimeError, match="PyTorch worker: ValueError"):
      worker.request({"op": "train", "id": 99, "args": {"kind": "resnet", "c": 4, "d": 1, "n": 1, "N": 1,
                                                        "batch": 1, "patch": 4}})
    assert worker.request({"op": "hello"}) == worker.info
  finally:
    worker.close()


@pytest.mark.parametrize("kind,norm,height,width", [("classifier", "batch", 20, 28),
                                                    ("segmentation", "batch", 13, 18),
                                                    ("segmentation", "group", 16, 11)])
def test_torch_twins_compute_our_outputs_from_our_weights(tmp_path, kind, norm, height, width):
  """The twins are the same nets: with our weights (and BatchNorm statistics) they give our outputs, on sizes
  that exercise the reflect padding and the odd-sized poolings."""
  import flax
  from copper_jax.models import ResNetClassifier, SegmentationNet
  python = _torch_python()
  c, d, n, N, num_classes = 6, 2, 2, 1, 5
  model = (ResNetClassifier(c, d, n, N, num_classes, norm=norm) if kind == "classifier"
           else SegmentationNet(c, d, n, N, norm=norm))
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, height, width, 1)).astype(np.float32)
  variables = flax.traverse_util.flatten_dict(jax.device_get(model.init(jax.random.key(0), image, False)), sep="/")
  # generic values everywhere: a nonzero head, scales and biases off 1 and 0, running statistics off 0 and 1
  variables = {key: (np.abs(value) + rng.uniform(0.5, 1.5, value.shape) if key.endswith("var")
                     else value + 0.3 * rng.normal(size=value.shape)).astype(np.float32)
               for key, value in variables.items()}
  ours = model.apply(flax.traverse_util.unflatten_dict(variables, sep="/"), image, False,
                     **({} if kind == "classifier" else {"method": SegmentationNet.mask_logits}))
  np.savez(tmp_path / "in.npz", kind=kind, c=c, d=d, n=n, N=N, num_classes=num_classes, norm=norm, image=image,
           **variables)
  run = subprocess.run([python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import torch_nets; "
                        "torch_nets.forward_npz(sys.argv[2], sys.argv[3])", os.path.join(ROOT, "benchmarks"),
                        str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr
  with np.load(tmp_path / "out.npz") as theirs:
    np.testing.assert_allclose(theirs["logits" if kind == "classifier" else "mask_logits"], ours, rtol=1e-4,
                               atol=1e-5)
    assert int(theirs["params"]) == sum(v.size for k, v in variables.items() if k.startswith("params/"))
