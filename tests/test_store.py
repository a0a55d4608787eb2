"""Where a store keeps its artifacts, and a fresh store opened by several clients at once: real MLflow, real
sqlite files, real processes.

Every test here works in its own tmp dir, and its process's directory is another tmp dir: an artifact that
went to ``./mlruns`` of the working folder shows up there, not in the repository."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import clean_env
from omegaconf import OmegaConf

from backproplab.tracking import store
from backproplab.tracking.store import TrackingError, open_store


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The process's working folder for the test: not where any store is."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with MLflow's schema and nothing else, made once: a copy of it is a fresh store without the
    seconds of MLflow's migrations (what a store is made of is the race test's business, below)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("made") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def fresh(made: Path, *paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, path)


def logger(uri: str, experiment: str = "backproplab"):
    return OmegaConf.create({"tracking_uri": uri, "experiment_name": experiment})


def run_with_artifact(uri: str, experiment: str = "backproplab") -> str:
    """A run recorded through the project's store, with one artifact: its run id."""
    client, exp_id = open_store(logger(uri, experiment))
    run_id = client.create_run(exp_id).info.run_id
    client.log_text(run_id, "hello", "note.txt")
    client.set_terminated(run_id)
    return run_id


def artifact_dir(uri: str, run_id: str) -> Path:
    """The run's artifact folder, as a fresh client (a user, later) reads it."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    from mlflow.tracking import MlflowClient

    location = MlflowClient(uri).get_run(run_id).info.artifact_uri
    assert location.startswith("file://"), location
    return Path(url2pathname(urlsplit(location).path))


def test_a_named_sqlite_store_keeps_its_artifacts_beside_it(tmp_path: Path, elsewhere: Path, made: Path) -> None:
    data = tmp_path / "data"
    fresh(made, data / "key.db", data / "mlflow.db", elsewhere / "rel.db")
    stores = {f"sqlite:///{data / 'key.db'}": data / "key.db-artifacts",  # one folder, two databases, two folders
              f"sqlite:///{data / 'mlflow.db'}?timeout=30": data / "mlruns"}  # MLflow's default name: its folder
    for uri, folder in stores.items():
        run_id = run_with_artifact(uri, "my exp")
        where = artifact_dir(uri, run_id)
        assert where == folder / "my exp" / run_id / "artifacts", uri
        assert (where / "note.txt").read_text() == "hello"
    relative = run_with_artifact("sqlite:///rel.db")  # relative to the working folder, as MLflow opens it
    assert artifact_dir("sqlite:///rel.db", relative).is_relative_to(elsewhere / "rel.db-artifacts")
    assert not (elsewhere / "mlruns").exists()


def test_the_default_store_keeps_its_artifacts_in_mlruns_beside_it(elsewhere: Path) -> None:
    uri, root = store.default_store()
    assert uri == f"sqlite:///{elsewhere.resolve() / 'mlflow.db'}"
    assert root == (elsewhere.resolve() / "mlruns").as_uri()


def test_an_existing_experiment_keeps_its_location_and_says_where(
    tmp_path: Path, elsewhere: Path, made: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    fresh(made, tmp_path / "team.db")
    uri, old = f"sqlite:///{tmp_path / 'team.db'}", tmp_path / "old-artifacts"
    made = MlflowClient(uri).create_experiment("backproplab", artifact_location=old.as_uri())
    with caplog.at_level(logging.WARNING, logger="backproplab"):
        run_id = run_with_artifact(uri)
        run_with_artifact(uri)  # the same process opening it again: no second line
    assert artifact_dir(uri, run_id) == old / run_id / "artifacts"
    assert MlflowClient(uri).get_experiment(made).artifact_location == old.as_uri()
    lines = [r.getMessage() for r in caplog.records if "keeps its artifacts" in r.getMessage()]
    assert len(lines) == 1 and str(old) in lines[0] and str(tmp_path / "team.db-artifacts") in lines[0], lines
    assert not (tmp_path / "team.db-artifacts").exists()


def test_a_database_server_store_says_where_artifacts_go_and_fails_in_seconds(
    elsewhere: Path, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"postgresql://alice:s3cr3t@127.0.0.1:{closed_port}/mlflow"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="backproplab"), pytest.raises(TrackingError) as e:
        open_store(logger(uri))
    assert time.monotonic() - start < 30  # not MLflow's minutes of connection retries
    assert "cannot open the MLflow store" in str(e.value) and "s3cr3t" not in str(e.value)
    (line,) = [r.getMessage() for r in caplog.records if "artifacts" in r.getMessage()]
    assert str(elsewhere.resolve() / "mlruns") in line and "s3cr3t" not in line


# One client of the race: it imports everything first, says it is ready for each round, waits for the round's
# start file, then opens that round's fresh store at once; "ours" through open_store, "foreign" as another MLflow
# client (mlflow ui, a notebook) does, with no lock of ours. One result line a round.
CLIENT = r"""
import sys, time, traceback
from pathlib import Path
from omegaconf import OmegaConf
from mlflow.tracking import MlflowClient
from backproplab.tracking.store import open_store

work, role, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    (work / f"ready-{r}-{role}").touch()
    deadline = time.monotonic() + 120
    while not (work / f"go-{r}").exists():
        if time.monotonic() > deadline:
            sys.exit(f"round {r}: no start")
        time.sleep(0.002)
    uri = f"sqlite:///{work / f'store-{r}' / 'mlflow.db'}"
    try:
        if role.startswith("foreign"):
            MlflowClient(uri).search_experiments()
        else:
            open_store(OmegaConf.create({"tracking_uri": uri, "experiment_name": "race"}))
        print(f"{r} ok", flush=True)
    except BaseException as e:
        print(f"{r} FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
"""

ROUNDS = 3


@pytest.mark.slow
def test_clients_opening_a_fresh_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Two of ours and another MLflow client create the same fresh store at the same moment, round after round:
    every one of ours opens it (MLflow makes the schema with no lock; the loser of a CREATE TABLE used to fail)."""
    roles = ["ours-a", "ours-b", "foreign"]
    procs = {role: subprocess.Popen([sys.executable, "-c", CLIENT, str(tmp_path), role, str(ROUNDS)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
             for role in roles}
    try:
        for r in range(ROUNDS):
            deadline = time.monotonic() + 150  # the first round waits for every process's imports
            while not all((tmp_path / f"ready-{r}-{role}").exists() for role in roles):
                failed = [role for role, p in procs.items() if p.poll() is not None]
                if failed or time.monotonic() > deadline:
                    pytest.fail(f"round {r}: {failed or 'timeout'}: "
                                + " | ".join(p.stderr.read()[-1500:] for p in procs.values() if p.poll() is not None))
                time.sleep(0.01)
            (tmp_path / f"go-{r}").touch()
        results = {role: p.communicate(timeout=180) for role, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for role in ("ours-a", "ours-b"):
        out, err = results[role]
        assert out.split("\n")[:ROUNDS] == [f"{r} ok" for r in range(ROUNDS)], f"{role}: {out}{err[-3000:]}"
    from mlflow.tracking import MlflowClient

    for r in range(ROUNDS):  # whoever made it, the store is whole
        db = tmp_path / f"store-{r}" / "mlflow.db"
        assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name("race") is not None


def test_a_sweep_whose_parent_run_cannot_open_stops_before_any_job(tmp_path: Path) -> None:
    """Hydra turns a callback's exception into a warning, and the jobs trained unparented: the sweep now stops
    with one line and exit 2, and no job runs."""
    from conftest import TRAIN

    proc = subprocess.run(
        [sys.executable, str(TRAIN), "-m", "trainer=numpy", "trainer.max_steps=2", "seed=0,1",
         "logger.tracking_uri=sqlite:////proc/no-such-folder/mlflow.db"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and lines[0].endswith("no job ran"), lines[0]
    assert "#0 :" not in proc.stdout and not list(tmp_path.rglob("*.log")), proc.stdout[-2000:]
