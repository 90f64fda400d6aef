"""The blind test's figures: the paper's Figure 7 (an expert) and 8 (the classifier), and accuracy per stress time."""
import numpy as np

from copper_jax import metrics


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
