"""hydra/launcher=slurm against a real Slurm cluster: one node, started by scripts/slurm_cluster.sh for this file and
stopped after it (only one slurmd runs per host, so every Slurm test lives here, on one pytest worker).

What a newcomer runs (nothing overridden but the partition), the refusals, a sweep's failed, cancelled and
interrupted jobs, Slurm's time-limit warning (sent at once with ``scancel --signal``) and an admin's requeue, and
CPU DDP. The cluster keeps no accounting, as small ones often don't: job states come from squeue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, TRAIN, Workspace, clean_env, wait_for

PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged")
NEWCOMER = ("-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment that finds the cluster (SLURM_CONF), for the tests' processes and, through sbatch, their
    jobs. Skipped where Slurm is not installed or this is not root; under CI it must be there (.ci/run installs)."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    why = f"{', '.join(missing)} not installed" if missing else "" if os.geteuid() == 0 else "slurmd needs root"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Slurm cluster cannot start: {why} (.ci/run installs slurmctld slurmd slurm-client munge)")
        pytest.skip(f"no Slurm cluster: {why} (apt-get install slurmctld slurmd slurm-client munge, as root)")
    folder = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm_cluster.sh"
    started = subprocess.run([str(script), "start", str(folder)], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    env = {"SLURM_CONF": started.stdout.strip().removeprefix("export SLURM_CONF=")}
    try:
        yield env
    finally:
        subprocess.run([str(script), "stop", str(folder)], capture_output=True, timeout=120)


def squeue(env: dict[str, str]) -> dict[str, str]:
    """Every job the cluster still knows: id -> state."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=30).stdout
    return dict(line.split("|") for line in out.split())


def live(env: dict[str, str]) -> list[str]:
    return [job for job, state in squeue(env).items() if state in ("PENDING", "RUNNING", "COMPLETING")]


@pytest.fixture(autouse=True)
def no_job_left(cluster: dict[str, str]) -> Iterator[None]:
    """Each test starts with munge answering and leaves the queue empty for the next: none of its jobs may still
    run (that would be a bug). munge is the host's daemon, not the cluster's: once in a CI run something on the
    host stopped it (SIGTERM, sender unknown) and every later sbatch failed; it is started again, with a warning."""
    folder = str(Path(cluster["SLURM_CONF"]).parent)
    revived = subprocess.run([str(REPO / "scripts" / "slurm_cluster.sh"), "munge", folder], capture_output=True,
                             text=True, timeout=60)
    assert revived.returncode == 0, revived.stderr
    if "started munged" in revived.stderr:
        warnings.warn("munged had stopped during the Slurm tests: started again", stacklevel=1)
    yield
    left = live(cluster)
    if left:
        subprocess.run(["scancel", *left], env={**os.environ, **cluster}, timeout=60)
        pytest.fail(f"jobs left in the queue: {left}")


def slurm(cluster: dict[str, str], *args: str) -> None:
    subprocess.run(list(args), env={**os.environ, **cluster}, check=True, timeout=60)


def job_logs(ws: Workspace) -> str:
    """The tail of every job's log (submitit writes them under the sweep dir): what a failing assert shows."""
    logs = sorted(ws.path.glob("multirun/*/*/.submitit/*/*_log.*"))
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in logs)


def wait_job(ws: Workspace, proc: subprocess.Popen, ready: Callable[[], object], what: str,
             timeout: float = 120) -> None:
    """conftest's wait_for, whose failure also shows the jobs' logs: a job's own error is there."""
    try:
        wait_for(proc, ready, what, timeout)
    except pytest.fail.Exception as e:
        pytest.fail(f"{e.msg}\n{job_logs(ws)}")


def children(ws: Workspace) -> dict[str, object]:
    return {r.info.run_name: r for r in ws.runs(children_only=True)}


def steps(ws: Workspace, run_id: str) -> list[int]:
    return sorted(m.step for m in ws.client().get_metric_history(run_id, "train/loss"))


def start(ws: Workspace, cluster: dict[str, str], *overrides: str) -> subprocess.Popen:
    """A sweep in the background, as a user's terminal would hold it."""
    assert ws.runs() == []  # the store exists before the test polls it while the jobs write
    return subprocess.Popen([sys.executable, str(TRAIN), *NEWCOMER, *overrides], cwd=ws.path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**clean_env(), **cluster})


def _reads(cmdline: Path, folder: str) -> bool:
    """A job's Python process: submitit's entry point, in this test's sweep folder."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    python = Path(args[0].decode()).name.startswith("python")  # not srun, whose command line holds the same
    return python and b"submitit.core._submit" in args and any(folder.encode() in a for a in args)


def job_of(run: object) -> str:
    return run.data.tags["backproplab.slurm_job"]  # type: ignore[attr-defined]


def test_a_newcomers_numpy_sweep_runs_as_one_job_array(ws: Workspace, cluster: dict[str, str]) -> None:
    proc = ws.train(*NEWCOMER, "trainer=numpy", "optim.lr=1e-6,2e-6", env=cluster)
    out = proc.stdout + proc.stderr
    assert "2 finished" in proc.stdout and (ws.path / "multirun").exists(), out[-3000:]
    runs = children(ws)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values()), job_logs(ws)
    assert all(steps(ws, r.info.run_id) == list(range(500)) for r in runs.values())
    arrays = {job_of(r).split("_")[0] for r in runs.values()}
    assert len(arrays) == 1 and sorted(job_of(r).split("_")[1] for r in runs.values()) == ["0", "1"]
    assert next(ws.path.glob("multirun/*/*/report/report.md")).is_file()
    # no accounting here: neither submitit's warnings nor sacct's errors reach the terminal (states from squeue)
    assert "sacct" not in out and "accounting storage is disabled" not in out
    assert out.count("a cluster wants a tracking server") == 1  # the sweep records into sqlite
    (script,) = ws.path.glob("multirun/*/*/.submitit/*/*_submission.sh")
    text = script.read_text()
    assert "--array=0-1" in text and "--ntasks-per-node=1" in text and "--cpus-per-task=1" in text
    assert "gpus" not in text and "--signal=USR2@120" in text  # a CPU job asks for no GPU


def test_the_default_trainer_single_and_ddp_agree_through_sbatch(ws: Workspace, cluster: dict[str, str]) -> None:
    """The default trainer, one process and CPU DDP (accelerator=ddp_cpu: one Slurm task in which Lightning spawns
    its two ranks), with nothing set but the partition: two runs, the DDP one recorded once, the same curve."""
    proc = ws.train(*NEWCOMER, "accelerator=cpu,ddp_cpu", "trainer.max_steps=60", env=cluster)
    assert "2 finished" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:] + job_logs(ws)
    by_accelerator = {r.data.params["trainer.strategy"]: r for r in ws.runs(children_only=True)}
    assert sorted(by_accelerator) == ["auto", "ddp_spawn"]
    single, ddp = by_accelerator["auto"], by_accelerator["ddp_spawn"]
    assert steps(ws, ddp.info.run_id) == list(range(60)) and ddp.data.params["trainer.devices"] == "2"
    assert ws.losses(ddp.info.run_id) == pytest.approx(ws.losses(single.info.run_id), rel=1e-5)
    assert "SLURM auto-requeueing" not in job_logs(ws)  # requeueing is submitit's, on its own signal


def test_a_failed_job_and_a_cancelled_one_are_named_by_the_sweep(ws: Workspace, cluster: dict[str, str]) -> None:
    """One job diverges (FAILED, with why). The other is warned of its time limit: a hand-written trainer keeps
    no checkpoints, so it trains on, not requeued; then scancel stops it (KILLED, its steps kept, and why)."""
    proc = start(ws, cluster, "trainer=numpy", "optim.lr=10,1e-7", "trainer.max_steps=100000000",
                 "logger.flush_seconds=0.2")
    try:
        def logging_job() -> object:
            found = [r for r in ws.runs(children_only=True) if r.data.params.get("optim.lr") == "1e-07"]
            return found[0] if found and steps(ws, found[0].info.run_id) else None

        wait_job(ws, proc, logging_job, "the long job did not log", timeout=180)
        run = logging_job()
        slurm(cluster, "scancel", "--signal=USR2", job_of(run))
        before = len(steps(ws, run.info.run_id))
        wait_job(ws, proc, lambda: len(steps(ws, run.info.run_id)) > before + 100, "the warned job stopped")
        assert squeue(cluster)[job_of(run)] == "RUNNING"  # not requeued: it trains on
        slurm(cluster, "scancel", job_of(run))
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "1 failed, 1 killed" in out, out[-3000:] + job_logs(ws)
    by_lr = {r.data.params["optim.lr"]: r for r in ws.runs(children_only=True)}
    diverged, cancelled = by_lr["10"], by_lr["1e-07"]
    assert diverged.info.status == "FAILED" and "diverged at step" in diverged.data.tags["failure_reason"]
    assert cancelled.info.status == "KILLED" and len(steps(ws, cancelled.info.run_id)) > before
    reason = cancelled.data.tags["failure_reason"]
    assert "SIGTERM" in reason and "time-limit warning (SIGUSR2)" in reason and "keeps no checkpoints" in reason
    assert f"KILLED {cancelled.info.run_name}" in out and "diverged at step" in out  # the summary names both
    assert "backproplab.slurm_restarts" not in cancelled.data.tags


def test_ctrl_c_on_the_sweep_cancels_its_jobs(ws: Workspace, cluster: dict[str, str]) -> None:
    proc = start(ws, cluster, "trainer=numpy", "optim.lr=1e-7,2e-7", "trainer.max_steps=100000000",
                 "logger.flush_seconds=0.2")
    try:
        wait_job(ws, proc, lambda: len([r for r in ws.runs(children_only=True) if steps(ws, r.info.run_id)]) == 2,
                 "the two jobs did not both log", timeout=180)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert live(cluster) == []  # scancelled, and gone before the command returned
    runs = ws.runs()
    assert runs and all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.info.status == "KILLED" for r in ws.runs(children_only=True)), job_logs(ws)


@pytest.mark.parametrize(("overrides", "needle"), [
    (("hydra.launcher.partition=null",), "set hydra.launcher.partition (this cluster has no default partition)"),
    (("hydra.launcher.partition=gpu",), "hydra.launcher.partition=gpu is not a partition of this cluster"),
    (("hydra.launcher.cpus_per_task=64",), "set hydra.launcher.cpus_per_task to at most"),  # it would pend for good
    (("hydra.launcher.mem_gb=100000",), "set hydra.launcher.mem_gb to at most"),  # sbatch refuses it
    (("accelerator=gpu", "trainer.devices=4"), "hydra.launcher.gpus_per_node=4"),
])
def test_a_request_the_cluster_cannot_meet_is_refused_in_one_line(
    ws: Workspace, cluster: dict[str, str], overrides: tuple[str, ...], needle: str
) -> None:
    proc = ws.train(*NEWCOMER, *overrides, "optim.lr=1e-6,2e-6", check=False, env=cluster)
    lines = [line for line in proc.stderr.splitlines() if "mlflow.store.db.utils" not in line]  # a new store's
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("error: Slurm refused the jobs (") and needle in lines[0], lines[0]
    (parent,) = ws.runs()  # no child: no job ran; the parent says why the sweep stopped
    assert parent.info.status == "FAILED" and needle in parent.data.tags["failure_reason"]
    if "trainer.devices=4" in overrides:  # the sbatch script submitit wrote, refused on this GPU-less node
        (script,) = ws.path.glob("multirun/*/*/.submitit/.submission_file_*.sh")
        text = script.read_text()
        assert "--gpus-per-node=4" in text and "--ntasks-per-node=4" in text, text


def test_a_lightning_job_warned_or_requeued_resumes_into_its_run(ws: Workspace, cluster: dict[str, str]) -> None:
    """Slurm's time-limit warning: Lightning checkpoints at the end of its step and submitit requeues the job,
    which resumes into the same run. Then an admin's ``scontrol requeue``: SIGTERM (KILLED), and the restarted job
    resumes from its last periodic checkpoint. One run, FINISHED, every step once, and the very curve of an
    uninterrupted run with the same seed and thread count."""
    overrides = ("trainer.max_steps=6000", "trainer.threads=1", "model=dynamic", "optim=adam")
    proc = start(ws, cluster, *overrides, "logger.flush_seconds=0.2")
    try:
        def run_with(minimum: int, restarts: str | None = None) -> object:
            (run,) = ws.runs(children_only=True) or [None]
            if run is None or run.data.tags.get("backproplab.slurm_restarts") != restarts:
                return None
            return run if len(steps(ws, run.info.run_id)) >= minimum else None

        wait_job(ws, proc, lambda: run_with(1), "the job did not log", timeout=180)
        slurm(cluster, "scancel", "--signal=USR2", job_of(run_with(1)))
        wait_job(ws, proc, lambda: run_with(1, "1"), "the warned job did not resume", timeout=180)
        logged = len(steps(ws, run_with(1, "1").info.run_id))
        wait_job(ws, proc, lambda: run_with(logged + 200, "1"), "the resumed job did not log", timeout=180)
        slurm(cluster, "scontrol", "requeue", job_of(run_with(1, "1")))
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "1 finished" in out, out[-2000:] + err[-3000:] + job_logs(ws)
    (run,) = ws.runs(children_only=True)
    assert run.info.status == "FINISHED" and run.data.tags["backproplab.slurm_restarts"] == "2"
    assert "failure_reason" not in run.data.tags
    assert steps(ws, run.info.run_id) == list(range(6000))  # every step once
    ws.train(*overrides)  # the same run, uninterrupted, on this machine
    assert ws.losses(run.info.run_id) == ws.losses(ws.runs()[-1].info.run_id)


def test_a_warned_job_that_submitit_will_not_requeue_says_why(ws: Workspace, cluster: dict[str, str]) -> None:
    """submitit requeues a job that reaches its time limit at most max_num_timeout times (with a limit of 10 minutes
    or less, it counts any warning a time-out): past that, the checkpointed run stays KILLED and says why. The
    warning is sent by hand once the run logs; Slurm's own, 2 minutes before the limit, would come at 8."""
    proc = start(ws, cluster, "trainer.max_steps=1000000", "trainer.threads=1", "logger.flush_seconds=0.2",
                 "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=0")
    try:
        def logging_run() -> object:
            runs = ws.runs(children_only=True)
            return runs[0] if runs and steps(ws, runs[0].info.run_id) else None

        wait_job(ws, proc, logging_run, "the job did not log", timeout=180)
        slurm(cluster, "scancel", "--signal=USR2", job_of(logging_run()))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "1 killed" in out, out[-2000:] + err[-2000:] + job_logs(ws)
    (run,) = ws.runs(children_only=True)
    reason = run.data.tags["failure_reason"]
    assert run.info.status == "KILLED" and "saved a checkpoint at step" in reason, reason
    assert "not requeued" in reason and "timed-out too many times" in reason, reason
    assert "backproplab.slurm_restarts" not in run.data.tags


def test_a_job_killed_outright_is_counted_failed_not_waited_for(ws: Workspace, cluster: dict[str, str]) -> None:
    """SIGKILL leaves no result and no closed run (the case that made submitit wait for ever on a cluster without
    accounting): once squeue calls the job over, the sweep counts it failed, closes its run and says where its log
    is."""
    proc = start(ws, cluster, "trainer=numpy", "optim.lr=1e-7", "trainer.max_steps=100000000",
                 "logger.flush_seconds=0.2", "hydra.launcher.result_grace_s=3")
    try:
        def logging_run() -> object:
            runs = ws.runs(children_only=True)
            return runs[0] if runs and steps(ws, runs[0].info.run_id) else None

        wait_job(ws, proc, logging_run, "the job did not log", timeout=180)
        # the job's Python process, killed as the kernel's OOM killer would (scancel would send SIGTERM first)
        (pid,) = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if _reads(p, str(ws.path))]
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "1 failed" in out, out[-2000:] + err[-2000:]
    assert "without a result; its log:" in out + err
    (run,) = ws.runs(children_only=True)
    assert run.info.status == "FAILED" and "process was killed" in run.data.tags["failure_reason"]
    assert steps(ws, run.info.run_id)  # what it logged is kept
