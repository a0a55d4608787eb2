"""What a person reads in MLflow's run list: run names, the command in a run's description, its page address.

Pure functions of the config and Hydra's override strings, so that every launcher (basic, joblib,
submitit) names a job the same way.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import DictConfig

from backproplab.runtime import mask_secrets

UI = "http://127.0.0.1:5000"  # where `make ui` / plain `mlflow ui` serve a local store
NAME_LIMIT = 250  # MLflow's limit on a run name
# MLflow 3's UI shows an experiment in its GenAI view (traces, token usage) unless the address asks for the
# model-training one; the experiment's mlflow.experimentKind tag no longer decides that
MODEL_TRAINING = "workflowType=machine_learning"


def split_override(item: str) -> tuple[str, str]:
    """``+optim.lr=1e-3`` -> (``optim.lr``, ``1e-3``)."""
    key, _, value = item.lstrip("+~").partition("=")
    return key, value


def run_name(cfg: DictConfig, overrides: Sequence[str] = (), swept: Sequence[str] = ()) -> str:
    """The preset's name (``nn``) or ``trainer-model-optim``; in a sweep, plus the swept values that the base
    does not already say: ``optim lr=0.001``, ``lightning-sequential-adam lr=0.001``."""
    preset = cfg.get("preset")
    base = str(preset) if preset else f"{cfg.trainer.name}-{cfg.model.name}-{cfg.optim.name}"
    in_base = {"experiment"} if preset else {"trainer", "model", "optim"}
    values = dict(split_override(o) for o in overrides)
    leaves = [k.rsplit(".", 1)[-1] for k in swept]
    parts = []
    for key in swept:
        if key in in_base or key not in values:
            continue
        leaf = key.rsplit(".", 1)[-1]
        parts.append(f"{leaf if leaves.count(leaf) == 1 else key}={values[key]}")
    return " ".join([base, *parts])[:NAME_LIMIT]


def sweep_name(overrides: Sequence[str], fallback: str) -> str:
    """A sweep's parent run is named by what it sweeps: ``optim=sgd,adam optim.lr=1e-3,1e-4``."""
    return (" ".join(overrides) or fallback)[:NAME_LIMIT]


def command(overrides: Sequence[str], multirun: bool = False) -> str:
    """The command that makes this run again, e.g. ``python scripts/train.py model=dynamic optim=adam``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "train.py":  # scripts/train.py
        script = Path(argv0)
        if script.is_absolute() and script.is_relative_to(Path.cwd()):
            script = script.relative_to(Path.cwd())
        prog = ["python", str(script)]
    else:  # the console script; the same line for backproplab.train() and a launcher's worker or Slurm job
        prog = ["backproplab-train"]
    return shlex.join([*prog, *(["-m"] if multirun else []), *overrides])


def run_page(tracking_uri: str, experiment_id: str, run_id: str, default_store: bool, artifact: str = "") -> str:
    """The run's page in MLflow's UI (or one of its artifacts, opened in the UI's artifact view): the server's own
    address for a tracking server, else the address that ``make ui`` (or ``mlflow ui --backend-store-uri ...``)
    serves, with how to start it."""
    tab = f"/artifacts/{artifact}" if artifact else ""
    path = f"/#/experiments/{experiment_id}/runs/{run_id}{tab}?{MODEL_TRAINING}"
    if tracking_uri.startswith(("http://", "https://")):
        return server_address(tracking_uri) + path
    how = "make ui, or mlflow ui here"
    if not default_store:
        how = f"mlflow ui --backend-store-uri {mask_secrets(tracking_uri)}"
    return f"{UI}{path} (after: {how})"


def server_address(tracking_uri: str) -> str:
    """A tracking server's own address, never its credentials: ``https://user:pw@host:5000/`` -> ``https://host:5000``."""
    parts = urlsplit(tracking_uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def runs_table(base: str, experiment_id: str) -> str:
    """The experiment's runs table, in the model-training view."""
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}"
