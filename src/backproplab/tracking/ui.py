"""Where ``make ui`` sends a person: the store that runs are recorded in, and its runs table's address."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from backproplab.tracking.names import runs_table
from backproplab.tracking.store import store_location


def store() -> tuple[str, str | None]:
    """(tracking URI, artifact root): what scripts/train.py records in by default from this directory."""
    return store_location(OmegaConf.create({"tracking_uri": None}))


def runs_table_address(uri: str, experiment: str, base: str) -> str:
    """One line: the experiment's runs table, or what is missing (reading never creates a store)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"no runs yet in {uri} (make train first); MLflow's UI: {base}"
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        return f"no experiment {experiment!r} in {uri} yet; MLflow's UI: {base}"
    return f"runs of {experiment}: {runs_table(base, exp.experiment_id)}"
