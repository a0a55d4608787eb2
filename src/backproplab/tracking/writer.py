"""The writer process: ``python -m backproplab.tracking.writer <in fd> <out fd>``, started by ``tracking.remote``.

It serves one run after another: ``open`` (the config and the Hydra context of the job), ``steps``, ``finish`` (a
``tracking.run.Summary``) and ``exit`` (ok, error or interrupt), each handed to an ``MlflowTracker`` as the training
process would have called it. Its log lines go back to that process, which prints them where its own go.

Signals: SIGTERM is ignored (the training process ends the run); SIGINT, which the training process sends when it is
interrupted, raises KeyboardInterrupt here while a write waits for a server, so that it stops waiting, as it would
in that process (``stop_waiting``). A reader thread keeps the inbox drained: training never waits for a slow store.
When the training process is gone (its pipe closed), an open run ends KILLED and the writer exits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("backproplab")
DRAIN_S = 30.0  # interrupted: how long to wait for the training process's last steps and its exit message


class Failed(Exception):
    """The training process's error, carried here by its message: the run's failure_reason."""


class Forward(logging.Handler):
    """This process's ``backproplab`` log records, sent to the training process."""

    def __init__(self, out: Connection) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        reply(self.out, "log", record.levelno, record.name, record.getMessage())


def reply(out: Connection, *message: Any) -> None:
    from backproplab.tracking.store import interrupts_held

    with interrupts_held(), contextlib.suppress(OSError):  # sent whole; OSError: the training process is gone
        out.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


class Inbox:
    """The messages of the training process, read by a thread of their own; ``eof`` once its pipe closes."""

    def __init__(self, conn: Connection) -> None:
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.in_run = False
        self.closed = False  # the pipe is closed: once the queue is empty, every get is "eof"
        self.tracker: Any = None  # the open run's MlflowTracker
        threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                self.queue.put(pickle.loads(conn.recv_bytes()))
            except (EOFError, OSError):
                self.closed = True
                self.queue.put(("eof",))
                if self.in_run:  # the training process is gone: stop any wait, end the run KILLED
                    os.kill(os.getpid(), signal.SIGINT)
                return

    def get(self, timeout: float | None = None) -> tuple[Any, ...]:
        if self.closed and self.queue.empty():
            return ("eof",)
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return ("eof",)


def restore(context: dict[str, Any]) -> None:
    """The training process's job, as this process's own: environment, cwd, argv (MLflow's source tags), the
    Hydra config (output dir, overrides, sweep), the log level."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    setup_globals()  # Hydra's resolvers (now, hydra), as its launchers register them in their workers
    os.environ.clear()
    os.environ.update(context["env"])
    os.chdir(context["cwd"])
    sys.argv = list(context["argv"])
    if context["hydra"] is not None:  # a plain dict: typed again as Hydra's schema, as HydraConfig requires
        from hydra.conf import HydraConf

        typed = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(typed, False)  # the job's config may hold keys the schema lacks
        typed.merge_with(context["hydra"])
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": typed}))
    else:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    log.setLevel(context["level"])


def prefetch(names: list[str]) -> None:
    """What the run's last writes import, loaded while the training process imports its trainer."""
    import matplotlib.backends.backend_agg  # noqa: F401  # the curve and fit figures
    import mlflow.data  # noqa: F401

    if "torch" in names:
        # mlflow.pytorch imports pytorch_lightning when it is installed (for its autolog callback: seconds, the
        # whole Lightning stack again); this process only saves a plain torch module. None in sys.modules makes
        # that import fail, a case MLflow handles ("pytorch-lightning is not installed").
        sys.modules.setdefault("pytorch_lightning", None)  # type: ignore[arg-type]
        import mlflow.pytorch  # noqa: F401
        import torch  # noqa: F401


def serve_run(context: dict[str, Any], inbox: Inbox, out: Connection) -> None:
    """One run, from ``open`` to its ``exit``; always answers the exit (``closed``, ``away`` or ``failed``)."""
    from backproplab.tracking.run import MlflowTracker
    from backproplab.tracking.spool import ServerAway
    from backproplab.tracking.store import TrackingError

    restore(context)
    tracker = MlflowTracker(context["cfg"])
    try:
        tracker.__enter__()
    except (TrackingError, KeyboardInterrupt) as e:
        reply(out, "refused", str(e) or "interrupted while opening the run")
        return
    reply(out, "opened", tracker.run_id)
    inbox.tracker = tracker
    message: tuple[Any, ...] = ("open",)
    try:
        with contextlib.ExitStack() as entered:
            entered.push(tracker)  # entered above: its __exit__ ends the run with the right status
            try:
                while (message := inbox.get())[0] not in ("exit", "eof"):
                    kind, *rest = message
                    if kind == "steps":  # all kept before any write: an interrupted write loses none of them
                        for step, loss in rest[0]:
                            tracker.keep(step, loss)
                        tracker.flush_if_due()
                    elif kind == "prefetch":
                        prefetch(rest[0])
                        reply(out, "prefetched")
                    elif kind == "finish":
                        tracker.record(rest[0])
                        reply(out, "recorded")
            except KeyboardInterrupt:  # keep the steps still on their way, then end the run KILLED
                while message[0] not in ("exit", "eof"):
                    if (message := inbox.get(timeout=DRAIN_S))[0] == "steps":
                        for step, loss in message[1]:
                            tracker.keep(step, loss)
                message = ("exit", "interrupt")
            if message[0] == "eof" or message[1] == "interrupt":  # eof: the training process is gone
                raise KeyboardInterrupt
            if message[1] == "error":
                raise Failed(message[2])
    except (KeyboardInterrupt, Failed) as e:
        notes = getattr(e, "__notes__", None)
        reply(out, "closed", notes[0] if notes else None)
    except ServerAway as e:
        reply(out, "away", str(e))
    except Exception as e:  # a store that refused a write: the run has its status; the trainer's process says it
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        reply(out, "failed", f"cannot write to the MLflow store: {reason}")
    else:
        reply(out, "closed", None)


def stop_waiting(inbox: Inbox) -> Any:
    """The SIGINT handler during a run: it cuts short a wait for the server (or the opening), as a Ctrl-C does
    in the training process. Otherwise there is nothing to cut: the exit message says the run was interrupted,
    and a KeyboardInterrupt raised anywhere else could only disturb the run's ending."""

    def handler(signum: int, frame: object) -> None:
        if inbox.tracker is None or inbox.tracker.waiting:
            raise KeyboardInterrupt

    return handler


def main(fd_in: int, fd_out: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # outside a run; the training process sends it after "hello"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = Connection(fd_out, readable=False)
    inbox = Inbox(Connection(fd_in, writable=False))
    handler = Forward(out)
    log.addHandler(handler)
    log.propagate = False
    reply(out, "hello")
    while True:
        try:
            if (message := inbox.get())[0] == "eof":
                break
            if message[0] == "open":
                signal.signal(signal.SIGINT, stop_waiting(inbox))
                inbox.in_run = True
                try:
                    serve_run(message[1], inbox, out)
                finally:
                    inbox.in_run = False
                    inbox.tracker = None
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
        except KeyboardInterrupt:  # a late one, its run already answered
            continue
    gc.freeze()  # every write is done: nothing to collect at exit (MLflow and torch would take seconds)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
