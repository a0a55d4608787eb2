"""What a person reads in MLflow's run list: run names, the command in a run's description, its page address.

Pure functions of the config and Hydra's override strings, so that every launcher (basic, joblib,
submitit) names a job the same way.
"""

from __future__ import annotations

import bisect
import math
import shlex
import sys
from collections.abc import Collection, Sequence
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


# a float in a name, a legend entry or a table cell shows this many significant digits (lr=1.15e-05), more only
# where two values of a sweep would then read the same; the params keep the value in full
SIGNIFICANT = 3
MAX_DIGITS = 17  # enough to tell any two doubles apart


def _float(value: str) -> float | None:
    """A finite float written with a point or an exponent (``1.1498870747119445e-05``, ``0.001``, ``1e-3``), else
    None: an integer (``hidden=200``), a word, a list reads as typed."""
    if not any(c in value for c in ".eE") or not value.strip():
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def rounded(value: str, digits: int = SIGNIFICANT) -> str:
    """``value`` to ``digits`` significant digits when it is a float that has more (``1.15e-05``); as typed when
    it has no more (``1e-3`` stays ``1e-3``) or is no float."""
    f = _float(value)
    if f is None:
        return value
    short = format(f, f".{digits}g")
    return value if float(short) == f else short


def _digits(f: float, neighbours: Sequence[float]) -> int:
    """The fewest significant digits (at least SIGNIFICANT) at which ``f`` rounds apart from every neighbour."""
    for d in range(SIGNIFICANT, MAX_DIGITS + 1):
        mine = float(format(f, f".{d}g"))
        if all(float(format(n, f".{d}g")) != mine for n in neighbours):
            return d
    return MAX_DIGITS


def distinct(values: Sequence[str]) -> list[str]:
    """Each value rounded (``rounded``) to SIGNIFICANT digits, or more where two different values would then read
    the same (1.1498e-05 and 1.1502e-05: ``1.1498e-05``, ``1.1502e-05``): values that differ still differ.
    Rounding is monotone, so a value that collides with any other collides with its nearest one: only the two
    neighbours in sorted order are checked."""
    floats = sorted({f for v in values if (f := _float(v)) is not None})
    shown = []
    for v in values:
        f = _float(v)
        if f is None:
            shown.append(v)
            continue
        i = bisect.bisect_left(floats, f)
        shown.append(rounded(v, _digits(f, floats[max(0, i - 1):i] + floats[i + 1:i + 2])))
    return shown


def base_name(preset: str | None, trainer: str, model: str, optim: str) -> tuple[str, set[str]]:
    """(the name's first word: the preset or ``trainer-model-optim``, the swept keys that word already says)."""
    if preset:
        return str(preset), {"experiment"}
    return f"{trainer}-{model}-{optim}", {"trainer", "model", "optim"}


def swept_values(values: dict[str, str], swept: Sequence[str], in_base: Collection[str]) -> list[tuple[str, str]]:
    """(label, value as typed) for each swept key the base does not say: a key by its last part (``lr``), or in
    full where two swept keys share that part."""
    leaves = [k.rsplit(".", 1)[-1] for k in swept]
    parts = []
    for key in swept:
        if key in in_base or key not in values:
            continue
        leaf = key.rsplit(".", 1)[-1]
        parts.append((leaf if leaves.count(leaf) == 1 else key, values[key]))
    return parts


def compose(base: str, parts: Sequence[tuple[str, str]]) -> str:
    return " ".join([base, *(f"{label}={value}" for label, value in parts)])[:NAME_LIMIT]


def run_name(cfg: DictConfig, overrides: Sequence[str] = (), swept: Sequence[str] = ()) -> str:
    """The preset's name (``nn``) or ``trainer-model-optim``; in a sweep, plus the swept values that the base
    does not already say: ``optim lr=0.001``, ``lightning-sequential-adam lr=1.15e-05 hidden=200``. A float shows
    SIGNIFICANT digits: a job names itself alone, and the sweep's end gives runs that would read the same the
    digits that tell them apart (sweep_run_names)."""
    base, in_base = base_name(cfg.get("preset"), cfg.trainer.name, cfg.model.name, cfg.optim.name)
    parts = swept_values(dict(split_override(o) for o in overrides), swept, in_base)
    return compose(base, [(label, rounded(value)) for label, value in parts])


def sweep_run_names(runs: Sequence[tuple[str, Collection[str], dict[str, str]]], swept: Sequence[str]) -> list[str]:
    """The names of a sweep's runs, made together from each run's (base, the keys its base says, its overrides'
    values): a swept float shows SIGNIFICANT digits, more where two runs' values would then read the same, so
    that runs whose values differ keep names that differ."""
    parts = [swept_values(values, swept, in_base) for _, in_base, values in runs]
    labels = sorted({label for p in parts for label, _ in p})
    shown: dict[str, dict[str, str]] = {}
    for label in labels:
        typed = sorted({value for p in parts for lab, value in p if lab == label})
        shown[label] = dict(zip(typed, distinct(typed), strict=True))
    return [compose(base, [(label, shown[label][value]) for label, value in p])
            for (base, _, _), p in zip(runs, parts, strict=True)]


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
