"""What ``make ui`` does: find the store that runs are recorded in, print its runs table's address, and name the
``mlflow ui`` command that serves it (none for a tracking server, which serves itself)."""

from __future__ import annotations

import sys
from pathlib import Path

from backproplab.runtime import mask_secrets
from backproplab.tracking.names import runs_table, server_address
from backproplab.tracking.store import default_store, probe


def store() -> tuple[str, str | None, str]:
    """(tracking URI, artifact root, a note): the default store, or an older ./mlruns/mlflow.db when that is
    the only one here (serving a missing default would create an empty one and show nothing)."""
    uri, artifacts = default_store()
    old = Path("mlruns") / "mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists() and old.is_file():
        return f"sqlite:///{old.resolve()}", artifacts, f"serving the older store {old} (new runs go to ./mlflow.db)"
    return uri, artifacts, ""


def runs_table_address(uri: str, experiment: str, base: str) -> str:
    """One line: the experiment's runs table, or what is missing (reading never creates a store)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"no runs yet in {uri} (make train first); MLflow's UI: {base}"
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        return f"no experiment {experiment!r} in {mask_secrets(uri)} yet; MLflow's UI: {base}"
    return f"runs of {experiment}: {runs_table(base, exp.experiment_id)}"


def plan(experiment: str, host: str, port: int) -> tuple[list[str], list[str] | None]:
    """(lines to print, the command that serves the store, or None when a tracking server already does)."""
    uri, artifacts, note = store()
    if uri.startswith(("http://", "https://")):
        try:
            probe(uri)  # fail in seconds, not after MLflow's minutes of HTTP retries
        except OSError as e:
            return [f"cannot reach the tracking server {server_address(uri)} ({e})"], None
        return [runs_table_address(uri, experiment, server_address(uri))], None
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    return [line for line in (note, runs_table_address(uri, experiment, f"http://{host}:{port}")) if line], command
