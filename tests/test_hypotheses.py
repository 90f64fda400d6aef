"""Hypotheses as data: parsing, grids, endpoint offsets, validation, the learned curve and isotonic fits."""
import numpy as np
import pytest

from copper_jax import hypotheses
from copper_jax.errors import ConfigError

TAU = np.linspace(0.0, 1.0, 5)


def test_families_hit_their_endpoints_and_rise():
  specs = ("linear", "power(gamma=0.5)", "power(gamma=2)", "log(alpha=10)", "saturating_exp(beta=3)",
           "sigmoid(slope=8, mid=0.3)", "step(mid=0.5)", "learned")
  table = hypotheses.target_table(hypotheses.expand(specs), TAU)
  assert table.shape == (len(specs), 5)
  np.testing.assert_allclose(table[:, 0], 0.0, atol=1e-6)
  np.testing.assert_allclose(table[:, -1], 1.0, atol=1e-6)
  assert np.all(np.diff(table, axis=1) >= 0)


def test_hand_computed_values():
  h = {x.name: x for x in hypotheses.expand(("power(gamma=0.5)", "log(alpha=10)", "step(mid=0.5)"))}
  np.testing.assert_allclose(float(h["power(gamma=0.5)"](0.25)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(h["log(alpha=10)"](0.5)), np.log(6.0) / np.log(11.0), rtol=1e-6)
  assert float(h["step(mid=0.5)"](0.49)) == 0.0 and float(h["step(mid=0.5)"](0.5)) == 1.0


def test_grid_expands_and_endpoints_offset():
  hyps = hypotheses.expand(("power(gamma=[0.5, 2], lo=0.1, hi=0.9)",))
  assert [h.name for h in hyps] == ["power(gamma=0.5, lo=0.1, hi=0.9)", "power(gamma=2, lo=0.1, hi=0.9)"]
  table = hypotheses.target_table(hyps, TAU)
  np.testing.assert_allclose(table[:, 0], 0.1, atol=1e-6)
  np.testing.assert_allclose(table[:, -1], 0.9, atol=1e-6)
  np.testing.assert_allclose(table[0, 2], 0.1 + 0.8 * np.sqrt(0.5), rtol=1e-6)


def test_user_table_runs_through_the_same_path():
  hyps = hypotheses.expand(("table(values=[0, 0.1, 0.5, 0.9, 1])",))
  np.testing.assert_allclose(hypotheses.target_table(hyps, TAU)[0], [0, 0.1, 0.5, 0.9, 1], rtol=1e-6)


@pytest.mark.parametrize("spec, words", [
    ("table(values=[0, 0.5, 0.4, 0.9, 1])", "not monotone"),
    ("table(values=[0, 0.5, 1])", "3 values but the data have 5 labels"),
    ("table(values=[0, 0.5, 0.7, 0.9, 1.2])", "must lie in [0, 1]"),
    ("table(values=[0, nan, 0.7, 0.9, 1])", "cannot read value 'nan'"),
    ("cubic", "unknown family 'cubic'"),
    ("power(gama=2)", "unknown parameter 'gama'"),
    ("power(gamma=-1)", "out of range"),
    ("linear(lo=0.8, hi=0.2)", "0 <= lo < hi <= 1"),
    ("power(gamma=abc)", "cannot read value"),
    # Parsed strictly: nothing a user mistyped is taken as something else.
    ("power(gamma=1, gamma=2)", "given twice"),
    ("power(gamma=inf)", "cannot read value 'inf'"),
    ("power(gamma=1e400)", "cannot read value"),
    ("power(gamma=0x10)", "cannot read value"),
    ("power(gamma=2,)", "stray comma"),
    ("power(gamma=[1,,2])", "cannot read value ''"),
    ("power(gamma=[[1, 2]])", "not nested"),
    ("step(mid=1.5)", "must be in (0, 1]"),
    ("learned(gamma=2)", "unknown parameter 'gamma'"),
    ("power(Gamma=2)", "not a parameter name"),
    (3, "not a string"),
])
def test_bad_hypotheses_are_refused_in_one_line(spec, words):
  with pytest.raises(ConfigError) as info:
    hypotheses.target_table(hypotheses.expand((spec,)), TAU)
  message = str(info.value)
  assert words in message and "\n" not in message


def test_repeated_names_are_refused():
  with pytest.raises(ConfigError, match="more than once"):
    hypotheses.expand(("linear", "power(gamma=1)", "linear"))


def test_learned_curve_is_monotone_with_pinned_endpoints():
  rng = np.random.default_rng(0)
  curve = np.asarray(hypotheses.learned_curve(rng.normal(size=7) * 3, 0.05, 0.95))
  assert curve.shape == (8,)
  assert np.all(np.diff(curve) > 0)
  np.testing.assert_allclose([curve[0], curve[-1]], [0.05, 0.95], atol=1e-6)
  np.testing.assert_allclose(np.asarray(hypotheses.learned_curve(np.zeros(4))), np.linspace(0, 1, 5), atol=1e-6)


def test_isotonic_fit_pools_adjacent_violators():
  np.testing.assert_allclose(hypotheses.isotonic_fit([0.0, 0.3, 0.2, 0.6, 0.5, 0.9]),
                             [0.0, 0.25, 0.25, 0.55, 0.55, 0.9])
  np.testing.assert_allclose(hypotheses.isotonic_fit([1.0, 0.0], [3.0, 1.0]), [0.75, 0.75])
  sorted_values = np.sort(np.random.default_rng(1).random(10))
  np.testing.assert_allclose(hypotheses.isotonic_fit(sorted_values), sorted_values)
