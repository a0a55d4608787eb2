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
Trace = tuple[list[int], list[float], bool]  # one run: steps, losses, whether it failed


def loss_curve(steps: list[int], losses: list[float], cfg: DictConfig) -> Any:
    """The run's train/loss on a log scale."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(6, 4), dpi=80)
    ax = fig.add_subplot()
    ax.plot(steps, losses)
    ax.set_yscale("log")
    # plain labels (1e-6), not mathtext's 10⁻⁶: parsing mathtext was a third of the figure's cost, paid by every
    # run. Between decades too where the curve spans less than one, as matplotlib's own log axis does.
    ax.yaxis.set_major_formatter(FuncFormatter(tick))
    finite = [v for v in losses if 0 < v < math.inf]
    few = bool(finite) and max(finite) < 10 * min(finite)
    ax.yaxis.set_minor_formatter(FuncFormatter(tick) if few else NullFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel(LOSS_KEY)
    ax.set_title(f"{cfg.trainer.name} · {cfg.model.name} · {cfg.optim.name} (lr={cfg.optim.lr})")
    # Fixed margins, not tight_layout: its extra text layout pass was 40% of this figure's cost, paid by every
    # run. They are what tight_layout chose for the widest tick labels (minor ones such as 3×10⁻¹).
    fig.subplots_adjust(left=0.17, right=0.975, bottom=0.145, top=0.905)
    return fig


def tick(value: float, _position: int | None = None) -> str:
    """A log axis's tick label: ``0.01`` to ``1000`` as written, beyond as ``1e-6``, ``3e+7`` or ``1.015e-5`` (up to
    four significant digits: the ticks of a curve that spans a few percent must still differ)."""
    if 0.01 <= abs(value) < 1e4:
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent):+d}" if int(exponent) > 0 else f"{mantissa}e{int(exponent)}"


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
    """``text`` in lines of at most about ``width`` characters, broken at spaces or after commas, never inside a
    word (a sweep's ``experiment=numpy,tensor,...`` has no spaces); as few lines as that takes, of even length,
    so that no word is left alone on the last one."""
    pieces = re.findall(r"[^,\s]*(?:,|\s+|$)", text)

    def lines(limit: int) -> list[str]:
        out = [""]
        for piece in pieces:
            if out[-1] and len(out[-1] + piece.rstrip()) > limit:
                out.append("")
            out[-1] += piece
        return [line.rstrip() for line in out]

    fewest = len(lines(width))
    even = next(w for w in range(math.ceil(len(text) / fewest), width + 1) if len(lines(w)) <= fewest)
    return "\n".join(lines(even))


def step_axis(runs: Iterable[Trace]) -> bool:
    """Whether steps go on a log axis: runs of very different lengths (2000 and 30000 steps) stay readable."""
    lengths = [len(r[0]) for r in runs if r[0]]
    return bool(lengths) and max(lengths) > 4 * min(lengths)


def draw_group(ax: Any, label: str, runs: list[Trace], log_steps: bool, color: str | None = None,
               linestyle: str = "-", crowded: bool = False) -> str:
    """One group on a log-loss axis, returns its colour. A run alone is its curve. Several: each seed a faint
    line, their geometric mean per step a line, and its 95% t-interval (stats.band) a band; a run that stopped
    early (failed, diverged) is drawn to its last step, with an x, and leaves the band after it. ``crowded``
    (many groups on one axis) draws the seeds fainter still."""
    import numpy as np

    from backproplab.stats import band

    def x(steps: list[int]) -> list[int]:
        return [s + 1 for s in steps] if log_steps else steps

    failed = sum(f for _, _, f in runs)
    if len(runs) == 1:
        steps, values, _ = runs[0]
        (line,) = ax.plot(x(steps), values, label=label + (" [failed]" if failed else ""), linestyle=linestyle,
                          color=color)
        color = line.get_color()
    else:
        faint = 0.1 if crowded or len(runs) > 8 else 0.35
        for steps, values, _ in runs:
            (line,) = ax.plot(x(steps), values, color=color, alpha=faint, linewidth=0.6, label="_seed")
            color = line.get_color()
        grid = sorted({s for steps, _, _ in runs for s in steps})
        column = {s: i for i, s in enumerate(grid)}
        logs = np.full((len(runs), len(grid)), np.nan)
        for row, (steps, values, _) in enumerate(runs):
            v = np.asarray(values, dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs[row, [column[s] for s in steps]] = np.where(v > 0, np.log(v), np.nan)
        _, mean, low, high = band(logs)
        ax.plot(x(grid), np.exp(mean), color=color, linewidth=2, linestyle=linestyle,
                label=f"{label}, n={len(runs)}{f', {failed} failed' if failed else ''}")
        ax.fill_between(x(grid), np.exp(low), np.exp(high), color=color, alpha=0.25, linewidth=0, label="_band")
    for steps, values, stopped in runs:
        if stopped and steps:  # where it stopped: its last finite step
            ax.plot(x(steps)[-1:], values[-1:], marker="x", markersize=9, mew=2, color=color, label="_stop")
    return color


def sweep_figure(groups: list[tuple[str, list[Trace]]], fits: list[tuple[str, dict]], title: str,
                 path: Path) -> tuple[list[str], int]:
    """Every group's loss curves on one log-scale axis (a group of one run: its curve; several: a line and a band
    over faint seeds, draw_group) and, where the runs fit a formula, one fit per group against the data beside
    it; saved as a PNG. Returns (the legend's entries, fits drawn).

    The legend sits outside the axes, one entry a line, and the figure grows with it, so that the plot keeps
    its size whatever the number of groups; a long title wraps instead of being cut.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = [(label, [r for r in runs if r[0]]) for label, runs in groups]
    groups = [(label, runs) for label, runs in groups if runs]
    ncols = max(1, math.ceil(len(groups) / 30))
    longest = max((len(g[0]) for g in groups), default=0) + 16  # + ", n=64, 3 failed"
    legend_w = min(ncols * (0.6 + 0.075 * longest), 9.0)
    height = max(5.0, 1.6 + 0.24 * math.ceil(len(groups) / ncols))
    panels = 2 if fits else 1
    fig = Figure(figsize=(8 + 6.5 * (panels - 1) + legend_w, height), layout="constrained")
    log_steps = step_axis(r for _, runs in groups for r in runs)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    colors = {}
    for i, (label, runs) in enumerate(groups):
        # a dash pattern per group as well as a colour: groups with equal losses (sequential vs custom) overlap
        colors[label] = draw_group(ax, label, runs, log_steps, linestyle=DASHES[i % 4], crowded=len(groups) > 3)
    ax.set_yscale("log")
    if log_steps:
        ax.set_xscale("log")
        ax.set_xlabel("step + 1 (log scale)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_xlabel("step")
    ax.set_ylabel(LOSS_KEY)
    repeats = any(len(runs) > 1 for _, runs in groups)
    ax.set_title("loss: geometric mean per step over seeds, band its 95% t-interval, faint lines the seeds"
                 if repeats else "loss", fontsize="medium" if repeats else None)
    ax.grid(True, which="both", alpha=0.3)
    handles, entries = ax.get_legend_handles_labels()  # groups, not seeds, bands or marks ("_" labels)
    n = len(entries)
    drawn = 0
    if fits:
        fx = fig.add_subplot(1, panels, 2)
        _sine_axes(fx, fits[0][1])
        for i, (label, fit) in enumerate(fits):
            # no legend entries of their own: the colour is the group's, as in the loss panel
            _draw_fit(fx, fit, "_" + label, color=colors.get(label), linestyle=DASHES[i % 4], linewidth=1.2)
            drawn += 1
        fx.set_title("fit (same colours as the loss curves)")
        fx.legend(loc="upper left", fontsize="small")
    # the title is centred on the figure and the legend holds the top of its right edge: the title wraps to the
    # width that stays clear of the legend's column
    clear = fig.get_figwidth() - (2 * legend_w if n else 0)
    fig.suptitle(wrap(title, max(40, int(clear * 12))), fontsize="medium")
    if n:
        fig.legend(handles, entries, loc="outside right upper", fontsize="small", ncols=ncols)
    fig.savefig(path, dpi=100)
    return entries, drawn
