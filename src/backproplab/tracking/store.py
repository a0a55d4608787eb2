"""The MLflow store: which one (the user's choice or MLflow's default), opened so that a bad one fails in
seconds with one line, before any training; sqlite's one-writer lock met with back-off."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omegaconf import DictConfig

from backproplab.runtime import launch_dir, mask_secrets
from backproplab.tracking.fresh import creation_lock, made_whole

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
    """(tracking URI, artifact root for new experiments, or None where MLflow or its server decides).

    ``logger.tracking_uri`` wins, then MLflow's own ``MLFLOW_TRACKING_URI``; the default is MLflow's default,
    ``sqlite:///<launch dir>/mlflow.db``, so that ``mlflow ui``, ``mlflow runs list`` and ``runs:/`` URIs find
    the runs from the launch directory with no flags. A sqlite store keeps its artifacts beside it
    (``artifact_folder``): the default's in ``<launch dir>/mlruns/``. Both absolute.
    """
    uri = chosen_uri(logger_cfg) or f"sqlite:///{launch_dir().resolve() / 'mlflow.db'}"
    db = sqlite_file(uri)
    return uri, (artifact_folder(db).as_uri() if db else None)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite URI, absolute (a relative one is relative to this process's directory, as
    MLflow opens it), or None: not sqlite, or in memory."""
    if not uri.startswith("sqlite:///"):
        return None
    from sqlalchemy.engine import make_url

    try:
        path = make_url(uri).database  # the file sqlite opens: a query (?timeout=...) is not part of it
    except Exception:
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).absolute()


def artifact_folder(db: Path) -> Path:
    """Where a sqlite store's new experiments keep their artifacts: beside the database, named after it, so that
    two databases in one folder never share one. MLflow's default name, mlflow.db, keeps MLflow's default
    folder, ``mlruns`` (what ``mlflow ui`` and ``make ui`` serve); any other, ``<name>-artifacts``
    (``key.db`` -> ``key.db-artifacts``, the way sqlite names its own ``key.db-journal``)."""
    return db.parent / ("mlruns" if db.name == "mlflow.db" else f"{db.name}-artifacts")


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
    uri = str(logger_cfg.get("tracking_uri") or "")
    try:
        uri, artifact_location = store_location(logger_cfg)
        if chosen_uri(logger_cfg) is None:
            _note_older_store(uri)
        if uri.startswith(("http://", "https://")):
            probe(uri)
        elif artifact_location is None:
            _note_database_artifacts(uri)
            probe_database(uri)
        with creation_lock(sqlite_file(uri)):
            if db := sqlite_file(uri):
                made_whole(db)
            name = logger_cfg.experiment_name
            # one artifact folder per experiment: mlruns/<experiment>/<run id>/artifacts, .../models/...
            where = f"{artifact_location}/{quote(name, safe='')}" if artifact_location else None
            client, exp_id = _opened(uri, name, where)
        if where:
            _note_kept_location(client, uri, name, exp_id, where)
    except Exception as e:  # MLflow raises many types here; all mean the same thing to the user
        reason = refusal(str(e)) or (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise TrackingError(
            f"logger.tracking_uri={mask_secrets(uri) or '(default)'}: cannot open the MLflow store: {reason[:300]}"
            " (fix the path/server, or run with logger=none)"
        ) from None
    return client, exp_id


# What MLflow raises when it creates or migrates a store's schema while another client (mlflow ui, a notebook,
# another sweep) does the same: each sees no tables, and the later of two CREATE TABLEs, ALTER TABLEs or DROP
# INDEXes fails, or a client finds the schema half made. Once the other client has finished, the store opens.
# (An older store's "out-of-date database schema" is not one: fresh.made_whole has waited for any migration.)
SCHEMA_RACE = re.compile(
    r"\b(table|relation|index|column)\b.* already exists|duplicate column|no such (table|index|column)|"
    r"online migration|database is locked|unique constraint failed: experiments",
    re.IGNORECASE,
)


LOCKED_WAIT = 10.0  # a store locked by another writer that long is held, not being created: say so


def _opened(uri: str, name: str, where: str | None, wait: float = 60.0) -> tuple[Any, str]:
    """(client, experiment id); a store that another client is creating at this moment is waited for (up to
    ``wait`` seconds; a lock alone, ``LOCKED_WAIT``), then opened: MLflow's schema creation takes no lock of its
    own."""
    from mlflow.tracking import MlflowClient

    start, delay = time.monotonic(), 0.2
    while True:
        try:
            client = MlflowClient(uri)
            return client, get_or_create_experiment(client, name, where)
        except Exception as e:
            locked = "database is locked" in str(e)
            limit = start + (LOCKED_WAIT if locked else wait)
            if not SCHEMA_RACE.search(str(e)) or time.monotonic() + delay > limit:
                raise
            log.debug("the MLflow store is being created by another client (%s): retried in %.1f s",
                      str(e).strip().splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


_said: set[tuple[str, ...]] = set()  # each note once a process: a run and a sweep open their store several times


def _once(*key: str) -> bool:
    if key in _said:
        return False
    _said.add(key)
    return True


def _as_path(location: str) -> str:
    """A file:// artifact location as the path a person types; any other as it is."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(location)
    return url2pathname(parts.path) if parts.scheme == "file" else mask_secrets(location)


def _note_database_artifacts(uri: str) -> None:
    """A database server's store (postgresql://, mysql://, ...) keeps no files: say where the artifacts go."""
    if _once("database", uri):
        log.warning(
            "logger.tracking_uri=%s keeps no files: MLflow puts the artifacts of a new experiment in %s/<experiment"
            " id>/ (on this machine), an existing experiment's where it was made to; to share them, record"
            " through a tracking server (logger.tracking_uri=http://...)",
            mask_secrets(uri), Path.cwd().resolve() / "mlruns",
        )


def _note_kept_location(client: Any, uri: str, name: str, exp_id: str, where: str) -> None:
    """An experiment made elsewhere (before artifacts went beside the store, or by another tool) keeps its
    artifact location: say where that is, once."""
    if not _once("kept", uri, exp_id):
        return
    try:
        location = retry_locked(client.get_experiment, exp_id).artifact_location or ""
    except Exception:  # a note must not stop a run
        return
    if location.rstrip("/") != where.rstrip("/"):
        log.warning(
            "experiment %r of %s keeps its artifacts where it was made to: %s (a new experiment of this store "
            "puts them in %s)", name, mask_secrets(uri), _as_path(location), _as_path(where.rsplit("/", 1)[0]),
        )


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
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    _reach(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), timeout)


DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def probe_database(uri: str, timeout: float = 5.0) -> None:
    """A database server's store: fail in seconds, not after MLflow's minutes of connection retries, when nothing
    listens at its host and port (a local socket, no host, is left to MLflow)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:
        return  # MLflow says what is wrong with it
    if url.host and url.get_backend_name() in DATABASE_PORTS:
        _reach(url.host, url.port or DATABASE_PORTS[url.get_backend_name()], timeout)


def _reach(host: str | None, port: int, timeout: float) -> None:
    import socket

    with socket.create_connection((host, port), timeout=timeout):
        pass

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
