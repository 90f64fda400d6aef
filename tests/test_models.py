"""Models: shapes, parameter counts, receptive field, CAM identity, norm behaviour, bf16, a golden step."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from copper_jax.errors import ConfigError
from copper_jax.models import (ResNetClassifier, SegmentationNet, class_activation_maps, describe, make_model,
                               measure_receptive_field, param_count, receptive_field)
from copper_jax.models.layers import group_count, max_pool_2x2, upsample_bilinear_2x


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def _random_variables(model, x, seed=0):
  """Generic random variables of the right structure. Flax's initialisers compile to programs that dominate this
  file's time on CPU, so only the golden test runs them; random norm parameters and statistics also make the
  tests see a more generic net than the init does."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    fan_in = math.prod(leaf.shape[:-1]) if name == "kernel" else 1
    return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(np.float32)

  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, False))
  return jax.tree_util.tree_map_with_path(fill, abstract)


def _apply(model, variables, x, train=False, method=None):
  """Eval mode returns the output; train mode returns (output, updated collections)."""
  mutable = ["batch_stats"] if train else False
  return jax.jit(lambda v, x: model.apply(v, x, train, method=method, mutable=mutable))(variables, x)


CLS = ResNetClassifier(4, 2, 1, 1, num_classes=3)
SEG = SegmentationNet(4, 2, 1, 1)
X_2x16x16x1 = _images((2, 16, 16, 1))
CLS_VARIABLES = _random_variables(CLS, X_2x16x16x1)
SEG_VARIABLES = _random_variables(SEG, X_2x16x16x1)


@pytest.mark.parametrize("shape", [(2, 6, 9, 3), (1, 1, 5, 2)])
def test_upsample_equals_image_resize(shape):
  x = _images(shape)
  B, H, W, C = shape
  ours = upsample_bilinear_2x(x)
  for antialias in (True, False):  # antialiasing only widens the kernel when downsampling
    ref = jax.image.resize(x, (B, 2 * H, 2 * W, C), "bilinear", antialias=antialias)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_equals_flax(shape):
  x = _images(shape) - 0.5
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))


def test_classifier_shapes_at_even_and_odd_sizes():
  for H, W in [(16, 16), (13, 19)]:  # odd sizes lose a row or column at each pooling, like PyTorch
    logits = _apply(CLS, CLS_VARIABLES, _images((2, H, W, 1)))
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32


def test_segmentation_keeps_any_input_size():
  for H, W in [(16, 16), (17, 23), (5, 2)]:  # (5, 2): reflect padding wider than the image
    mask = _apply(SEG, SEG_VARIABLES, _images((2, H, W, 1)))
    assert mask.shape == (2, H, W) and mask.dtype == jnp.float32
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1


def test_group_count():
  assert [group_count(c) for c in (1, 4, 6, 8, 12, 16, 20)] == [1, 4, 6, 8, 6, 8, 5]


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("c,d,n,N", [(4, 2, 1, 1), (6, 3, 2, 2)])
def test_param_count_formula(norm, c, d, n, N):
  # stem 3x3 with bias; each residual unit: 3x3 conv without bias + norm scale and shift; heads with bias.
  stem, unit = 9 * c + c, 9 * c * c + 2 * c
  x = jnp.zeros((1, 2 ** d, 2 ** d, 1))
  cls = ResNetClassifier(c, d, n, N, num_classes=7, norm=norm)
  seg = SegmentationNet(c, d, n, N, norm=norm)
  cls_params = jax.eval_shape(lambda: cls.init(jax.random.key(0), x, False))["params"]
  seg_params = jax.eval_shape(lambda: seg.init(jax.random.key(0), x, False))["params"]
  assert param_count(cls_params) == stem + d * N * n * unit + 7 * c + 7
  assert param_count(seg_params) == stem + 2 * d * N * n * unit + c + 1


  # The same counts as the PyTorch twin in benchmarks/torch_nets.py (c=16, d=3, n=2, N=1, 16 classes).
  # Counts from the PyTorch reference at its default size (c=16, d=3, n=2, N=1, 16 classes).
  assert describe("classifier", 16, 3, 2, 1, num_classes=16) == {
      "kind": "classifier", "depth": 7, "params": 14448, "receptive_field": 38}
  assert describe("segmentation", 16, 3, 2, 1) == {
      "kind": "segmentation", "depth": 13, "params": 28209, "receptive_field": 86}


@pytest.mark.parametrize("kind,d,n,N", [("classifier", 2, 2, 1), ("classifier", 3, 1, 2),
                                        ("segmentation", 1, 1, 1), ("segmentation", 2, 2, 1),
                                        ("segmentation", 3, 1, 1)])
def test_receptive_field_formula_equals_gradient(kind, d, n, N):
  c = 8  # with fewer channels, max-pooling and ReLU can hide the edge of the field from every sample
  model = ResNetClassifier(c, d, n, N, num_classes=3) if kind == "classifier" else SegmentationNet(c, d, n, N)
  expected = receptive_field(kind, c, d, n, N)
  size = 2 ** d * -(-(expected + 4 * 2 ** d) // 2 ** d)  # a margin of 2 coarse pixels each side
  variables = _random_variables(model, jnp.zeros((1, 2 ** d, 2 ** d, 1)))
  assert measure_receptive_field(model, variables, size) == expected


def test_receptive_field_values():
  # Segmentation net, d=2, m=2: the widest output pixel sees 38 pixels; the usual stride recursion gives 36.
  assert [receptive_field("classifier", 4, d, 1, 1) for d in (1, 2, 3)] == [6, 12, 24]
  assert [receptive_field("segmentation", 4, 2, n, 1) for n in (1, 2, 3)] == [24, 38, 48]


def test_class_activation_maps_average_to_logits():
  cam_BxhxwxK = class_activation_maps(CLS, CLS_VARIABLES, X_2x16x16x1)
  assert cam_BxhxwxK.shape == (2, 4, 4, 3)
  logits_BxK = _apply(CLS, CLS_VARIABLES, X_2x16x16x1)
  np.testing.assert_allclose(cam_BxhxwxK.mean(axis=(1, 2)) + CLS_VARIABLES["params"]["head"]["bias"], logits_BxK,
                             rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_update_in_train_and_serve_in_eval():
  x = X_2x16x16x1
  _, updates = _apply(CLS, CLS_VARIABLES, x, train=True)
  before, after = CLS_VARIABLES["batch_stats"], updates["batch_stats"]
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  trained = {**CLS_VARIABLES, "batch_stats": after}
  # Eval mode: running statistics, so one image's logits do not depend on the rest of the batch ...
  np.testing.assert_allclose(_apply(CLS, trained, x[:1]), _apply(CLS, trained, x)[:1], rtol=1e-5, atol=1e-6)
  # ... and the updated statistics are the ones used.
  assert not np.allclose(_apply(CLS, trained, x), _apply(CLS, CLS_VARIABLES, x))
  # Train mode: batch statistics couple the images.
  assert not np.allclose(_apply(CLS, trained, x[:1], train=True)[0], _apply(CLS, trained, x, train=True)[0][:1])


def test_group_norm_runs_without_batch_stats():
  model = SegmentationNet(4, 2, 1, 1, norm="group")
  variables = _random_variables(model, X_2x16x16x1)
  assert "batch_stats" not in variables
  mask, _ = _apply(model, variables, X_2x16x16x1, train=True)
  assert mask.shape == (2, 16, 16)


def test_bfloat16_close_to_float32():
  for fp32, variables in [(CLS, CLS_VARIABLES), (SEG, SEG_VARIABLES)]:
    bf16 = fp32.clone(dtype=jnp.bfloat16)
    bf16_params = jax.eval_shape(lambda: bf16.init(jax.random.key(0), X_2x16x16x1, False))["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))
    out32, out16 = _apply(fp32, variables, X_2x16x16x1), _apply(bf16, variables, X_2x16x16x1)
    assert out16.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (0.4% per rounding); a dozen layers measured 1-2% here.
    assert float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)) < 5e-2


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(c=4, d=2, n=1, N=1, norm="batch", dtype="float32"))
  config.update(overrides)
  return config


def test_make_model():
  seg = make_model("segmentation", _config(dtype="bfloat16", norm="group"))
  assert isinstance(seg, SegmentationNet) and seg.dtype == jnp.bfloat16 and seg.norm == "group"
  cls = make_model("classifier", _config(), num_classes=16)
  assert isinstance(cls, ResNetClassifier) and cls.num_classes == 16 and cls.dtype == jnp.float32


@pytest.mark.parametrize("kind,overrides,num_classes,words", [
    ("segmentation", dict(norm="layer"), None, ["model.norm", "batch", "group"]),
    ("segmentation", dict(dtype="float16"), None, ["model.dtype", "float32", "bfloat16"]),
    ("unet", {}, None, ["kind", "classifier", "segmentation"]),
    ("segmentation", dict(d=0), None, ["model.d"]),
    ("classifier", {}, None, ["num_classes"]),
])
def test_make_model_rejects_bad_config(kind, overrides, num_classes, words):
  with pytest.raises(ConfigError) as error:
    make_model(kind, _config(**overrides), num_classes)
  message = str(error.value)
  assert "\n" not in message and all(word in message for word in words)


# Golden values of one Adam step on a fixed tiny net. Update them only when the architecture or the
# initialisation changes on purpose, and say why in the commit message.
GOLDEN_LOSS_BEFORE = 0.04  # the zero-initialised head gives a mask of 0.5 everywhere
GOLDEN_LOSS_AFTER = 0.0378096
GOLDEN_PARAM_SUM = 15.4597


def test_golden_one_adam_step():
  model = SegmentationNet(4, 2, 1, 1)
  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32))
  optimizer = optax.adam(1e-3)

  def loss_fn(params, batch_stats):
    mask_BxHxW, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, True,
                                      mutable=["batch_stats"])
    return (mask_BxHxW.mean() - 0.3) ** 2, updates["batch_stats"]

  @jax.jit
  def one_step(variables):
    params = variables["params"]
    (loss_before, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params,
                                                                                   variables["batch_stats"])
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    params = optax.apply_updates(params, updates)
    loss_after, _ = loss_fn(params, batch_stats)
    return loss_before, loss_after, sum(jnp.sum(p) for p in jax.tree.leaves(params))

  loss_before, loss_after, param_sum = one_step(jax.jit(model.init, static_argnums=2)(jax.random.key(0), x, False))
  np.testing.assert_allclose([loss_before, loss_after, param_sum],
                             [GOLDEN_LOSS_BEFORE, GOLDEN_LOSS_AFTER, GOLDEN_PARAM_SUM], rtol=1e-5)
