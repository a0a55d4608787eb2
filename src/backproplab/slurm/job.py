"""Inside a Slurm job that Hydra's submitit launcher started: which job, whether Slurm is requeueing it, and the
note that lets a restarted job resume into the run it started. Plain Python: no submitit, no MLflow.

A job is restarted by Slurm in two ways, and both resume into the same MLflow run:

- after Slurm's time-limit warning (sbatch's ``--signal``, which the launcher sets), a trainer that keeps
  checkpoints saves one at the end of its step and submitit requeues the job (``backproplab.run``);
- an admin's (or a node failure's) ``scontrol requeue``: the job gets SIGTERM, its run is marked KILLED, and the
  restarted job resumes from its last periodic checkpoint, or from step 0 for a trainer that keeps none.

Either way the restarted job finds this job's note (``slurm_run.json`` in its Hydra output dir, written when its
run opened) and reopens that run; the steps it computes again are not logged twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from backproplab.runtime import slurm_job
from backproplab.runtime import slurm_restarts as restarts  # how many times Slurm started this job before

NOTE = "slurm_run.json"


def active() -> bool:
    """This process is a task of a Slurm job started by Hydra's submitit launcher."""
    return slurm_job() is not None


def job_id() -> str:
    """This job's id as squeue and scancel take it: ``<array>_<task>`` for a job of an array. Only in a job."""
    if (job := slurm_job()) is None:
        raise RuntimeError("this process is not a task of a Slurm job")
    return job


def warning_signal() -> int | None:
    """The signal Slurm sends before the time limit: the one submitit asks sbatch for (``--signal=USR2@<delay>``,
    or ``SUBMITIT_PREEMPT_SIGNAL``), in a Slurm job; None elsewhere, and for SIGTERM or SIGINT, which stop a run."""
    if not active():
        return None
    signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return None if signum in (None, signal.SIGTERM, signal.SIGINT) else int(signum)


def being_requeued() -> bool:
    """Slurm is requeueing this job (``scontrol requeue``) rather than ending it (``scancel``, the time limit):
    its restart count is already one up while the SIGTERM is delivered (seen on Slurm 22.05). Asked twice before
    answering no: a wrong no costs a result the sweep then counts, though the job comes back."""
    for _ in range(2):
        try:
            out = subprocess.run(["scontrol", "show", "job", "-o", os.environ["SLURM_JOB_ID"]], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, KeyError, subprocess.TimeoutExpired):
            continue
        fields = dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)
        if out.returncode == 0 and fields.get("Restarts", "").isdigit():
            return int(fields["Restarts"]) > restarts() or fields.get("JobState") in ("REQUEUED", "PENDING")
    return False


def note_run(folder: str | None, run_id: str | None, threads: int, auto_keys: list[str]) -> None:
    """Note, in the job's output dir, the run this job records into (None with logger=none) and its thread count,
    once its record is open: a restart of this job goes on from there."""
    if active() and folder:
        note = {"job": job_id(), "run_id": run_id, "threads": threads, "auto_keys": auto_keys}
        (Path(folder) / NOTE).write_text(json.dumps(note))


def note_finished(folder: str | None, final_loss: float) -> None:
    """The job's run ended FINISHED: a restart of this job (Slurm's warning after its end, an admin's requeue of
    a finished job) returns this loss rather than train again."""
    path = Path(folder or "") / NOTE
    if active() and folder and path.is_file():
        path.write_text(json.dumps({**json.loads(path.read_text()), "finished": True, "final_loss": final_loss}))


def resumed_run(folder: str | None) -> dict[str, Any] | None:
    """The note of the run to resume, when Slurm has restarted this job and it had opened one; else None.
    A note from another job (a reused output dir) is not this job's run."""
    if not (active() and folder and restarts() > 0 and (Path(folder) / NOTE).is_file()):
        return None
    note = json.loads((Path(folder) / NOTE).read_text())
    return note if note.get("job") == job_id() else None
