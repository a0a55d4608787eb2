"""A run's own loss curve (the sweep report draws its comparison in tracking/report.py)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def loss_curve(steps: list[int], losses: list[float], cfg: DictConfig) -> Any:
    """The run's train/loss on a log scale (a bare Figure: no pyplot state, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=80)
    ax = fig.add_subplot()
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title(f"{cfg.trainer.name} · {cfg.model.name} · {cfg.optim.name} (lr={cfg.optim.lr})")
    fig.tight_layout()
    return fig
