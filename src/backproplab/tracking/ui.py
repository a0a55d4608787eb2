"""What ``make ui`` does: find the store that runs are recorded in, print its runs table's address, name the
``mlflow ui`` command that serves it (none for a tracking server, which serves itself), and run it so that
stopping ``make ui`` stops everything it started.

``mlflow ui`` starts a tree of processes: uvicorn and its workers, and a job runner with its huey consumers.
Sent SIGTERM itself, it stops uvicorn but not the job runner's consumers, which stay behind with parent 1
(7 of them, measured). So ``serve`` starts it in a session (and process group) of its own and, on Ctrl-C,
SIGTERM or a hang-up, signals that whole group, waits a bounded time, then kills what is left of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backproplab.runtime import mask_secrets
from backproplab.tracking.names import runs_table, server_address
from backproplab.tracking.store import default_store, probe


def store() -> tuple[str, str | None, str]:
    """(tracking URI, artifact root, a note): the default store, or an older ./mlruns/mlflow.db when that is
    the only one here (serving a missing default would create an empty one and show nothing)."""
    uri, artifacts = default_store()
    old = Path("mlruns") / "mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists() and old.is_file():
        return f"sqlite:///{old.resolve()}", artifacts, f"serving the older store {old} (new runs go to ./mlflow.db)"
    return uri, artifacts, ""


def runs_table_address(uri: str, experiment: str, base: str) -> str:
    """One line: the experiment's runs table, or what is missing (reading never creates a store)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"no runs yet in {uri} (make train first); MLflow's UI: {base}"
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        return f"no experiment {experiment!r} in {mask_secrets(uri)} yet; MLflow's UI: {base}"
    return f"runs of {experiment}: {runs_table(base, exp.experiment_id)}"


def plan(experiment: str, host: str, port: int) -> tuple[list[str], list[str] | None]:
    """(lines to print, the command that serves the store, or None when a tracking server already does)."""
    uri, artifacts, note = store()
    if uri.startswith(("http://", "https://")):
        try:
            probe(uri)  # fail in seconds, not after MLflow's minutes of HTTP retries
        except OSError as e:
            return [f"cannot reach the tracking server {server_address(uri)} ({e})"], None
        return [runs_table_address(uri, experiment, server_address(uri))], None
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    return [line for line in (note, runs_table_address(uri, experiment, f"http://{host}:{port}")) if line], command


GRACE_S = 10.0  # how long the served group may take to stop once told (uvicorn takes ~1 s), before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# MLflow's server imports starlette.middleware.wsgi, which starlette deprecates: every uvicorn worker prints the
# same StarletteDeprecationWarning (four blocks), which only MLflow can act on. A message filter, since
# PYTHONWARNINGS is read before site-packages can be imported, so it cannot name starlette's warning class.
QUIET = "ignore:starlette.middleware.wsgi is deprecated"


def served_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``mlflow ui`` runs in: this one, plus the filter of MLflow's deprecation noise (QUIET)
    after any filters the user set (PYTHONWARNINGS)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS", ""), QUIET) if w)
    return env


def members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, read from /proc; where there is no /proc,
    [pgid] while the group has any process at all."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    found = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):  # the group has ended
        pass


def end_group(pgid: int, grace: float = GRACE_S) -> None:
    """SIGTERM to whatever is left of process group ``pgid``, up to ``grace`` seconds for it to end, then SIGKILL."""
    if not members(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while members(pgid):
        if time.monotonic() > deadline:
            signal_group(pgid, signal.SIGKILL)
            return
        time.sleep(0.1)


def serve(command: list[str], grace: float = GRACE_S) -> tuple[int, int | None]:
    """Run ``command`` (``mlflow ui``) in a session of its own until it ends, or until this process gets SIGINT
    (Ctrl-C), SIGTERM or SIGHUP: then SIGTERM goes to its whole process group (SIGTERM for Ctrl-C too: MLflow's
    CLI prints a traceback on SIGINT and stops the same way on SIGTERM), and after ``grace`` seconds SIGKILL.
    Whatever ends it, nothing of its group outlives this call. Returns (its exit status, the signal that stopped
    this process or None)."""
    received: list[int] = []
    child: subprocess.Popen | None = None
    deadline: list[float] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        if child is not None:
            signal_group(child.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        # its own session: a terminal's Ctrl-C reaches this process only, which stops the group as a whole
        child = subprocess.Popen(command, start_new_session=True, env=served_env())
        if received:  # a signal while it was being started: the handler saw no child yet
            signal_group(child.pid, signal.SIGTERM)
        while True:
            try:
                child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if received and not deadline:
                    deadline.append(time.monotonic() + grace)
                if deadline and time.monotonic() > deadline[0]:
                    signal_group(child.pid, signal.SIGKILL)
    finally:
        if child is not None:
            if child.poll() is None:  # this process is going (an exception): its child goes too
                signal_group(child.pid, signal.SIGKILL)
                child.wait()
            end_group(child.pid, grace)  # the job runner's consumers outlive mlflow ui's own process
        for s, handler in previous.items():
            signal.signal(s, handler)
    return child.returncode, (received[0] if received else None)
