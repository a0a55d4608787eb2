"""Shared test helpers: the real CLI in a subprocess, and a fresh MlflowClient on the run's store.

Every CLI test launches from its own tmp dir, so the default store (<launch dir>/mlflow.db, artifacts in
<launch dir>/mlruns/) is private to the test and is exactly the path a user gets. MLflow's own variables
are removed from the environment of every test process: a developer's MLFLOW_TRACKING_URI must not
redirect the tests' runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so
# would every process a test starts: the Ctrl-C tests then send a signal nobody hears. Hear it again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"
sys.path.insert(0, str(REPO))  # benchmarks/, beside the package: its throwaway PostgreSQL is the tests' too
from benchmarks.server_load import Postgres, PostgresMissing, free_port, healthy  # noqa: E402, F401


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def serve(
    command: Callable[[int], list[str]], log: Path, ready: Callable[[int], bool] = listening,
    timeout: float = 180, tries: int = 5, measured: bool = False, **popen: object,
) -> tuple[subprocess.Popen, int]:
    """Start a server (``command(port)``) on a free loopback port and wait until ``ready(port)``. A free port
    can be taken by another process before the server binds it: then the server exits and a fresh port is
    tried. Its output goes to ``log``, a file, which a chatty server can never fill the way it fills a pipe.

    Under ``make test``'s coverage, a server runs unmeasured unless ``measured``: MLflow's server runs none of
    the package, and tracing its every call would only slow it down (``server_env``)."""
    env = dict(popen.pop("env", None) or os.environ)  # type: ignore[call-overload]
    popen["env"] = server_env(env, measured)
    for _ in range(tries):
        port = free_port()
        with log.open("a") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, text=True, **popen)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if ready(port):
                return proc, port
            if time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"server did not start in {timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        if "in use" not in log.read_text().lower():  # not a lost race for the port: a real failure
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
    raise RuntimeError(f"no free port after {tries} tries")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def wait_for(proc: subprocess.Popen, ready: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Poll ``ready()`` while ``proc`` runs. Should ``proc`` end first, or ``timeout`` pass, kill it and fail with
    its output: never wait on a process that was told to train for hours."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate(timeout=60)
            pytest.fail(f"{what} (exit {proc.returncode}): {(out or '')[-1500:]}{(err or '')[-3000:]}")
        time.sleep(0.3)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port on which nothing listens, for as long as the test runs: bound here, never listened on
    (a fixed port such as 9 might be served on some machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def chromium() -> str | None:
    """The system's Chromium (the tests that look at pages drive it headless), or None; under CI it must be there."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
    return found


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def untraced(env: dict[str, str]) -> dict[str, str]:
    """``env`` without coverage's variables: a Python process started with it runs untraced."""
    return {k: v for k, v in env.items() if not k.startswith("COVERAGE_")}


def server_env(env: dict[str, str], measured: bool = False) -> dict[str, str]:
    """``env`` for an MLflow server the tests start: untraced unless ``measured`` (coverage's variables dropped),
    and without MLflow's job runner. That runner serves GenAI jobs, which no test uses, and it starts a dozen
    Python processes that each import MLflow: ~23 CPU-s per server start, measured on these 2 cores."""
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return env if measured else untraced(env)


def clean_env() -> dict[str, str]:
    """This environment without MLflow's variables (MLFLOW_TRACKING_URI, credentials, ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


class Workspace:
    """A launch dir with its own MLflow store."""

    def __init__(self, path: Path):
        self.path = path
        self.db = path / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"

    def train(self, *overrides: str, check: bool = True, timeout: float = 600, env: dict | None = None):
        """Run scripts/train.py with Hydra overrides; returns the CompletedProcess (text)."""
        cmd = [sys.executable, str(TRAIN), *overrides]
        full_env = {**clean_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            cmd, cwd=self.path, capture_output=True, text=True, timeout=timeout, env=full_env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(overrides)} exited {proc.returncode}\n--stdout--\n{proc.stdout[-4000:]}"
                f"\n--stderr--\n{proc.stderr[-4000:]}"
            )
        return proc

    def client(self):
        """A fresh MlflowClient, as a user reading the store afterwards would have."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def runs(self, experiment: str = "backproplab", children_only: bool = False):
        return self.runs_at(self.uri, experiment, children_only)

    @staticmethod
    def runs_at(uri: str, experiment: str = "backproplab", children_only: bool = False):
        """The runs of ``experiment`` in any store, oldest first."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
        if children_only:
            runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        return runs

    def losses(self, run_id: str, key: str = "train/loss") -> list[float]:
        history = self.client().get_metric_history(run_id, key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch):
    """No test sees MLflow's variables, and none leaks one: ``mlflow.set_tracking_uri`` in a test exports
    MLFLOW_TRACKING_URI, which every later subprocess (and the pipeline, which honours it) would inherit."""
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def started_postgres() -> Postgres:
    """A throwaway PostgreSQL cluster, started (the test is skipped where PostgreSQL is not installed)."""
    try:
        pg = Postgres()
    except PostgresMissing as e:
        pytest.skip(str(e))
    try:
        pg.start()
    except BaseException:
        pg.remove()
        raise
    return pg



# Fixtures that start the CLI, sweeps, servers, a cluster or the benchmark in processes of their own: a test that
# uses one is `slow`, so `make test-quick` (-m "not slow") is the unit-level tier, without them.
SLOW_FIXTURES = {"ws", "six", "quick", "nine", "sweep", "empty_store", "sweeps", "eight", "cluster",
                 "mlflow_server", "server", "team", "logged"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# The suite leaves no store in the repository: a test that records with the repository as its working folder
# (an in-process run whose artifacts go to ./mlruns, a default ./mlflow.db) writes into the developer's own
# store. Checked once, where the session began: under pytest-xdist by the controller, after every worker ended.
STRAYS = ("mlruns", "mlflow.db")
_strays_before = pytest.StashKey[set]()


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker
        config.stash[_strays_before] = {name for name in STRAYS if (REPO / name).exists()}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_strays_before, None)
    if before is None:
        return
    left = [name for name in STRAYS if (REPO / name).exists() and name not in before]
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        line = (f"the suite left {', '.join(str(REPO / n) for n in left)} in the repository: a test recorded with "
                "the repository as its working folder (give it a tmp store, or monkeypatch.chdir(tmp_path))")
        if reporter is not None:
            reporter.write("\n" + line + "\n", red=True, bold=True)
        else:
            print(line, file=sys.stderr)
