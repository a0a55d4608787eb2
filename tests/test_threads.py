"""trainer.threads (issue 14): what ``auto`` picks for the tutorial's problem and for a large one, quiet or with
every CPU busy, and in a 2-job joblib sweep; the count is recorded and a rerun repeats it. In a sweep, ``auto`` is
settled once, at the sweep's start (issue 34): the same config and seed, the same count and the same curve. Where a
second thread starts to pay is measured by the benchmark (``scripts/bench.py --only threads``), not asserted here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Workspace

from backproplab import threads
from backproplab.threads import choose, step_flops

TUTORIAL = step_flops(64, 1000, 100, 10)  # 26 MFLOP per step
LARGE = step_flops(4096, 4096, 4096, 10)


@pytest.mark.parametrize("cpus", [1, 2, 4, 16])
def test_auto_on_a_quiet_machine(cpus: int) -> None:
    assert choose(TUTORIAL, cpus, idle=cpus) == cpus  # 26 MFLOP per step: every core, when none is busy
    assert choose(LARGE, cpus, idle=cpus) == cpus
    assert choose(step_flops(32, 32, 32, 10), cpus, idle=cpus) == 1  # 0.2 MFLOP: a second thread would cost
    assert choose(step_flops(2000, 1, 1, 1), cpus, idle=cpus) == 1  # the sine edition's few coefficients


def test_auto_with_every_cpu_busy_takes_one_thread() -> None:
    assert choose(TUTORIAL, 2, idle=0.0) == 1
    assert choose(LARGE, 2, idle=0.1) == 1
    assert choose(LARGE, 2, idle=1.7) == 2  # a browser tab's worth of load leaves both
    assert choose(LARGE, 16, idle=5.2) == 5


def test_the_tutorials_config_implies_its_flops() -> None:
    from benchmarks.common import compose_cfg

    assert threads.flops_per_step(compose_cfg()) == TUTORIAL
    big = compose_cfg("data.n=4096", "data.d_in=4096", "model.hidden=4096")
    assert threads.flops_per_step(big) == LARGE


def test_a_run_records_its_count_and_a_rerun_repeats_it(ws: Workspace) -> None:
    proc = ws.train("trainer=numpy", "trainer.max_steps=5")
    (run,) = ws.runs()
    count = int(run.data.params["trainer.threads"])  # the count chosen, not "auto"
    assert 1 <= count <= len(os.sched_getaffinity(0))
    assert f"{count} CPU thread" in proc.stdout
    ws.train("trainer=numpy", "trainer.max_steps=5", "trainer.threads=1")
    ws.train(f"+rerun={run.info.run_id}")
    _, fixed, rerun = ws.runs()
    assert fixed.data.params["trainer.threads"] == "1"
    assert rerun.data.params["trainer.threads"] == str(count)
    # only the run that chose its count says so (a report labels it "auto", not by the count the load gave it)
    assert [r.data.tags.get("backproplab.auto") for r in (run, fixed, rerun)] == ["trainer.threads", None, None]


def test_a_two_job_joblib_sweep_shares_the_cpus(ws: Workspace) -> None:
    ws.train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer=numpy", "trainer.max_steps=5",
             "seed=0,1")
    children = ws.runs(children_only=True)
    assert len(children) == 2
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert all(1 <= int(r.data.params["trainer.threads"]) <= share for r in children)


def test_a_sweep_settles_its_idle_cpus_once_and_a_single_run_measures_its_own(tmp_path: Path) -> None:
    idle = threads.settle_sweep(tmp_path / "sweep")  # the launcher has not made the sweep dir yet
    assert 0.0 <= idle <= (os.cpu_count() or 1)
    assert json.loads((tmp_path / "sweep" / threads.SWEEP_FILE).read_text()) == {"idle_cpus": idle}
    assert threads.sweep_idle() is None  # no Hydra multirun here: a run measures the load itself, as before


JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


@pytest.mark.parametrize("launcher", [(), JOBLIB], ids=["basic", "joblib"])
def test_a_sweep_settles_auto_once_same_seed_same_count_same_curve(ws: Workspace, launcher: tuple[str, ...]) -> None:
    """Two jobs of one config and seed in one sweep, trainer.threads=auto: both choose from the idle CPUs the sweep
    measured at its start (each job's log says so), so they get the same count and the same curve to the last digit,
    whatever the load did between them (in-process jobs, and joblib's worker processes started after the sweep)."""
    from benchmarks.common import compose_cfg

    proc = ws.train("-m", *launcher, "hydra.sweep.dir=sweep", "hydra.verbose=backproplab", "trainer=numpy",
                    "model=dynamic", "trainer.max_steps=20", "trainer.threads=auto", "seed=7,7")
    idle = json.loads((ws.path / "sweep" / threads.SWEEP_FILE).read_text())["idle_cpus"]
    a, b = ws.runs(children_only=True)
    sharing = 2 if launcher else 1
    cpus = min(len(os.sched_getaffinity(0)), int(os.environ.get("SLURM_CPUS_PER_TASK", 1 << 20)))
    usable = max(1, cpus // sharing)
    expected = choose(threads.flops_per_step(compose_cfg("trainer=numpy", "model=dynamic")), usable, idle)
    assert a.data.params["trainer.threads"] == b.data.params["trainer.threads"] == str(expected)
    assert [r.data.tags.get("backproplab.auto") for r in (a, b)] == ["trainer.threads"] * 2
    assert ws.losses(a.info.run_id) == ws.losses(b.info.run_id)
    # each job took the sweep's figure rather than measuring the load at its own start
    logs = [log.read_text() for job in ("0", "1") for log in (ws.path / "sweep" / job).glob("*.log")]
    assert len(logs) == 2 and all("idle at the sweep's start" in log for log in logs), proc.stderr[-3000:]
