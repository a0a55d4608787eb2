"""A fresh sqlite store, made whole before anyone sees it, and one that another client is making, waited for.

MLflow makes a store's schema on first use (a hundred migrations, seconds) with no lock of its own: two clients
doing it at once fail (``table evaluation_datasets already exists``), and a sweep then lost its parent run. This
project's processes take a file lock beside the database; other tools' clients (``mlflow ui``, a notebook) take
none, so a missing store is built under a private name and linked into place whole, and one behind MLflow's
schema is only read until its maker is done. Two of MLflow's helpers do the schema work
(``mlflow.store.db.utils``: ``_initialize_tables``, ``_get_latest_schema_revision``, what MLflow's own store
calls); where they are missing, MLflow makes the store in place as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path


def made_whole(db: Path) -> None:
    """A sqlite store is made whole before anyone sees it, and one that another client is making is waited for.

    MLflow makes a store's schema on first use (a hundred migrations, seconds) with no lock of its own; two
    clients doing it at once fail, and one cut short inside a migration can leave the store broken for good
    (``table _alembic_tmp_tags already exists`` on every later opening). Other tools' clients (mlflow ui, a
    notebook) take no lock of ours: so a missing store is made under a private name beside it and linked into
    place whole (a client that comes later finds it complete), and one that exists but is behind MLflow's schema
    is only read until its maker is done."""
    if not db.exists():
        try:
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables
        except ImportError:  # another MLflow: it makes the store itself
            return
        private = db.parent / f".{db.name}.new-{os.getpid()}"
        private.unlink(missing_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{private}")
        try:
            _initialize_tables(engine)
            engine.dispose()
            os.link(private, db)  # never over a store that another client began meanwhile
            return
        except FileExistsError:
            pass
        except OSError as e:  # a file system without hard links: MLflow makes the store in place, as it would
            if e.filename is None or Path(e.filename) != private:
                raise
            return
        finally:
            engine.dispose()
            private.unlink(missing_ok=True)
    _settled(db)


def _settled(db: Path, quiet: float = 4.0, wait: float = 90.0) -> None:
    """Until the store's schema is MLflow's latest, or nothing in it changed for ``quiet`` seconds (an older
    store, or one left half made: MLflow then says what is wrong), reading only."""
    if _head_revision() is None:
        return
    deadline, last, since = time.monotonic() + wait, None, time.monotonic()
    while True:
        state = _schema_state(db)
        if state[0] is not None and state[0] == _head_revision():
            return
        now = time.monotonic()
        if state != last:
            last, since = state, now
        elif now - since > quiet or now > deadline:
            return
        time.sleep(0.2)


def _schema_state(db: Path) -> tuple[str | None, int, int]:
    """(the store's schema revision, or None; the file's size and time of change)."""
    import sqlite3

    try:
        st = db.stat()
    except OSError:
        return None, -1, 0
    version = None
    with contextlib.suppress(Exception):
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)) as c:
            version = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    return version, st.st_size, st.st_mtime_ns


@functools.cache
def _head_revision() -> str | None:
    """MLflow's latest schema revision (the one every store it opens must have), or None where unknown."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        return _get_latest_schema_revision()
    except Exception:
        return None


@contextlib.contextmanager
def creation_lock(db: Path | None) -> Iterator[None]:
    """Serialize the opening of a sqlite store across this project's processes: MLflow creates and migrates the
    schema on first use, and several processes doing that at once crash on each other's tables. The lock is a
    file beside the database (``.<name>.lock``); another tool's client (mlflow ui) takes none: ``made_whole``
    and the store's retries deal with it. ``db``: the database file of a sqlite store, else None (no lock)."""
    if db is None:
        yield
        return
    import fcntl

    if db.exists() and db.stat().st_size > 0 and not _is_sqlite(db):
        raise RuntimeError(f"{db} exists but is not a sqlite database")
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"
