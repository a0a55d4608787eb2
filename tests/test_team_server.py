"""A team's tracking server (issue 13): ``mlflow server`` on a real PostgreSQL, artifacts proxied through the
server, a basic-auth login; and what a run does when that server goes away and comes back.

One server serves the whole module, as one serves a team: each test records into an experiment of its own
(``logger.experiment_name``). A basic-auth server takes ~20 s to start (over 40 s under CI's load), so a server
per test cost minutes. The tests that kill it start it again; the fixture restarts one that a failed test left
dead."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    TRAIN,
    Postgres,
    Workspace,
    clean_env,
    healthy,
    serve,
    server_env,
    started_postgres,
    wait_for,
)

ADMIN, PASSWORD = "admin", "team-Pw-7d41"  # not MLflow's default: the auth app refuses to start without one


class TeamServer:
    """``mlflow server --app-name basic-auth`` on PostgreSQL (runs and users in two databases of one cluster),
    with ``--artifacts-destination``: clients send artifacts through the server and never see that folder."""

    def __init__(self, pg: Postgres, tmp: Path) -> None:
        self.store, self.artifacts, self.log = pg.create_database("mlflow"), tmp / "artifacts", tmp / "server.log"
        tmp.mkdir(parents=True, exist_ok=True)
        ini = tmp / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {pg.create_database('mlflow_auth')}\nadmin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        self.env = {
            **server_env(clean_env()), "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-for-tests",  # one key for every worker (CSRF)
        }
        self.proc, self.port = serve(self.command, self.log, ready=healthy, env=self.env, start_new_session=True)

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2", "--backend-store-uri", self.store,
            "--artifacts-destination", str(self.artifacts),
            # uvicorn kills a worker that does not answer its ping in 5 s; on CI's loaded 2 cores a worker still
            # importing MLflow missed it, over and over, and a restarted server never came up in 120 s
            "--uvicorn-opts", "--timeout-worker-healthcheck 60",
        ]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # what the README recommends: MLflow's own variables, not a password in the URI
    login = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}

    def client(self):
        """A fresh client, logged in, as a teammate reading the runs afterwards."""
        from mlflow.tracking import MlflowClient

        os.environ.update(self.login)  # MLflow reads credentials from the environment only
        return MlflowClient(self.uri)

    def runs(self, experiment: str, children_only: bool = False) -> list:
        client = self.client()
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
        return [r for r in runs if "mlflow.parentRunId" in r.data.tags] if children_only else runs

    def logged(self, experiment: str) -> bool:
        """A run of ``experiment`` has its first steps on the server."""
        return any(self.client().get_metric_history(r.info.run_id, "train/loss") for r in self.runs(experiment))

    def kill(self) -> None:
        """SIGKILL to the server's whole process group (gunicorn/uvicorn workers, huey): a crash, not a stop."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def restart(self) -> None:
        """The same server on the same port, as a supervisor would bring it back."""
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.command(self.port), stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        deadline = time.monotonic() + 120
        while not healthy(self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    """The module's one server, on its own PostgreSQL cluster."""
    pg = started_postgres()
    try:
        server = TeamServer(pg, tmp_path_factory.mktemp("team"))
        yield server
        if server.proc.poll() is None:
            server.kill()
    finally:
        pg.remove()


@pytest.fixture
def team(server: TeamServer) -> TeamServer:
    """The shared server, up: a test that failed between a kill and its restart leaves it down."""
    if server.proc.poll() is not None:
        server.restart()
    return server


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """This test's own experiment on the shared server."""
    return re.sub(r"\W+", "-", request.node.name).strip("-")


def test_a_parallel_sweep_on_postgres_behind_a_login(ws: Workspace, team: TeamServer, experiment: str) -> None:
    """4 jobs, 2 at a time, each a process of its own logging every step over HTTP to PostgreSQL."""
    proc = ws.train(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=numpy",
        "optim.lr=5e-5,1e-4,1.5e-4,2e-4", "logger.flush_every=50", f"logger.tracking_uri={team.uri}",
        f"logger.experiment_name={experiment}", f"logger.register={experiment}-net", env=team.login,
    )
    children = team.runs(experiment, children_only=True)
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    client = team.client()
    # the best child's model, registered through the server behind its login
    (version,) = client.search_model_versions(f"name = '{experiment}-net'")
    assert version.run_id == min(children, key=lambda r: r.data.metrics["final_loss"]).info.run_id
    assert client.get_model_version_by_alias(f"{experiment}-net", "champion").version == version.version
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(500)), run.info.run_name
    (parent,) = [r for r in team.runs(experiment) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and "4 finished" in proc.stdout
    assert {"report/report.md", "report/loss_curves.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
    # artifacts went through the server into its destination; nothing was written beside the launch dir
    assert len(list((team.artifacts / parent.info.experiment_id).rglob("config.yaml"))) == 4
    assert not (ws.path / "mlruns").exists() and not ws.db.exists()
    files = [p for p in ws.path.rglob("*") if p.is_file()]
    assert PASSWORD not in proc.stdout + proc.stderr
    assert [p for p in files if PASSWORD.encode() in p.read_bytes()] == []


@pytest.mark.parametrize("login", ["wrong password", "no login", "wrong password in the URI"])
def test_wrong_or_missing_credentials_stop_the_run_before_training(
    ws: Workspace, team: TeamServer, experiment: str, login: str
) -> None:
    uri, env = team.uri, {}
    if login == "wrong password":
        env = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": "not-it-3141"}
    elif login == "wrong password in the URI":
        uri = team.uri.replace("http://", f"http://{ADMIN}:not-it-3141@")
    proc = ws.train("trainer=numpy", f"logger.tracking_uri={uri}", f"logger.experiment_name={experiment}", env=env,
                    check=False, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    assert "did not accept the login" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]
    assert f"127.0.0.1:{team.port}" in lines[0] and "not-it-3141" not in proc.stdout + proc.stderr
    assert "steps, loss" not in proc.stdout  # no training happened
    assert team.runs(experiment) == []


def test_a_server_restarted_mid_run_costs_no_step(ws: Workspace, team: TeamServer, experiment: str) -> None:
    """SIGKILL the server while a run logs, start it again a few seconds later: every step, once, FINISHED.
    The run waits longer for the server (server_timeout) than restart() allows the server to come up: under CI's
    load a basic-auth server has taken over the default 60 s to start."""
    steps = 12000  # batches of 1,000 steps: the server is killed once the first has landed, ~11 batches early
    proc = _start_run(ws, team, experiment, f"trainer.max_steps={steps}", "logger.server_timeout=180")
    try:
        team.kill()
        time.sleep(4)
        team.restart()
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "the tracking server did not answer: retried" in out + err  # the outage did reach the run
    (run,) = team.runs(experiment)
    assert run.info.status == "FINISHED"
    recorded = [m.step for m in team.client().get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(recorded) == list(range(steps))  # none missing, none twice


def _start_run(ws: Workspace, team: TeamServer, experiment: str, *overrides: str) -> subprocess.Popen:
    """A long numpy run logging to the team server; returns once its first steps are on the server."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "trainer=numpy", "logger.flush_seconds=1", f"logger.tracking_uri={team.uri}",
         f"logger.experiment_name={experiment}", *overrides],
        cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean_env(), **team.login},
    )
    wait_for(proc, lambda: team.logged(experiment), "no step was recorded")
    return proc


def _sync(ws: Workspace, team: TeamServer, spool: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN.parent / "sync.py"), spool], cwd=ws.path, capture_output=True, text=True,
        env={**clean_env(), **team.login}, timeout=300,
    )


def _spool_named_in(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "scripts/sync.py" in line]
    spool = line.rsplit("python scripts/sync.py ", 1)[1].strip()
    assert (Path(spool) / "spool.jsonl").is_file(), line
    return spool


def test_a_server_that_stays_away_costs_no_step_once_synced(ws: Workspace, team: TeamServer, experiment: str) -> None:
    """The server dies for good mid-run: the run trains on, keeps what it could not send in a spool, and says how
    to send it; once the server is back, sync completes the run (every step once, the artifacts, FINISHED), and a
    second sync sends nothing."""
    steps = 10000  # batches of 1,000 steps: the server dies once the first has landed
    # 20 s: a server loaded by CI's other tests can take over 5 s to answer while alive
    proc = _start_run(ws, team, experiment, f"trainer.max_steps={steps}", "logger.server_timeout=20")
    try:
        team.kill()
        out, err = proc.communicate(timeout=300)  # a hang check: the run notices within server_timeout
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert f"{steps} steps, loss" in out  # it trained to the end
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "went away" in errors[0] and "Traceback" not in err, err[-3000:]
    spool = _spool_named_in(err)
    assert Path(spool).parent.parent.parent == ws.path / "outputs"  # in the run's output directory
    assert [p for p in Path(spool).rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()] == []

    team.restart()
    (run,) = team.runs(experiment)
    assert run.info.status == "RUNNING"  # nothing reached the server after it died
    synced = _sync(ws, team, spool)
    assert synced.returncode == 0 and "is FINISHED" in synced.stdout, synced.stderr[-3000:]
    again = _sync(ws, team, spool)
    assert again.returncode == 0 and "nothing left to send" in again.stdout, again.stderr[-3000:]

    (run,) = team.runs(experiment)
    client = team.client()
    assert run.info.status == "FINISHED" and "final_loss" in run.data.metrics
    recorded = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(recorded) == list(range(steps))  # none missing, none twice
    assert {"config.yaml", "loss_curve.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # its model, logged at sync from the spooled weights (their one copy: the run keeps no weights.npz)
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.name for m in models] == ["model"]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["random-64x1000"]


def test_sigterm_during_an_outage_ends_the_run_promptly_with_its_spool(
    ws: Workspace, team: TeamServer, experiment: str
) -> None:
    """SIGTERM while the server is away ends the run within seconds, not after server_timeout (60 s by default)
    or MLflow's minutes of retries; the spool then completes the run as KILLED, its steps 0..n-1."""
    proc = _start_run(ws, team, experiment, "trainer.max_steps=2000000")
    try:
        team.kill()
        time.sleep(3)  # its next batch (flush_seconds=1) now waits for the server
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # a hang check, well below the 60 s server_timeout plus work
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted: run marked KILLED" in err and "Traceback" not in err, err[-3000:]
    spool = _spool_named_in(err)

    team.restart()
    synced = _sync(ws, team, spool)
    assert synced.returncode == 0 and "is KILLED" in synced.stdout, synced.stderr[-3000:]
    (run,) = team.runs(experiment)
    assert run.info.status == "KILLED"
    recorded = sorted(m.step for m in team.client().get_metric_history(run.info.run_id, "train/loss"))
    assert recorded == list(range(len(recorded)))
    assert '"op": "metrics"' in (Path(spool) / "spool.jsonl").read_text()  # the batch that was waiting, kept


def test_two_runs_logging_one_new_dataset_at_once_both_record_it(team: TeamServer) -> None:
    """MLflow's SQL store looks a dataset up, then inserts it; two runs of one experiment logging the same new
    dataset at once (a sweep's first jobs) both insert, and the later insert is refused. Made certain here: a
    teammate's transaction inserts the row and holds it uncommitted, so the run's lookup misses it and its
    insert waits on the key; the teammate commits, the insert is refused, and the run must still record it."""
    import threading

    import mlflow.data
    import numpy as np
    import psycopg

    from backproplab.tracking import spool

    client = team.client()
    experiment = client.create_experiment("race")
    run_id = client.create_run(experiment).info.run_id
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 1), np.float32)
    dataset = mlflow.data.from_numpy(x, targets=y, name="random")._to_mlflow_entity()
    dsn = team.store.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as teammate, psycopg.connect(dsn, autocommit=True) as watcher:
        teammate.execute(
            "INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type, dataset_source)"
            " VALUES ('teammate', %s, %s, %s, %s, %s)",
            (int(experiment), dataset.name, dataset.digest, dataset.source_type, dataset.source),
        )
        failures: list[BaseException] = []

        def log() -> None:
            try:
                spool.apply(client, run_id, {"op": "dataset", "name": "random", "object": (x, y)})
            except BaseException as e:  # noqa: BLE001 - reported by the assertion below
                failures.append(e)

        writer = threading.Thread(target=log)
        writer.start()
        deadline = time.monotonic() + 60
        while not watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND query ILIKE 'INSERT INTO datasets%'").fetchone()[0]:
            assert writer.is_alive() and time.monotonic() < deadline, f"the run's insert never waited: {failures}"
            time.sleep(0.05)
        teammate.commit()
        writer.join(timeout=120)
    assert not failures, failures
    inputs = team.client().get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("random", dataset.digest)]
