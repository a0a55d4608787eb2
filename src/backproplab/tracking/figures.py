"""The figures of the record: a run's loss curve and fit, and a sweep's comparison (tracking/report.py).

The object API on bare Figures: no pyplot state, no GUI backend, nothing global switched inside a Hydra
callback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

LOSS_KEY = "train/loss"
DASHES = ("-", "--", "-.", ":")
Curve = tuple[str, list[int], list[float], bool]  # label, steps, losses, failed


def loss_curve(steps: list[int], losses: list[float], cfg: DictConfig) -> Any:
    """The run's train/loss on a log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=80)
    ax = fig.add_subplot()
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(LOSS_KEY)
    ax.set_title(f"{cfg.trainer.name} · {cfg.model.name} · {cfg.optim.name} (lr={cfg.optim.lr})")
    # Fixed margins, not tight_layout: its extra text layout pass was 40% of this figure's cost, paid by every
    # run. They are what tight_layout chose for the widest tick labels (minor ones such as 3×10⁻¹).
    fig.subplots_adjust(left=0.17, right=0.975, bottom=0.145, top=0.905)
    return fig


def _draw_fit(ax: Any, fit: dict[str, Any], label: str | None = None, color: str | None = None, **style: Any) -> None:
    """One run's fitted curve(s) (fit.json: x, y, curves) on ``ax``, labelled by shape unless ``label`` says."""
    for shape, values in fit["curves"].items():
        ax.plot(fit["x"], values, label=shape if label is None else label, color=color, **style)


def _sine_axes(ax: Any, fit: dict[str, Any]) -> None:
    ax.plot(fit["x"], fit["y"], color="black", linewidth=3, alpha=0.25, label="data (sin x)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.grid(True, alpha=0.3)


def fit_plot(fit: dict[str, Any], title: str) -> Any:
    """The fitted curve against the data it was fitted to."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    _sine_axes(ax, fit)
    _draw_fit(ax, fit)
    ax.legend(fontsize="small")
    ax.set_title(wrap(title, 70), fontsize="medium")
    return fig


def wrap(text: str, width: int) -> str:
    """``text`` in lines of about ``width`` characters, broken at spaces or after commas, never inside a word (a
    sweep's ``experiment=numpy,tensor,...`` has no spaces)."""
    lines = [""]
    for piece in re.findall(r"[^,\s]*(?:,|\s+|$)", text):
        if lines[-1] and len(lines[-1] + piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def sweep_figure(curves: Iterable[Curve], fits: list[tuple[str, dict]], title: str, path: Path) -> tuple[int, int]:
    """Every run's loss curve on one log-scale axis and, where the runs fit a formula, every fit against the
    data beside it; saved as a PNG. Returns (loss curves drawn, fits drawn).

    The legend sits outside the axes, one entry a line, and the figure grows with it, so that the plot keeps
    its size whatever the number of runs; a long title wraps instead of being cut.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = [c for c in curves if c[1]]
    ncols = max(1, math.ceil(len(curves) / 30))
    longest = max((len(c[0]) for c in curves), default=0) + 10  # + " [failed]"
    legend_w = min(ncols * (0.6 + 0.075 * longest), 9.0)
    height = max(5.0, 1.6 + 0.24 * math.ceil(len(curves) / ncols))
    panels = 2 if fits else 1
    fig = Figure(figsize=(8 + 6.5 * (panels - 1) + legend_w, height), layout="constrained")
    lengths = [len(c[1]) for c in curves]
    # runs of very different lengths (2000 and 30000 steps): a log step axis keeps the short ones readable
    log_steps = bool(lengths) and max(lengths) > 4 * min(lengths)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    colors = {}
    for i, (label, steps, values, failed) in enumerate(curves):
        # a dash pattern per curve as well as a colour: runs with equal losses (sequential vs custom) overlap
        xs = [s + 1 for s in steps] if log_steps else steps
        (line,) = ax.plot(xs, values, label=label + (" [failed]" if failed else ""), linestyle=DASHES[i % 4])
        colors[label] = line.get_color()
        if failed:  # where it stopped: its last finite step
            ax.plot(xs[-1:], values[-1:], marker="x", markersize=9, mew=2, color=line.get_color())
    ax.set_yscale("log")
    if log_steps:
        ax.set_xscale("log")
        ax.set_xlabel("step + 1 (log scale)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_xlabel("step")
    ax.set_ylabel(LOSS_KEY)
    ax.set_title("loss")
    ax.grid(True, which="both", alpha=0.3)
    n = sum(1 for line in ax.get_lines() if not line.get_label().startswith("_"))  # curves, not the x marks
    drawn = 0
    if fits:
        fx = fig.add_subplot(1, panels, 2)
        _sine_axes(fx, fits[0][1])
        for i, (label, fit) in enumerate(fits):
            # no legend entries of their own: the colour is the run's, as in the loss panel
            _draw_fit(fx, fit, "_" + label, color=colors.get(label), linestyle=DASHES[i % 4], linewidth=1.2)
            drawn += 1
        fx.set_title("fit (same colours as the loss curves)")
        fx.legend(loc="upper left", fontsize="small")
    # the title is centred on the figure and the legend holds the top of its right edge: the title wraps to the
    # width that stays clear of the legend's column
    clear = fig.get_figwidth() - (2 * legend_w if n else 0)
    fig.suptitle(wrap(title, max(40, int(clear * 12))), fontsize="medium")
    if n:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize="small", ncols=ncols)
    fig.savefig(path, dpi=100)
    return n, drawn
