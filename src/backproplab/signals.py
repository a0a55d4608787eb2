"""Ctrl-C and SIGTERM end a run as KILLED (exit 130 / 143), wherever the code is when they come.

Python raises a signal's exception in whatever code runs at that moment. When that is a finalizer (an object's
``__del__``, a weakref callback: matplotlib and SQLAlchemy run many), Python prints "Exception ignored" and drops
the exception, and the run went on as if nobody had asked it to stop; inside a library's own cleanup (OmegaConf's
flag context managers) the interrupt came out as another error, and the run was recorded FAILED with it. Of 400
SIGTERMs sent at random moments of an in-process numpy run, 7 runs FINISHED though signalled mid-run and 2 were
recorded FAILED with an OmegaConf error; with the signal noted as below, none of either.

So the handlers here also note the signal, and the run asks for it where it is safe to act on it: at every step
(:meth:`backproplab.steps.Recorder.on_step`), and when its record closes (an error then reads as the interrupt).

A scheduler's time-limit warning (Slurm's ``--signal``) is noted and never raised: a trainer that keeps checkpoints
acts on it at the end of its step (:class:`Requeue`), and the job is then handed to the launcher's own handler for
that signal (submitit's, which requeues it). A trainer without checkpoints trains on; its run's KILLED reason, if
the limit then stops it, says the warning came.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

_received: KeyboardInterrupt | None = None  # the interrupt this process was sent, once it was sent
_warning: int | None = None  # the time-limit warning's signal, once it came
_launcher_handler: Any = None  # what the launcher had set for that signal (submitit: checkpoint and requeue)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the run is flushed and marked KILLED."""


class Requeue(BaseException):  # not an error: the run stops to go on in a requeued job
    """The time-limit warning, acted on at the end of ``step``: the trainer saved its checkpoint there, and the
    job is to be requeued to resume from it into the same run."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step
        self.run_id: str | None = None  # the run it closed, set by the record (for a requeue that is declined)


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    raise _received


def _warned(signum: int, frame: object) -> None:
    global _warning
    _warning = signum


def install(warning: int | None = None) -> Callable[[], None]:
    """Handle SIGTERM, and Ctrl-C where Python's default handler has it (not where a launcher chose to ignore it),
    from the main thread; and note ``warning``, a scheduler's time-limit warning, keeping the launcher's handler
    for :func:`hand_over`. Returns what puts the previous handlers back and forgets the signals (the next job of
    an in-process sweep, or a test, starts clean)."""
    global _received, _warning, _launcher_handler
    _received = _warning = None
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _handler)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handler)
    if warning is not None:
        previous[warning] = _launcher_handler = signal.signal(warning, _warned)

    def restore() -> None:
        global _received, _warning, _launcher_handler
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received = _warning = _launcher_handler = None

    return restore


def received() -> KeyboardInterrupt | None:
    """The interrupt this process was sent (raised already, and maybe dropped on the way), or None."""
    return _received


@contextlib.contextmanager
def warning_ignored() -> Iterator[None]:
    """A distributed run ignores the time-limit warning: its ranks could not agree on the step to stop at, and the
    processes that Lightning spawns inherit an ignored signal, where the warning's default action would kill them."""
    signum = next((s for s in signal.valid_signals() if signal.getsignal(s) is _warned), None)
    if signum is None or _launcher_handler is None:
        yield
        return
    signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, _warned)


def warned() -> bool:
    """The time-limit warning has come."""
    return _warning is not None


def describe(interrupt: BaseException, checkpoints: bool) -> str:
    """Why a run stopped, for its KILLED status; ``checkpoints``: whether the run keeps any to be requeued from."""
    name = signal.Signals(_warning).name if _warning is not None else "the time-limit warning"
    if isinstance(interrupt, Requeue):
        return (f"Slurm's time-limit warning ({name}) came; the run saved a checkpoint at step {interrupt.step}"
                " and its job is requeued to resume into this run")
    if not isinstance(interrupt, Terminated):
        return "stopped by Ctrl-C (SIGINT)"
    why = "stopped by SIGTERM (scancel, a scheduler's time limit, or kill)"
    if _warning is not None and not checkpoints:
        why += (f"; Slurm's time-limit warning ({name}) came first, and this run keeps no checkpoints, so its job"
                " was not requeued")
    return why


def hand_over() -> None:
    """Hand the job to the launcher's handler for the time-limit warning: submitit's pickles the call again,
    requeues the job (``scontrol requeue``) and exits; or it raises why it will not (too many time-outs).
    SIGTERM is ignored from here: the requeue sends one, and the record is already closed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if callable(_launcher_handler) and _warning is not None:
        _launcher_handler(_warning, None)
    raise RuntimeError("no launcher handler for the time-limit warning: the job cannot be requeued")


def check() -> None:
    """A safe point: an interrupt whose exception was dropped is raised again here."""
    if _received is not None:
        raise _received
