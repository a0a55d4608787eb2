"""The step contract between a trainer and whoever watches it: plain Python, no tracking, no framework.

A trainer is ``train(problem, cfg, on_step) -> Result``; it calls ``on_step(step, loss)`` once per step.
A :class:`Recorder` is the simplest ``on_step``: it keeps the curve and stops a run that diverges. Trainers,
verify and the benchmark use these; the MLflow record (backproplab.tracking) builds on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backproplab import signals

OnStep = Callable[[int, float], None]
CKPT_META = "backproplab"  # what a trainer's checkpoint records of its run ({"model": ..., "optim": ...}),
# read back by validation to refuse a resume with another model or optimizer


@dataclass
class Result:
    """What a trainer hands back."""

    weights: dict[str, np.ndarray]  # final weights in problem.py's naming and orientation
    loop_s: float  # wall time of the training loop alone
    model: Any = None  # the trained torch.nn.Module, for the torch trainers
    grads0: dict[str, np.ndarray] = field(default_factory=dict)  # gradients of the first step
    timings: dict[str, float] = field(default_factory=dict)  # more than the loop, logged as time/<key> (compile_s)
    # the trainer's own forward pass of its final weights on problem.x (a dynamic model: its served depth,
    # backproplab.forward.served_repeats): what the logged model must predict
    outputs: np.ndarray | None = None


class Diverged(RuntimeError):
    """The loss became NaN or inf, or grew past ``trainer.divergence_factor`` times the first step's loss."""

    def __init__(self, step: int, value: float, why: str = ""):
        super().__init__(f"loss diverged at step {step}: train/loss={value:.4g}{why}")
        self.step, self.value = step, value


class Recorder:
    """Collects the loss of every step (``logger=none`` is this; the MLflow record extends it).

    A step whose loss is NaN/inf, or above ``divergence_factor`` times the first step's loss, raises
    :class:`Diverged` before it is kept: a run at lr=10 stops while its curve still means something, and the
    experiment's chart is not flattened by a 1e37.
    """

    def __init__(self, divergence_factor: float | None = None) -> None:
        self.steps: list[int] = []  # not always 0..n-1: a resumed run starts at its checkpoint's step
        self.losses: list[float] = []
        self.run_id: str | None = None
        self.divergence_factor = divergence_factor

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def on_step(self, step: int, loss: float) -> None:
        signals.check()  # a Ctrl-C / SIGTERM whose exception a finalizer dropped stops the run here
        loss = float(loss)
        if not math.isfinite(loss):
            raise Diverged(step, loss)
        factor = self.divergence_factor
        if factor and self.losses and loss > factor * self.losses[0]:
            raise Diverged(
                step, loss, f" > trainer.divergence_factor={factor:g} x the first step's loss {self.losses[0]:.4g}"
            )
        self.steps.append(step)
        self.losses.append(loss)

    def finish(self, result: Result, problem: Any) -> None:
        """Nothing to record."""

    def log(self, metrics: dict[str, float]) -> None:
        """Nothing to record."""
