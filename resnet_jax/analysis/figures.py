"""The analyses' figures, one line per network (variant), as a paper would print them.

Each function takes `{label: result}` (results of `highway`, `shattered`, `responses`), a PNG path
and a `note` saying what was measured (the weights, how BatchNorm normalised, which images), which
becomes the figure's caption line: a figure read alone must not mislead.
"""
from __future__ import annotations

import io
import pathlib
import textwrap
from typing import Dict, Mapping

import matplotlib
import numpy as np

from resnet_jax.analysis.highway import GradientHighway
from resnet_jax.analysis.responses import LayerResponses
from resnet_jax.analysis.shattered import ShatteredGradients


def _figure(panels: int):
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after choosing the backend)
  fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.8))
  return plt, fig, np.atleast_1d(axes)


def _finish(plt, fig, axes, title: str, note: str, path) -> pathlib.Path:
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # units, layers and steps are counted
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.text(0.5, 0.01, "\n".join(textwrap.wrap(note, 170)), ha="center", va="bottom", fontsize=8)
  fig.tight_layout(rect=(0, 0.09, 1, 0.95))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = io.BytesIO()
  fig.savefig(image, format="png", dpi=120)
  plt.close(fig)
  path.write_bytes(image.getvalue())
  return path


def _units(n: int) -> np.ndarray:
  return np.arange(1, n + 1)


def plot_gradient_highway(results: Mapping[str, GradientHighway], path, note: str = "") -> pathlib.Path:
  """Left: ‖∂L/∂x_l‖ / ‖∂L/∂x_L‖ over the units l (log scale); right: the share through the shortcut."""
  plt, fig, (ax_norm, ax_share) = _figure(2)
  for label, r in results.items():
    if not np.all(np.isfinite(r.relative_norm)):
      ax_norm.plot([], [], label=f"{label}: no gradient reaches the units")
      continue
    line, = ax_norm.plot(_units(len(r.units)), r.relative_norm, marker=".", label=f"{label} (max/min {r.spread:.3g})")
    ax_share.plot(_units(len(r.units)), r.shortcut_share, marker=".", color=line.get_color(), label=label)
  ax_norm.set(yscale="log", xlabel="residual unit l (input side left)", ylabel="‖∂L/∂x_l‖ / ‖∂L/∂x_L‖",
              title="gradient reaching each unit, relative to the last")
  ax_share.set(xlabel="residual unit l", ylabel="⟨g_shortcut, g⟩ / ‖g‖²",
               title="share of ∂L/∂x_l that arrives through the shortcut")
  return _finish(plt, fig, (ax_norm, ax_share), "Gradient highway (He et al. 2016, Eq. 5)", note, path)


def plot_gradient_correlations(results: Mapping[str, ShatteredGradients], path, note: str = "") -> pathlib.Path:
  """Left: the correlation of input gradients at neighbouring inputs over depth; right: by distance."""
  plt, fig, (ax_depth, ax_lag) = _figure(2)
  for label, r in results.items():
    line, = ax_depth.plot(_units(len(r.units)), r.neighbours, marker=".", label=label)
    lags = np.arange(1, r.correlation.shape[1] + 1)
    ax_lag.plot(lags, r.correlation[-1], marker=".", color=line.get_color(), label=f"{label}, unit {len(r.units)}")
  ax_depth.axhline(0.0, color="black", linewidth=0.8)
  ax_lag.axhline(0.0, color="black", linewidth=0.8)
  ax_depth.set(xlabel="residual unit l (its output)", ylabel="correlation of ∇ₓ f_l at neighbouring inputs",
               title="gradient correlation between neighbouring inputs, by depth")
  ax_lag.set(xlabel="distance along the line (steps)", ylabel="correlation of ∇ₓ f_L",
             title="at the last unit, by distance between the inputs")
  return _finish(plt, fig, (ax_depth, ax_lag), "Shattered gradients (Balduzzi et al. 2017)", note, path)


def plot_layer_responses(results: Mapping[str, LayerResponses], path, note: str = "") -> pathlib.Path:
  """He et al. 2015, Fig. 7: the std of each 3×3 layer's responses, in order (left) and sorted (right)."""
  plt, fig, (ax_order, ax_sorted) = _figure(2)
  for label, r in results.items():
    line, = ax_order.plot(_units(len(r.layers)), r.std, marker=".", label=label)
    ax_sorted.plot(_units(len(r.layers)), r.sorted_std, color=line.get_color(), label=label)
  ax_order.set(xlabel="layer index (3×3 convolutions, input side left)", ylabel="std of the responses",
               title="layer responses in their original order")
  ax_sorted.set(xlabel="layer index (sorted by magnitude)", ylabel="std of the responses",
                title="layer responses sorted by magnitude")
  for ax in (ax_order, ax_sorted):  # a magnitude: from 0, so that a flat line looks flat
    ax.set_ylim(bottom=0.0, top=max(ax.get_ylim()[1], 1.05 * max(float(np.max(r.std)) for r in results.values())))
  return _finish(plt, fig, (ax_order, ax_sorted), "Layer responses (He et al. 2015, Fig. 7)", note, path)


def replot(analysis_json, analysis: str, out=None) -> pathlib.Path:
  """Draws an analysis's figure again from the numbers an `analysis.json` holds (next to it by default)."""
  import json  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(analysis_json)
  entry = json.loads(path.read_text())["results"][analysis]
  nan = lambda v: np.array([np.nan if x is None else x for x in v], np.float64)
  results = {}
  for label, d in entry["by_subject"].items():
    if analysis == "responses":
      results[label] = LayerResponses(d["layers"], nan(d["std"]), d["images"], d["mode"])
    elif analysis == "highway":
      results[label] = GradientHighway(d["units"], nan(d["norm"]), nan(d["shortcut_norm"]), nan(d["branch_norm"]),
                                       nan(d["shortcut_share"]), d["mode"])
    else:
      corr = np.array([nan(row) for row in d["correlation_by_lag"]])
      results[label] = ShatteredGradients(d["units"], corr, d["relative_step"], d["lines"], d["points_per_line"],
                                          d["mode"])
  return PLOTS[analysis](results, out or path.parent / entry["figure"], entry["note"])


PLOTS: Dict[str, object] = {"highway": plot_gradient_highway, "shattered": plot_gradient_correlations,
                            "responses": plot_layer_responses}
