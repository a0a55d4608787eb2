"""The training process's side of the record: a run's MLflow writes happen in a writer process beside it.

MLflow's import, the store's opening, the run's creation and the end-of-run writes take seconds of CPU; on a
machine with a second core they need not hold up training. :class:`RemoteTracker` is the run's ``on_step`` in
the training process: it keeps the curve and stops a diverging run (``Recorder``), and sends the steps, the
summary and the run's end to ``tracking.writer``, where ``tracking.run.MlflowTracker`` writes them exactly as it
would in this process: the same batches, retries, spool and statuses.

One writer serves every run of the process in turn (a sweep's jobs), so MLflow is imported once. The writer runs
in a session of its own: a Ctrl-C typed in the terminal reaches this process only, which passes it on.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from backproplab.steps import Recorder
from backproplab.tracking.store import TrackingError, interrupts_held

log = logging.getLogger("backproplab")
SEND_EVERY_S = 0.1  # steps go to the writer at most this late (the writer batches its own writes)
SEND_EVERY_STEPS = 512
ENDS = ("closed", "away", "failed", "refused")  # the writer is done with the run: how it ended


class Writer:
    """The writer process and its two pipes (pickled messages, ``("kind", ...)``)."""

    def __init__(self) -> None:
        to_writer, self._out = os.pipe()
        self._in, from_writer = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])  # importable as in this process (PYTHONPATH=src)
        paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        safe = ["-P"] if sys.version_info >= (3, 11) else []  # not the cwd on sys.path
        self.proc = subprocess.Popen(
            [sys.executable, *safe, "-m", "backproplab.tracking.writer", str(to_writer), str(from_writer)],
            pass_fds=(to_writer, from_writer), stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        )
        os.close(to_writer)
        os.close(from_writer)
        self.out = Connection(self._out, readable=False)
        self.inbox = Connection(self._in, writable=False)
        self.listening = False  # the writer said "hello": from then on SIGINT means "stop waiting, end the run"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, *message: Any) -> None:
        try:
            with interrupts_held():  # a message is sent whole, or the stream would be corrupt
                self.out.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the pipe is broken
            self.gone()

    def gone(self) -> NoReturn:
        code = self.proc.wait()
        raise TrackingError(f"the MLflow writer process ended unexpectedly (exit {code})")

    def receive(self, timeout: float | None = None) -> tuple[Any, ...] | None:
        """The next message; None when ``timeout`` passes first. The writer gone: TrackingError."""
        if timeout is not None and not self.inbox.poll(timeout):
            return None
        try:
            return pickle.loads(self.inbox.recv_bytes())
        except (EOFError, OSError):
            self.gone()

    def interrupt(self) -> None:
        if self.listening and self.alive():
            os.kill(self.proc.pid, signal.SIGINT)


_writer: Writer | None = None  # this process's writer, started by its first tracked run


def writer() -> Writer:
    global _writer
    if _writer is None or not _writer.alive():
        _writer = Writer()
    return _writer


class RemoteTracker(Recorder):
    """One MLflow run, written by the writer process: opened on enter (the writer opens it while this process
    imports its trainer), checked by ``ready()`` before training, ended with the right status on exit."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg.trainer.get("divergence_factor"))
        self.cfg = cfg
        self._t0 = time.perf_counter()
        self._unsent: list[tuple[int, float]] = []
        self._sent_at = self._t0
        self._end: tuple[str, Any] | None = None  # the writer's last word on this run (ENDS)
        self._exiting = False

    def __enter__(self) -> RemoteTracker:
        from hydra.core.hydra_config import HydraConfig

        self.w = writer()
        hydra = None
        if HydraConfig.initialized():
            job = HydraConfig.get()
            hydra = OmegaConf.to_container(job)
            for key in ("run", "sweep"):  # ${now:...}: read here, once, not again when the writer reads it
                hydra[key]["dir"] = str(job[key].dir)  # type: ignore[index]
        context = {"cfg": self.cfg, "hydra": hydra, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ),
                   "level": log.getEffectiveLevel()}
        self.w.send("open", context)
        # what the run's last writes need, loaded by the writer while this process imports its trainer (a torch
        # trainer says so in conf/trainer/<name>.yaml: supports.torch_model)
        torch_model = bool(self.cfg.trainer.get("supports", {}).get("torch_model", False))
        self.w.send("prefetch", ["torch"] if torch_model else [])
        return self

    def ready(self) -> None:
        """Wait for the run to be open, and for the writer to be idle: a store that cannot be used stops the run
        here, before training, and the writer's imports do not compete with training for the CPUs."""
        self._until({"prefetched"})

    def _handle(self, message: tuple[Any, ...]) -> str:
        kind, *rest = message
        if kind == "log":
            level, name, text = rest
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "hello":
            self.w.listening = True
        elif kind == "opened":
            self.run_id = rest[0]
        elif kind in ENDS:
            self._end = (kind, rest[0])
            if kind in ("refused", "failed") and not self._exiting:  # the run cannot be recorded: stop training
                raise TrackingError(rest[0])
        return kind

    def _until(self, wanted: set[str]) -> None:
        while self._end is None and self._handle(self.w.receive()) not in wanted:
            pass

    # -- per step --------------------------------------------------------------------------------
    def on_step(self, step: int, loss: float) -> None:
        super().on_step(step, loss)
        self._unsent.append((step, self.losses[-1]))
        if len(self._unsent) >= SEND_EVERY_STEPS or time.perf_counter() - self._sent_at > SEND_EVERY_S:
            self._send_steps()

    def _send_steps(self) -> None:
        if self._unsent:
            with interrupts_held():  # sent and forgotten together: no step twice, none lost
                self.w.send("steps", self._unsent)
                self._unsent = []
        self._sent_at = time.perf_counter()
        while self._end is None and (message := self.w.receive(timeout=0)) is not None:
            self._handle(message)

    # -- at the end ------------------------------------------------------------------------------
    def finish(self, result: Any, problem: Any) -> None:
        from backproplab.tracking.run import summarize

        self._send_steps()
        self.w.send("finish", summarize(result, problem, len(self.losses), self._t0))
        self._until({"recorded"})

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        from backproplab.tracking.spool import ServerAway

        self._exiting = True
        interrupted = isinstance(exc, KeyboardInterrupt)
        again: KeyboardInterrupt | None = None
        told = False  # the writer has this run's exit message
        try:
            if self._end is None:
                self._send_steps()
                self.w.send("exit", "ok" if exc is None else "interrupt" if interrupted else "error", str(exc or ""))
                told = True
                if interrupted:  # the writer may be waiting for a server: it stops waiting, as this process would
                    self.w.interrupt()
                self._until(set(ENDS))
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM during the record's last writes: they hurry
            again = e
            if not told:
                self._send_steps()
                self.w.send("exit", "interrupt", "")
            self.w.interrupt()
            self._until(set(ENDS))
        kind, text = self._end or ("closed", None)
        if kind == "closed" and text and (exc or again) is not None:  # the spool's note, with the run's own error
            (exc or again).add_note(text)  # type: ignore[union-attr]
        elif kind == "away" and exc is None:
            raise ServerAway(text)
        elif kind in ("failed", "refused") and exc is None:
            raise TrackingError(text)
        elif kind == "failed":  # the run's own error goes on, with this one beside it
            (exc or again).add_note(text)  # type: ignore[union-attr]
        if again is not None:
            raise again
        return False
