"""A run's progress line in a terminal: steps done of total, the loss and steps/s, redrawn a few times a second.

The harness (backproplab.run) draws it from the step hook every trainer already calls, so every trainer gets the
same line and none imports this module. Drawing is rich's Progress (one task, no refresh thread): the hook only
stores the step and reads the clock (~0.1 us), and rich renders at most every ``REDRAW_S``. A redraw costs ~0.6 ms,
more than a whole tutorial step (~0.5 ms): drawn every step, it would double a numpy run's time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from backproplab.runtime import is_rank_zero, sweep_dir
from backproplab.steps import OnStep

if TYPE_CHECKING:
    from rich.progress import Progress

REDRAW_S = 0.25  # four redraws a second: live enough to read, and ~0.25% of a loop's time (measured)
RATE_WINDOW = 12  # steps/s over the last ~3 s of redraws: an MLflow flush (~20 ms) or a compile does not jump it
IN_PROCESS = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"  # Hydra's default: one job at a time, here


def wanted(cfg: DictConfig) -> bool:
    """``trainer.progress_bar``: true draws, false never; auto draws when stdout is a terminal that this process
    has to itself (not a parallel worker)."""
    setting = cfg.trainer.get("progress_bar", "auto")
    if str(setting) == "auto":
        return sys.stdout.isatty() and not parallel_worker()
    return bool(setting)


def parallel_worker() -> bool:
    """Whether this job may share its output with others running at the same time: a sweep job of any launcher but
    Hydra's basic one (joblib's and submitit's workers, Slurm's jobs), a threaded launcher's thread, or a
    distributed run's process other than rank 0. Their lines would overwrite each other's."""
    if not is_rank_zero() or threading.current_thread() is not threading.main_thread():
        return True
    if sweep_dir() is None:
        return False
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().launcher.get("_target_") != IN_PROCESS


class Bar:
    """The step hook that records (``record``), then redraws the line when ``REDRAW_S`` has passed.

    ``on_step`` is the hook to hand the trainer: ``record`` itself when nothing is drawn, so that a run without a
    terminal calls exactly what it called before."""

    def __init__(self, record: OnStep, total: int, progress: Progress | None = None) -> None:
        self.record, self.total, self.progress = record, total, progress
        self.on_step: OnStep = record if progress is None else self._on_step
        self.step, self.loss, self.count = -1, float("nan"), 0  # the last step recorded; steps seen in this process
        self.next_draw = 0.0  # the first step is drawn at once
        self.marks: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)  # (time, count) at each redraw
        self.rate: float | None = None
        self.task = progress.add_task("train", total=total, loss="", rate="") if progress is not None else None

    def _on_step(self, step: int, loss: float) -> None:
        self.record(step, loss)  # first: a diverged step raises before it is drawn
        self.step, self.loss = step, loss
        self.count += 1
        if time.perf_counter() >= self.next_draw:
            self.draw()

    def draw(self) -> None:
        """Redraw the line with the last step recorded; steps/s over the last few redraws."""
        now = time.perf_counter()
        self.marks.append((now, self.count))
        then, counted = self.marks[0]
        if now > then:
            self.rate = (self.count - counted) / (now - then)
        self.show()
        self.next_draw = time.perf_counter() + REDRAW_S  # after the draw: a slow terminal is not drawn to all along

    def show(self, refresh: bool = True) -> None:
        if self.progress is None or self.task is None or self.step < 0:  # nothing drawn, or no step yet
            return
        self.progress.update(
            self.task, completed=self.step + 1, loss=f"loss {float(self.loss):.4g}", rate=steps_per_s(self.rate)
        )
        if refresh:
            self.progress.refresh()

    def finish(self, loop_s: float) -> None:
        """The final line keeps the steps/s last drawn; a run too short for two redraws, or whose steps came all at
        once after its loop (a spawned DDP run's curve, handed back), has none: its steps over its loop time."""
        if self.rate is None and loop_s > 0 and self.count:
            self.rate = self.count / loop_s


def steps_per_s(rate: float | None) -> str:
    if rate is None:
        return ""
    return f"{rate:,.0f} steps/s" if rate >= 100 else f"{rate:.3g} steps/s"


@contextmanager
def bar(cfg: DictConfig, record: OnStep) -> Iterator[Bar]:
    """The run's progress line while the trainer runs (``with bar(cfg, rec.on_step) as b: train(..., b.on_step)``);
    none when ``trainer.progress_bar`` says so. It ends as the run ends, however it ends, with its last line kept."""
    if not wanted(cfg):
        yield Bar(record, int(cfg.trainer.max_steps))
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    forced = str(cfg.trainer.get("progress_bar")) != "auto"  # true: drawn as to a terminal, whatever stdout is
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        console=Console(force_terminal=True if forced else None),
        auto_refresh=False,  # drawn from the step hook: no thread of its own taking the GIL from the loop
    )
    shown = Bar(record, int(cfg.trainer.max_steps), progress)
    with progress, logs_above():
        try:
            yield shown
        finally:
            shown.show(refresh=False)  # the last step recorded: drawn once more as rich stops, and left there


@contextmanager
def logs_above() -> Iterator[None]:
    """Log lines written while the line is drawn go above it, as rich does for print: Hydra's console handler holds
    the real stdout, which rich's redirection of ``sys.stdout`` does not reach, and its lines would land on the bar."""
    proxied = {getattr(s, "rich_proxied_file", None): s for s in (sys.stdout, sys.stderr)}
    proxied.pop(None, None)
    if not proxied:  # rich redirects nothing when its console is not a terminal
        yield
        return
    named = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(g for g in named if isinstance(g, logging.Logger))]
    swapped = [  # Hydra's console handler on the root logger, and libraries' own (Lightning's, on its logger)
        (h, h.stream) for g in loggers for h in g.handlers
        if type(h) is logging.StreamHandler and h.stream in proxied  # not FileHandler: the job's log file
    ]
    for handler, stream in swapped:
        handler.setStream(proxied[stream])
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)
