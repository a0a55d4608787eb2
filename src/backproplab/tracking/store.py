"""The MLflow store: which one (the user's choice or MLflow's default), opened so that a bad one fails in
seconds with one line, before any training; sqlite's one-writer lock met with back-off."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omegaconf import DictConfig

from backproplab.runtime import launch_dir, mask_secrets

log = logging.getLogger("backproplab")
EXPERIMENT_TAGS = {
    # MLflow 3's UI opens an experiment of this kind on its model-training view (runs, metric charts)
    "mlflow.experimentKind": "custom_model_development",
}
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag on a child run
SWEEP_TAG = "backproplab.sweep_dir"  # on a multirun's parent run; jobs find their parent by it

OPEN_TAG = "backproplab.open_id"  # a run's opening request: a retried create finds the run it made
SWEPT_TAG = "backproplab.swept"  # on the parent: the keys the sweep varies, which the children's names show
# on a run: the keys it was asked to choose itself (trainer.threads=auto); their params hold what it chose
AUTO_TAG = "backproplab.auto"
JOB_TAG = "backproplab.job"  # on a sweep's child run: its job number, the sweep's order
GROUP_TAG = "backproplab.group"  # on a sweep's child run: its group's label (tracking/groups.py)
HOST_TAG = "backproplab.host"  # on a run: the machine it trained on (runs that overlapped there shared its CPUs)
SLURM_TAG = "backproplab.slurm_job"  # on a run made by a Slurm job: its job id (<array>_<task>)
RESTARTS_TAG = "backproplab.slurm_restarts"  # on a run that went on after Slurm restarted its job: how many times


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; raised before any training starts."""

def chosen_uri(logger_cfg: DictConfig) -> str | None:
    """The store the user chose (``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``), or None: the default."""
    uri = logger_cfg.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri) if uri else None

def default_store() -> tuple[str, str | None]:
    """Where scripts/train.py records from this directory when nothing says otherwise (MLFLOW_TRACKING_URI counts)."""
    from omegaconf import OmegaConf

    return store_location(OmegaConf.create({"tracking_uri": None}))


def store_location(logger_cfg: DictConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact root for new experiments).

    ``logger.tracking_uri`` wins, then MLflow's own ``MLFLOW_TRACKING_URI``; the default is MLflow's default,
    ``sqlite:///<launch dir>/mlflow.db``, so that ``mlflow ui``, ``mlflow runs list`` and ``runs:/`` URIs find
    the runs from the launch directory with no flags. Artifacts go to ``<launch dir>/mlruns/``. Both absolute.
    """
    if uri := chosen_uri(logger_cfg):
        return uri, None
    here = launch_dir().resolve()
    return f"sqlite:///{here / 'mlflow.db'}", (here / "mlruns").as_uri()


def _note_older_store(uri: str) -> None:
    """A new default store beside the one this project used before (./mlruns/mlflow.db): say how to keep it."""
    db = Path(uri.removeprefix("sqlite:///"))
    old = db.parent / "mlruns" / "mlflow.db"
    if old.is_file() and not db.exists():
        log.warning(
            "this run records in %s (MLflow's default store); the runs of %s stay there: to keep using that "
            "store, run with logger.tracking_uri=sqlite:///%s", db, old, old,
        )

def open_store(logger_cfg: DictConfig) -> tuple[Any, str]:
    """(MlflowClient, experiment id), or one clear TrackingError: an unwritable directory, a file that is
    not a sqlite database, a locked database or an unreachable server must stop a run before it trains,
    not after an hour of training with nowhere to write."""
    from mlflow.tracking import MlflowClient

    uri = str(logger_cfg.get("tracking_uri") or "")
    try:
        uri, artifact_location = store_location(logger_cfg)
        if chosen_uri(logger_cfg) is None:
            _note_older_store(uri)
        if uri.startswith(("http://", "https://")):
            probe(uri)
        with _creation_lock(uri):
            client = MlflowClient(uri)
            name = logger_cfg.experiment_name
            # one artifact folder per experiment: mlruns/<experiment>/<run id>/artifacts, .../models/...
            where = f"{artifact_location}/{quote(name, safe='')}" if artifact_location else None
            exp_id = get_or_create_experiment(client, name, where)
    except Exception as e:  # MLflow raises many types here; all mean the same thing to the user
        reason = refusal(str(e)) or (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise TrackingError(
            f"logger.tracking_uri={mask_secrets(uri) or '(default)'}: cannot open the MLflow store: {reason[:300]}"
            " (fix the path/server, or run with logger=none)"
        ) from None
    return client, exp_id

LOGIN = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def refusal(message: str) -> str | None:
    """What a server's 401 or 403 means to the user, in place of MLflow's long response text."""
    if "error code 401" in message:
        return f"the server did not accept the login (HTTP 401): set {LOGIN} to an account of this server"
    if "error code 403" in message:
        return "the server's account lacks permission for this experiment (HTTP 403): ask its admin"
    return None


def probe(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when nothing listens."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass

@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Serialize the first opening of a sqlite store across processes: MLflow creates the schema on first
    use, and several processes doing that at once crash on migration races."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists() and db.stat().st_size > 0 and not _is_sqlite(db):
        raise TrackingError(f"{db} exists but is not a sqlite database")
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"

def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
        except Exception:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    return exp.experiment_id

def find_parent_run(client: Any, experiment_id: str, sweep: str) -> Any:
    """The multirun's parent run (created by the sweep callback), or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1
    )
    return runs[0] if runs else None

@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block to end, then arrive as they would have. A database write cut short
    by KeyboardInterrupt can leave its connection holding sqlite's write lock (SQLAlchemy 2.1, pysqlite): every
    later write of the process, the run's KILLED status included, then waits on that lock for minutes."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    caught: list[int] = []
    # a handler set outside Python (getsignal: None) cannot be put back: such a signal is not held
    before = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not None}
    for s in before:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):  # to the handlers they were meant for: KeyboardInterrupt, Terminated
            signal.raise_signal(s)


def retry_locked(write: Any, *args: Any, attempts: int = 6, hold_interrupts: bool = False, **kwargs: Any) -> Any:
    """sqlite allows one writer at a time; under parallel sweep jobs a write can time out on the lock.
    Back off and retry rather than lose the steps. Every write of a run goes through here; a write to a
    database (not a server) is finished before a Ctrl-C arrives (``interrupts_held``)."""
    for i in range(attempts):
        try:
            with interrupts_held() if hold_interrupts else contextlib.nullcontext():
                return write(*args, **kwargs)
        except Exception as e:
            if "database is locked" not in str(e) or i == attempts - 1:
                raise
            delay = 0.2 * 2**i
            log.warning("the MLflow store is locked by another writer: %s retried in %.1f s (%d of %d)",
                        getattr(write, "__name__", "a write"), delay, i + 1, attempts - 1)
            time.sleep(delay)
