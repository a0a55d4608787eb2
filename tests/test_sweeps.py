"""Sweeps and scale-out (issue 4): parallel joblib jobs, failing jobs, Optuna, DDP, submitit, a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Workspace, healthy, serve, stop, wait_for


def assert_complete(ws: Workspace, run, steps: int) -> None:
    assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("failure_reason"))
    assert [m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")] == list(range(steps))


@pytest.mark.parametrize("attempt", range(3))
def test_four_parallel_joblib_jobs_lose_nothing(ws: Workspace, attempt: int) -> None:
    proc = ws.train(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "trainer=numpy",
        "optim.lr=5e-5,1e-4,1.5e-4,2e-4", "logger.flush_every=10",
    )
    assert "database is locked" not in proc.stdout + proc.stderr
    children = ws.runs(children_only=True)
    assert len(children) == 4
    assert {r.data.params["optim.lr"] for r in children} == {"5e-05", "0.0001", "0.00015", "0.0002"}
    for run in children:
        assert_complete(ws, run, 500)
    assert "4 finished" in proc.stdout
    from backproplab.tracking.sweep import usable_cpus

    # more jobs at a time than CPUs (issue 36): one line says so, once for the sweep, which goes on
    assert proc.stderr.count("hydra.launcher.n_jobs=4 runs 4 jobs at a time") == (usable_cpus() < 4)


def test_a_failing_job_does_not_kill_the_sweep(ws: Workspace) -> None:
    proc = ws.train("-m", "trainer=numpy", "optim.lr=1e-4,10,1e-5", "trainer.max_steps=100", check=False)
    assert proc.returncode != 0
    assert "1 failed, 2 finished" in proc.stdout
    assert "Traceback" not in proc.stderr
    by_lr = {r.data.params["optim.lr"]: r for r in ws.runs(children_only=True)}
    assert by_lr["10"].info.status == "FAILED" and "diverged at step" in by_lr["10"].data.tags["failure_reason"]
    assert "diverged at step" in proc.stdout  # the summary says why
    assert_complete(ws, by_lr["0.0001"], 100)
    assert_complete(ws, by_lr["1e-05"], 100)
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED"


def test_a_refused_job_is_counted_as_failed(ws: Workspace) -> None:
    proc = ws.train("-m", "trainer=numpy,lightning", "optim=adam", "trainer.max_steps=20", check=False)
    assert proc.returncode != 0 and "1 failed, 1 finished" in proc.stdout
    by_trainer = {r.data.params["trainer.name"]: r for r in ws.runs(children_only=True)}
    assert by_trainer["lightning"].info.status == "FINISHED"
    assert by_trainer["numpy"].info.status == "FAILED"
    assert "optim=adam is not supported by trainer=numpy" in by_trainer["numpy"].data.tags["failure_reason"]


def test_optuna_search_beats_the_default(ws: Workspace) -> None:
    ws.train("trainer.max_steps=50")
    (default,) = ws.runs()
    ws.train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=6", "trainer.max_steps=50")
    trials = ws.runs(children_only=True)
    assert len(trials) == 6
    finished = [r.data.metrics["final_loss"] for r in trials if r.info.status == "FINISHED"]
    assert min(finished) < default.data.metrics["final_loss"]
    results = next(ws.path.glob("multirun/*/*/optimization_results.yaml")).read_text()
    assert "best_params" in results and "optim.lr" in results
    # names that read (issue 36): a trial's lr shows a few digits (lr=1.15e-05), its param the full value
    assert len({t.info.run_name for t in trials}) == len(trials)
    for t in trials:
        shown = re.search(r" lr=(\S+)", t.info.run_name).group(1)
        assert len(shown) <= 10 and float(shown) == pytest.approx(float(t.data.params["optim.lr"]), rel=1e-2)


def test_ddp_on_two_cpu_processes_logs_one_run(ws: Workspace) -> None:
    ws.train("accelerator=ddp_cpu", "trainer.max_steps=40")
    (run,) = ws.runs()
    assert run.data.params["trainer.devices"] == "2" and run.data.params["trainer.strategy"] == "ddp_spawn"
    assert_complete(ws, run, 40)
    # the full batch on every rank and averaged gradients: the same curve as one process
    ws.train("trainer.max_steps=40")
    assert ws.losses(run.info.run_id) == pytest.approx(ws.losses(ws.runs()[-1].info.run_id), rel=1e-5)


def test_submitit_local_launcher(ws: Workspace) -> None:
    ws.train("-m", "hydra/launcher=submitit_local", "trainer=numpy", "optim.lr=1e-4,2e-4", "trainer.max_steps=50")
    children = ws.runs(children_only=True)
    assert len(children) == 2
    for run in children:
        assert_complete(ws, run, 50)


@pytest.mark.parametrize(("overrides", "asked"), [
    (["trainer=numpy"], (1, 1, None)),  # a trainer without the keys: one node, one task, no GPU
    ([], (1, 1, None)),
    (["accelerator=ddp_cpu"], (1, 1, None)),  # one task; Lightning spawns its two ranks in it
    (["accelerator=gpu", "trainer.devices=4"], (1, 4, 4)),  # Slurm starts a rank per GPU
    (["accelerator=gpu", "trainer.devices=8", "trainer.num_nodes=2", "trainer.strategy=ddp"], (2, 8, 8)),
    (["accelerator=gpu", "trainer.devices=4", "hydra.launcher.tasks_per_node=1"], (1, 1, 4)),  # as set
])
def test_what_a_slurm_job_asks_for_follows_its_trainer(overrides: list[str], asked: tuple) -> None:
    """hydra/launcher=slurm's nodes, tasks and GPUs are auto: each job's own trainer keys decide them (the jobs
    through a real cluster are in test_slurm.py)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from backproplab.slurm.submit import request

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=debug", *overrides],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.backproplab_launcher.slurm.SlurmLauncher"
    assert (launcher["cpus_per_task"], launcher["mem_gb"], launcher["partition"]) == (1, 2, "debug")
    got = request(launcher, cfg)
    assert (got["nodes"], got["tasks_per_node"], got["gpus_per_node"]) == asked


def test_a_slurm_warning_due_as_each_job_starts_is_refused(ws: Workspace) -> None:
    """signal_delay_s not shorter than the time limit: Slurm would warn each job as it starts, before its run opens
    (refused before anything is submitted, so no cluster is needed)."""
    proc = ws.train("-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=1",
                    "trainer=numpy", "optim.lr=1e-6,2e-6", check=False)
    lines = [line for line in proc.stderr.splitlines() if "mlflow.store.db.utils" not in line]  # a new store's
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0] == (
        "error: hydra.launcher.signal_delay_s=120 is not shorter than hydra.launcher.timeout_min=1 (60 s): Slurm"
        " would send its time-limit warning as each job starts; set hydra.launcher.signal_delay_s below 60, or a"
        " longer hydra.launcher.timeout_min"), lines[0]
    (parent,) = ws.runs()
    assert parent.info.status == "FAILED" and "signal_delay_s" in parent.data.tags["failure_reason"]


def test_a_job_that_raised_is_named_by_its_error(tmp_path: Path) -> None:
    """A submitit job that raised outside its run's handling (submitit declining a requeue does so): the sweep's
    line gives the error's last line, not the tail of submitit's message."""
    import submitit

    from backproplab.slurm.submit import outcome

    job = submitit.LocalExecutor(folder=tmp_path).submit(int, "twelve")
    job.wait()
    said = str(outcome(job))
    assert said.startswith(f"Slurm job {job.job_id} ended with an error (ValueError: invalid literal for int()"), said
    assert said.endswith(f"; its log: {job.paths.stderr}"), said


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on loopback with a sqlite backend in a temp dir, its log in server.log."""
    proc, port = serve(
        lambda port: [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
        ],
        tmp_path / "server.log", ready=healthy,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_runs_logged_to_a_real_tracking_server(ws: Workspace, mlflow_server: str) -> None:
    ws.train(f"logger.tracking_uri={mlflow_server}", "trainer.max_steps=30", "model=dynamic")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)  # read back over HTTP
    exp = client.get_experiment_by_name("backproplab")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 30
    assert {"config.yaml", "loss_curve.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")  # through the server's artifact proxy
    assert type(model).__name__ == "DynamicNet"
    assert not (ws.path / "mlruns").exists() and not ws.db.exists()  # nothing went to the local default store


def late_answering_proxy(upstream: str, delay: float):
    """An HTTP proxy in front of a real server: it forwards every request at once, but holds the answer to the
    first ``runs/create`` for ``delay`` seconds, as a loaded server that did the work and answered too late."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    held = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            answer = requests.request(self.command, upstream + self.path, data=body, headers=headers, timeout=60)
            if "runs/create" in self.path and not held.is_set():
                held.set()
                time.sleep(delay)
            try:
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)
            except OSError:  # the client gave up waiting
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy, held


def test_a_run_opened_by_a_late_answer_is_opened_once(ws: Workspace, mlflow_server: str) -> None:
    """The server creates the run but its answer comes after the client's request timeout: the retry finds that
    run instead of opening a second one, which would stay RUNNING for ever beside the real one."""
    proxy, held = late_answering_proxy(mlflow_server, delay=15)
    try:  # one request waits 8 s at most: a loaded server answers the others within that
        proc = ws.train(f"logger.tracking_uri=http://127.0.0.1:{proxy.server_port}", "trainer.max_steps=30",
                        "logger.server_timeout=8")
    finally:
        proxy.shutdown()
    assert held.is_set() and "did not answer: retried" in proc.stdout  # the create was answered too late
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("backproplab").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "train/loss")) == 30


def test_a_sweep_stopped_by_its_first_failure_closes_its_parent(ws: Workspace) -> None:
    proc = ws.train(
        "-m", "continue_on_failure=false", "trainer=numpy", "optim.lr=1e-4,-1,1e-5", "trainer.max_steps=20",
        check=False,
    )
    assert proc.returncode != 0 and "optim.lr=-1" in proc.stderr
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED" and "stopped before all its jobs" in parent.data.tags["failure_reason"]
    assert all(r.info.status != "RUNNING" for r in ws.runs())


def test_a_sweep_without_a_record_still_reports_failures(ws: Workspace) -> None:
    proc = ws.train("-m", "logger=none", "trainer=numpy", "optim.lr=1e-4,10", "trainer.max_steps=50", check=False)
    assert proc.returncode != 0 and "sweep done: 1 failed" in proc.stdout
    assert not (ws.path / "mlruns").exists() and not ws.db.exists()


def test_fail_sweep_on_job_failure_false_ends_the_sweep_well(ws: Workspace) -> None:
    proc = ws.train("-m", "trainer=numpy", "optim.lr=1e-4,10", "trainer.max_steps=20",
                    "fail_sweep_on_job_failure=false")
    assert proc.returncode == 0 and "1 failed, 1 finished" in proc.stdout
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    statuses = sorted(r.info.status for r in ws.runs(children_only=True))
    assert statuses == ["FAILED", "FINISHED"]


def test_an_optuna_trial_that_fails_is_recorded_and_the_search_goes_on(ws: Workspace) -> None:
    """Every trial is refused (float64 precision on float32 data): each is a FAILED child with its reason,
    Optuna gets +inf, the search ends (the preset counts a failed trial as part of a search: exit 0), and no run
    stays RUNNING."""
    proc = ws.train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.max_steps=30",
                    "trainer.precision=64-true")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "3 failed" in proc.stdout
    trials = ws.runs(children_only=True)
    assert len(trials) == 3
    for trial in trials:
        assert trial.info.status == "FAILED" and "needs data.dtype=float64" in trial.data.tags["failure_reason"]
    assert all(r.info.status != "RUNNING" for r in ws.runs())


def test_ctrl_c_on_a_sweep_kills_the_job_and_closes_the_parent(ws: Workspace) -> None:
    import signal

    from conftest import TRAIN, clean_env

    assert ws.runs() == []  # the store exists before the test polls it while the sweep writes
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "-m", "trainer=numpy", "optim.lr=1e-4,1e-5", "trainer.max_steps=1000000",
         "logger.flush_seconds=0.2"],
        cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    try:
        wait_for(proc, lambda: [r for r in ws.runs(children_only=True) if ws.losses(r.info.run_id)],
                 "the first job did not log")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    (child,) = ws.runs(children_only=True)  # the second job never started
    assert child.info.status == "KILLED" and ws.losses(child.info.run_id)
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED" and "stopped before all its jobs" in parent.data.tags["failure_reason"]


def test_no_credential_anywhere_after_real_runs(ws: Workspace, mlflow_server: str) -> None:
    """Credentials in the tracking URI: a single run, a multirun with a failed job, and a rerun, against a
    real server. The password is in no param, tag, run name, artifact, Hydra output file, store or log line."""
    secret = "s3cr3t-9f2c"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    procs = [
        ws.train("trainer=numpy", "trainer.max_steps=5", f"logger.tracking_uri={uri}"),
        ws.train("-m", "trainer=numpy", "trainer.max_steps=5", "optim.lr=1e-4,10", f"logger.tracking_uri={uri}",
                 check=False),
    ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("backproplab")
    first = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])[0]
    procs.append(ws.train(f"+rerun={first.info.run_id}", f"logger.tracking_uri={uri}"))
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED", "FAILED"}  # 1 + parent + 2 + 1
    for run in runs:
        assert secret not in f"{run.info.run_name} {run.data.params} {run.data.tags}", run.info.run_name
    assert any("alice:***@" in str(run.data.params) for run in runs)  # the URI is recorded, masked
    for proc in procs:
        assert secret not in proc.stdout + proc.stderr
    # everything on disk: Hydra's outputs and logs, the reports, the server's store and proxied artifacts
    files = [p for p in ws.path.rglob("*") if p.is_file()]
    assert any(p.name == "overrides.yaml" for p in files) and any(p.name == "multirun.yaml" for p in files)
    assert len([p for p in files if "artifacts" in p.parts]) > 10
    leaks = [str(p.relative_to(ws.path)) for p in files if secret.encode() in p.read_bytes()]
    assert leaks == []


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def test_a_job_process_killed_mid_run_is_closed_failed(ws: Workspace) -> None:
    """SIGKILL on a joblib worker while its job logs: nothing in that process can close its run, so the
    sweep's parent process closes it FAILED with the reason, then the parent itself; no run stays RUNNING."""
    import signal

    from conftest import TRAIN, clean_env

    assert ws.runs() == []  # the store exists before the test polls it while the sweep writes
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=numpy",
         "optim.lr=1e-4,1e-5", "trainer.max_steps=60000", "logger.flush_seconds=0.2"],
        cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    try:
        wait_for(proc, lambda: len([r for r in ws.runs(children_only=True) if ws.losses(r.info.run_id)]) == 2,
                 "the two jobs did not both log", timeout=180)
        workers = [p for p in descendants(proc.pid) if b"popen_loky" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode != 0
    children = ws.runs(children_only=True)
    assert len(children) == 2 and all(r.info.status in ("FAILED", "KILLED") for r in children), out[-3000:]
    killed = [r for r in children if "process was killed" in r.data.tags.get("failure_reason", "")]
    assert killed and all(ws.losses(r.info.run_id) for r in killed)  # its steps before the kill are kept
    (parent,) = [r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED" and "process killed" in parent.data.tags["failure_reason"]
