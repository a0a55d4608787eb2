"""Where and how this process runs: Hydra's runtime (launch dir, overrides, sweep dir), the distributed rank,
the git commit, and the masking of secrets in what gets recorded. Small lookups, no MLflow, no torch."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from functools import cache
from pathlib import Path


class ConfigError(ValueError):
    """A config value that cannot work; the message is the one line shown to the user."""


def mask_secrets(uri: str) -> str:
    """``http://user:password@host`` -> ``http://user:***@host``; ``https://TOKEN@host`` -> ``https://***@host``;
    also tokens in a query string."""
    uri = re.sub(r"//([^/:@]+):([^/@]+)@", r"//\1:***@", uri)
    uri = re.sub(r"//([^/:@*]+)@", r"//***@", uri)  # a bare token as the user part
    # a value ends at & or whitespace: the whole YAML files this also masks (multirun.yaml) keep their other lines
    return re.sub(r"(?i)((?:token|password|secret|key)=)[^&\s]+", r"\1***", uri)

def launch_dir() -> Path:
    """The directory the user launched from (Hydra's runtime.cwd), whatever Hydra's output dir is."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()

def hydra_overrides() -> list[str]:
    """This job's overrides as typed (a sweep job: its own values), secrets masked."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [mask_secrets(o) for o in HydraConfig.get().overrides.task]

def sweep_dir() -> str | None:
    """The multirun's sweep dir when this process is a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(Path(HydraConfig.get().sweep.dir).resolve())
    return None

def job_dir() -> str | None:
    """This job's Hydra output dir (``outputs/<date>/<time>``, or its folder of a multirun), None without Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None

def git_commit() -> str | None:
    try:
        out = subprocess.run(  # the commit of the code that runs, wherever it was launched from
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None

def is_rank_zero() -> bool:
    """False in the extra processes of a distributed run: Lightning's DDP launcher re-runs this script
    with LOCAL_RANK/NODE_RANK set, SLURM starts one task per process. Only rank 0 records."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


# Which Slurm job this is lives here, below both of its users: the record tags its run with it (tracking), and the
# job's own logic (slurm.job) acts on it; in slurm/, tracking would import slurm, which imports tracking.
def slurm_job() -> str | None:
    """This process's Slurm job as squeue and scancel take it (``<array>_<task>`` for a job of an array), when it
    is a task of a job that Hydra's submitit launcher started; None elsewhere."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "SLURM_JOB_ID" not in os.environ:
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]


def slurm_restarts() -> int:
    """How many times Slurm has started this job before (0 for its first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


@cache
def conf_dir() -> Path:
    """The config tree: shipped inside the installed package, or conf/ at the root of a source checkout."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


def mask_logs() -> None:
    """Mask credentials in every log record of this process (Hydra's launchers log each job's overrides, and
    Hydra reconfigures its handlers per job, so a handler's filter would not last): a record factory, once."""
    make = logging.getLogRecordFactory()
    if getattr(make, "masks_secrets", False):
        return

    def masked(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        if (clean := mask_secrets(message)) != message:
            record.msg, record.args = clean, ()
        return record

    masked.masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked)


def mask_hydra_outputs(*dirs: str | Path) -> None:
    """Hydra writes the overrides as typed (``.hydra/overrides.yaml``, ``hydra.yaml``, ``config.yaml``, a sweep's
    ``multirun.yaml``): mask the credentials in them, as in the record."""
    for d in dirs:
        for path in [*Path(d).glob(".hydra/*.yaml"), *Path(d).glob("multirun.yaml")]:
            text = path.read_text()
            if (masked := mask_secrets(text)) != text:
                path.write_text(masked)


NAMED_BEFORE: set[Path] = set()  # output folders a command named (hydra.run.dir=...) that existed before it ran


def note_named_dirs(overrides: list[str]) -> None:
    """Before Hydra composes: which output folder the command names, if it exists already (never discarded)."""
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "hydra.run.dir" and value and Path(value).exists():
            NAMED_BEFORE.add(Path(value).resolve())


def discard_job_dir() -> None:
    """A single run refused before it started leaves nothing on disk: its Hydra folder, which then holds only
    Hydra's own files (``.hydra/``, the job's log), is removed, and the date folder above it if that is left
    empty. A folder that holds anything else, or that the command named and that existed before, is kept."""
    folder = job_dir()
    if folder is None or sweep_dir() is not None:
        return
    path = Path(folder).resolve()
    if path in NAMED_BEFORE or not path.is_dir():
        return
    hydra_files = [*path.glob(".hydra/*.yaml"), *path.glob("*.log")]
    if any(p for p in path.rglob("*") if p.is_file() and p not in hydra_files):
        return
    for p in hydra_files:
        p.unlink()
    with contextlib.suppress(OSError):  # rmdir refuses a folder that is not empty: those stay
        (path / ".hydra").rmdir()
        path.rmdir()
        stop = launch_dir().resolve()
        for parent in path.parents:
            if parent == stop or stop not in parent.parents:
                break
            parent.rmdir()
