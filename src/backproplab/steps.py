"""The step contract between a trainer and whoever watches it: plain Python, no tracking, no framework.

A trainer is ``train(problem, settings, on_step, **objects) -> Result``: plain values in (the problem, its
:class:`Settings`, the objects the harness built from the config), the tutorial's loop inside, which calls
``on_step(step, loss)`` once per step, and its weights out.
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


@dataclass(frozen=True)
class Settings:
    """What a trainer reads of its run: plain values, resolved from the config by the harness (backproplab.spec)."""

    model: str  # the model's name: which pass the trainer writes out (two_layer_net, dynamic_net, poly3, ...)
    max_steps: int
    lr: float
    reduction: str = "sum"  # the loss: "sum" of squares (the tutorial's) or "mean"
    accelerator: str = "cpu"  # cpu | gpu | cuda | auto
    precision: str = "32-true"  # Lightning's names; the hand-written trainers compute in problem.dtype
    threads: int | None = None  # CPU threads the run settled on (backproplab.threads); None: the framework's own
    seed: int = 0
    served_repeats: int = 0  # a dynamic model's depth when served (backproplab.forward.served_repeats)
    divergence_factor: float | None = None
    checkpoint_dir: str | None = None  # Lightning: where checkpoints go (None: no checkpoints)
    checkpoint_every: int = 0
    keep_checkpoints: int = 1
    ckpt_path: str | None = None  # Lightning: the checkpoint a run resumes from
    optim: str = "sgd"  # the optimizer's name, which a checkpoint records


@dataclass
class Result:
    """What a trainer hands back."""

    weights: dict[str, np.ndarray]  # final weights in problem.py's naming and orientation
    loop_s: float  # wall time of the training loop alone
    model: Any = None  # the trained torch.nn.Module, for the torch trainers
    timings: dict[str, float] = field(default_factory=dict)  # more than the loop, logged as time/<key> (compile_s)


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

    def __init__(self, divergence_factor: float | None = None, name: str = "") -> None:
        self.steps: list[int] = []  # not always 0..n-1: a resumed run starts at its checkpoint's step
        self.losses: list[float] = []
        self.run_id: str | None = None
        self.divergence_factor = divergence_factor
        self.name = name  # the run's name, as MLflow shows it: what the log calls it

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
