"""A team server under load: many runs at once, each recording every step over HTTP to one ``mlflow server``
(2 workers) on PostgreSQL. Reports the steps recorded per second and counts that none was lost or doubled."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import TRAIN_SCRIPT, BenchError, Settings, child_env


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs (initdb, pg_ctl) are not on this machine."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster: initdb in a temp dir, served on a free loopback port, removed after.
    As root the server programs run as the ``postgres`` account (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = Path(shutil.which("initdb") or "/usr/lib/postgresql/15/bin/initdb").parent
        if not (self.bin / "initdb").exists():
            raise PostgresMissing("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # a folder of its own under /tmp: pytest's tmp dirs are private to root, and postgres must reach it
        self.dir = Path(tempfile.mkdtemp(prefix="backproplab-pg-"))
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        for _ in range(5):  # another process may take the free port first: then try another
            self.port = free_port()
            options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            done = subprocess.run(
                [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                 "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start"],
                capture_output=True, text=True, timeout=120,
            )
            if done.returncode == 0:
                return
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URI (psycopg 3, the [server] extra's driver)."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def mlflow_server(store: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` with 2 workers on ``store``, artifacts proxied, on a free port; (process, URI)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
           "--backend-store-uri", store, "--artifacts-destination", str(artifacts),
           # uvicorn's 5 s worker ping kills workers still importing MLflow on a loaded machine, again and again
           "--uvicorn-opts", "--timeout-worker-healthcheck 60"]
    # MLflow's job runner (a dozen processes for GenAI jobs, ~23 CPU-s to start here) serves nothing measured here
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 180
    while not healthy(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"mlflow server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    return proc, f"http://127.0.0.1:{port}"


def bench_server_load(s: Settings, tmp: Path) -> dict[str, Any]:
    """``s.server_runs`` processes of ``train.py trainer=numpy`` at once against one server; every step is
    recorded (in batches of ``logger.flush_every``). Then each run's history is read back and checked."""
    try:
        pg = Postgres()
    except PostgresMissing as e:
        return {"skipped": str(e)}
    try:
        pg.start()
        server, uri = mlflow_server(pg.create_database("mlflow"), tmp / "server-artifacts", tmp / "server.log")
        try:
            return drive(s, uri, tmp)
        finally:
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers
            server.wait(timeout=30)
    finally:
        pg.remove()


def drive(s: Settings, uri: str, tmp: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    flush_every = 10  # a write every 10 steps per run: many small batches, the load a server must take
    cmd = [sys.executable, TRAIN_SCRIPT, "trainer=numpy", f"trainer.max_steps={s.server_steps}",
           f"logger.tracking_uri={uri}", f"logger.flush_every={flush_every}",
           "hydra.run.dir=outputs/${now:%H-%M-%S-%f}"]  # one output dir per process, though they start together
    env = {k: v for k, v in child_env().items() if not k.startswith("MLFLOW_")}
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(s.server_runs)]
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    wall = time.perf_counter() - start
    failed = [e[-500:] for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise BenchError(f"{len(failed)} of {len(procs)} runs failed: {failed[0]}")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("backproplab")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    complete = 0
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        complete += run.info.status == "FINISHED" and steps == list(range(s.server_steps))
    # from the first run's start to the last run's end, as the server recorded them: the window in which the
    # runs were writing (the processes' imports before it are not the server's load)
    window = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    loops = [r.data.metrics.get("time/loop_s", float("nan")) for r in runs]  # each loop, its logging included
    out = {
        "runs": s.server_runs,
        "steps_per_run": s.server_steps,
        "flush_every": flush_every,
        "server": "mlflow server --workers 2, PostgreSQL, artifacts proxied",
        "wall_s": wall,
        "window_s": window,
        "steps_per_s": s.server_runs * s.server_steps / window,
        "runs_recorded": len(runs),
        "runs_complete": complete,  # FINISHED, with steps 0..N-1 each exactly once
        "lost": s.server_runs - complete,
        "loop_s_max": max(loops) if loops else float("nan"),
    }
    print(f"[bench] team server: {out['runs']} runs x {out['steps_per_run']} steps in {window:.1f}s -> "
          f"{out['steps_per_s']:.0f} steps/s recorded, {complete} of {out['runs']} complete", file=sys.stderr,
          flush=True)
    return out
