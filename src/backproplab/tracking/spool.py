"""A run's record while its server is away, and the command that sends it later.

After a run has opened, everything it writes is an operation: a batch of metrics, tags, a file, a folder, the
dataset, the model, the end with its status. The tracker (``tracking.run``) applies each at once with ``send``:
bounded retries with back-off, so that a server restarted within ``logger.server_timeout`` seconds costs nothing.
When the server stays away longer, or the run is interrupted while waiting for it, the tracker appends that
operation and every later one to a spool instead: ``spool.jsonl`` (a line per operation, append-only) in the run's
output directory, with the files the operations name copied beside it. ``python scripts/sync.py <spool>`` applies
them later, in order and with the same ``apply``, noting each one sent in ``sent``: run twice, it sends nothing
twice, and the run's status comes last.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backproplab.runtime import mask_secrets
from backproplab.tracking.store import LOGIN, TrackingError, retry_locked

log = logging.getLogger("backproplab")
LINES, SENT = "spool.jsonl", "sent"


class ServerAway(TrackingError):
    """The tracking server did not answer for ``logger.server_timeout`` seconds."""


def transient(error: BaseException) -> bool:
    """A failure that a server coming back would cure: no connection, a timeout, a 5xx or 429 answer."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout)):
            return True
        if isinstance(seen, requests.HTTPError) and seen.response is not None:  # the artifact proxy's answer
            return seen.response.status_code == 429 or seen.response.status_code >= 500
        if isinstance(seen, MlflowException):
            # MLflow wraps a failed request as "API request to ... failed with (timeout) exception ..."
            if re.search(r"failed with (timeout )?exception", str(seen)):
                return True
            code = seen.get_http_status_code()  # a server's own error answer: 503 TEMPORARILY_UNAVAILABLE, ...
            return code == 429 or code >= 500
        seen = seen.__cause__ or seen.__context__
    return False


def duplicate_key(error: BaseException) -> bool:
    """A SQL store refused a row whose key another writer inserted first (sqlite, PostgreSQL, MySQL wording),
    met directly or through a tracking server's answer."""
    text = str(error)
    return any(words in text for words in (
        "UNIQUE constraint failed", "duplicate key value violates unique constraint", "Duplicate entry"))


def bound_http_retries(timeout: float) -> Callable[[], None]:
    """MLflow retries a request to a dead server for minutes (7 retries, exponential back-off): ``send`` does the
    retrying instead, within ``timeout``; one request waits at most ``timeout`` seconds for an answer. MLflow
    reads its variables at every request. Returns what puts them back as they were."""
    keys = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    before = {key: os.environ.get(key) for key in keys}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    current = int(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, min(current, int(timeout))))

    def restore() -> None:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def send(write: Callable[..., Any], *args: Any, timeout: float, server: bool = True,
         failing: Callable[[], None] | None = None, **kwargs: Any) -> Any:
    """``write(*args, **kwargs)``, retried with back-off while a tracking ``server`` is away, for at most ``timeout``
    seconds from the first failure (which calls ``failing``); then ServerAway. Other errors are raised at once
    (sqlite's lock is retried as everywhere, by ``retry_locked``). A write to a database, not a ``server``, is
    finished before a Ctrl-C arrives; a wait for a server is not."""
    deadline, delay = None, 0.5
    while True:
        try:
            return retry_locked(write, *args, hold_interrupts=not server, **kwargs)
        except Exception as e:
            if not (server and transient(e)):
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
                if failing:
                    failing()
            if now >= deadline:
                raise ServerAway(f"the tracking server did not answer for {timeout:g} s") from None
            log.warning("the tracking server did not answer: retried in %.1f s", min(delay, deadline - now))
            time.sleep(min(delay, deadline - now))
            delay = min(2 * delay, 8.0)


# -- the operations ----------------------------------------------------------------------------------------
# An operation is a dict: {"op": kind, ...}. "path" names a file or folder (absolute while the run holds it,
# relative to the spool once spooled); "object" is an in-memory payload (the model, the dataset's arrays),
# which the spool writes to a file.


def apply(client: Any, run_id: str, op: dict[str, Any], base: Path = Path("/")) -> str | None:
    """One operation, written to the run ``run_id`` through ``client``; a model's id for a "model" operation.
    A metric is ``[key, value, timestamp, step]``, and a fifth item links it to a logged model."""
    from mlflow.entities import Metric, RunTag

    kind = op["op"]
    path = base / op["path"] if "path" in op else None
    if kind == "metrics":
        metrics = [Metric(*m[:4], model_id=m[4] if len(m) > 4 else None) for m in op["metrics"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()], synchronous=True)
    elif kind == "file":
        client.log_artifact(run_id, str(path), op.get("dir"))
    elif kind == "folder":
        client.log_artifacts(run_id, str(path), op.get("dir"))
    elif kind == "dataset":
        _log_dataset(client, run_id, op, path)
    elif kind == "model":
        from backproplab.tracking.logged_model import log_model

        return log_model(client, run_id, op, path)
    elif kind == "end":
        client.set_terminated(run_id, op["status"])
    else:
        raise ValueError(f"unknown spool operation {kind!r}")


def _log_dataset(client: Any, run_id: str, op: dict[str, Any], path: Path | None) -> None:
    """The training data as an MLflow dataset input: the UI's Dataset column says what the run trained on."""
    import mlflow.data
    import numpy as np
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if "object" in op:
        x, y = op["object"]
    else:
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    dataset = mlflow.data.from_numpy(x, targets=y, name=op["name"])
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")]
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=tags)]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except Exception as e:
        # MLflow's SQL store looks the dataset up, then inserts it: two runs of one experiment logging the same
        # new dataset at once both insert, and one meets the other's row. That row is the dataset this run
        # trained on, so a second try links the run to it.
        if not duplicate_key(e):
            raise
        client.log_inputs(run_id, datasets=inputs)


# -- the spool ---------------------------------------------------------------------------------------------


class Spool:
    """The folder that keeps a run's unsent operations: ``spool.jsonl`` (a header line naming the store and
    the run, then a line per operation), the files they name, and ``sent`` (the lines ``sync`` has sent)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count: int | None = None  # operations kept so far (lines after the header), once known

    @classmethod
    def create(cls, folder: Path, tracking_uri: str, run_id: str, run_name: str) -> Spool:
        if (folder / LINES).exists():  # another run's, in the same output directory: this one gets its own
            folder = folder.with_name(f"{folder.name}-{run_id}")
        folder.mkdir(parents=True, exist_ok=True)
        spool = cls(folder)
        spool._count = 0
        # the URI masked: a password never reaches the disk (sync takes the login from MLflow's variables)
        spool._write({"tracking_uri": mask_secrets(tracking_uri), "run_id": run_id, "run_name": run_name})
        return spool

    @property
    def lines(self) -> Path:
        return self.folder / LINES

    def append(self, op: dict[str, Any]) -> None:
        """Keep one operation: its files copied (its objects written) into the spool, then its line."""
        op = dict(op)
        if self._count is None:
            self._count = len(self.read()[1])
        n = self._count
        if "object" in op or "path" in op:  # its files in a folder of its own, named by its line: <n>/<name>
            shutil.rmtree(self.folder / str(n), ignore_errors=True)  # a copy an interrupt cut short
            (self.folder / str(n)).mkdir()
        if "object" in op:
            op["path"] = self._materialize(op.pop("object"), op["op"], self.folder / str(n))
        elif "path" in op:
            source = Path(op["path"])
            op["path"] = f"{n}/{source.name}"
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, self.folder / op["path"])
        self._write(op)
        self._count = n + 1

    def _materialize(self, payload: Any, kind: str, folder: Path) -> str:
        if kind == "model":
            import torch

            torch.save(payload, folder / "model.pt")
            return f"{folder.name}/model.pt"
        import numpy as np

        np.savez(folder / "dataset.npz", x=payload[0], y=payload[1])
        return f"{folder.name}/dataset.npz"

    def _write(self, entry: dict[str, Any]) -> None:
        with self.lines.open("a") as f:  # a line per write, flushed to disk: a crash loses at most the last one
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        lines = [line for line in self.lines.read_text().splitlines() if line.strip()]
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:  # the last line, cut short by a crash: its write never completed
            lines.pop()
        header, *ops = (json.loads(line) for line in lines)
        return header, ops

    def sent(self) -> set[int]:
        path = self.folder / SENT
        return {int(n) for n in path.read_text().split()} if path.exists() else set()

    def mark_sent(self, n: int) -> None:
        with (self.folder / SENT).open("a") as f:
            f.write(f"{n}\n")
            f.flush()
            os.fsync(f.fileno())


def sync(folder: Path, tracking_uri: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Send a spool's unsent operations to its run, in order; returns its header, its operations and how many
    of them this call sent."""
    from mlflow.tracking import MlflowClient

    spool = Spool(folder)
    header, ops = spool.read()
    uri = tracking_uri or header["tracking_uri"]
    if "***" in uri:  # the spool keeps the URI without its password
        if not any(os.environ.get(v) for v in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")):
            raise TrackingError(f"{uri}: the spool keeps this URI without its password: set {LOGIN}")
        uri = re.sub(r"//[^/@]+@", "//", uri)  # the login comes from MLflow's variables
    client, done, sent = MlflowClient(uri), spool.sent(), 0
    for n, op in enumerate(ops):
        if n in done:
            continue
        send(apply, client, header["run_id"], op, spool.folder, timeout=60)
        spool.mark_sent(n)
        sent += 1
    return header, ops, sent


def main(argv: list[str] | None = None) -> int:
    """``python scripts/sync.py <spool>``: complete a run recorded while its server was away."""
    parser = argparse.ArgumentParser(prog="sync.py", description=main.__doc__)
    parser.add_argument("spool", type=Path, help=f"the spool folder (or its {LINES}) that the run named")
    parser.add_argument("--tracking-uri", help="the server, when it moved (default: the one the run used)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.spool.parent if args.spool.name == LINES else args.spool
    if not (folder / LINES).is_file():
        print(f"error: {args.spool}: not a spool (no {LINES} there)", file=sys.stderr)
        return 2
    bound_http_retries(60)
    try:
        header, ops, sent = sync(folder, args.tracking_uri)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # MLflow raises many types; all mean the store refused or is unreachable
        print(f"error: {mask_secrets(str(e).strip().splitlines()[0][:300])}", file=sys.stderr)
        return 1
    status = next((op["status"] for op in reversed(ops) if op["op"] == "end"), None)
    done = "nothing left to send" if sent == 0 else f"sent {sent} of {len(ops)} operations"
    print(f"{done}: run {header['run_name']} ({header['run_id']}) is {status or 'still open'} "
          f"in {mask_secrets(args.tracking_uri or header['tracking_uri'])}")
    return 0
