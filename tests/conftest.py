"""Shared test helpers: the real CLI in a subprocess, and a fresh MlflowClient on the run's store.

Every CLI test launches from its own tmp dir, so the default store (<launch dir>/mlflow.db, artifacts in
<launch dir>/mlruns/) is private to the test and is exactly the path a user gets. MLflow's own variables
are removed from the environment of every test process: a developer's MLFLOW_TRACKING_URI must not
redirect the tests' runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts" / "train.py"


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def clean_env() -> dict[str, str]:
    """This environment without MLflow's variables (MLFLOW_TRACKING_URI, credentials, ...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


class Workspace:
    """A launch dir with its own MLflow store."""

    def __init__(self, path: Path):
        self.path = path
        self.db = path / "mlflow.db"
        self.uri = f"sqlite:///{self.db}"

    def train(self, *overrides: str, check: bool = True, timeout: float = 600, env: dict | None = None):
        """Run scripts/train.py with Hydra overrides; returns the CompletedProcess (text)."""
        cmd = [sys.executable, str(TRAIN), *overrides]
        full_env = {**clean_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            cmd, cwd=self.path, capture_output=True, text=True, timeout=timeout, env=full_env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(overrides)} exited {proc.returncode}\n--stdout--\n{proc.stdout[-4000:]}"
                f"\n--stderr--\n{proc.stderr[-4000:]}"
            )
        return proc

    def client(self):
        """A fresh MlflowClient, as a user reading the store afterwards would have."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def runs(self, experiment: str = "backproplab", children_only: bool = False):
        return self.runs_at(self.uri, experiment, children_only)

    @staticmethod
    def runs_at(uri: str, experiment: str = "backproplab", children_only: bool = False):
        """The runs of ``experiment`` in any store, oldest first."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
        if children_only:
            runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        return runs

    def losses(self, run_id: str, key: str = "train/loss") -> list[float]:
        history = self.client().get_metric_history(run_id, key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch):
    """No test sees MLflow's variables, and none leaks one: ``mlflow.set_tracking_uri`` in a test exports
    MLFLOW_TRACKING_URI, which every later subprocess (and the pipeline, which honours it) would inherit."""
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)
