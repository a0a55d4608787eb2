"""hydra/sweeper=backproplab, the default sweeper: Hydra's basic sweeper, composing one job of each distinct shape
before launch instead of every job (hydra_plugins/backproplab_sweeper)."""

from __future__ import annotations

import pytest
from conftest import Workspace
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.backproplab_sweeper.sweeper import shape

GROUPS = {"optim", "model", "trainer", "experiment"}


def shape_of(*lines: str) -> tuple:
    parser = OverridesParser.create()
    return shape([parser.parse_override(line) for line in lines], lambda key: key in GROUPS)


def test_jobs_that_differ_in_plain_values_share_a_shape() -> None:
    assert shape_of("experiment=numpy", "seed=0") == shape_of("experiment=numpy", "seed=63")
    assert shape_of("optim.lr=1e-3", "seed=1") == shape_of("optim.lr=2e-3", "seed=2")
    # a group's choice, a typed hydra.* value, a deletion (which checks its value) and how a key is set all count
    assert shape_of("optim=sgd", "seed=0") != shape_of("optim=adam", "seed=0")
    assert shape_of("hydra.job.chdir=true") != shape_of("hydra.job.chdir=false")
    assert shape_of("~seed=0") != shape_of("~seed=1")
    assert shape_of("+extra=1") != shape_of("extra=1")
    assert shape_of("+extra=1") == shape_of("+extra=2")
    # a dict or a list merges into a node: which keys it has can decide whether the job composes
    assert shape_of("model.net={d_in:5}") != shape_of("model.net={bogus:5}")
    assert shape_of("model.net={d_in:5}") != shape_of("model.net=[1,2]")


@pytest.mark.slow
def test_a_later_shape_that_cannot_compose_stops_the_sweep_before_any_job(ws: Workspace) -> None:
    """optim.momentum is sgd's key, not adam's: the adam jobs cannot compose. The first job's shape checks out,
    the second shape stops the sweep with one line before any job starts, as Hydra's basic sweeper would."""
    proc = ws.train("-m", "trainer=numpy", "trainer.max_steps=5", "seed=0,1", "optim=sgd,adam",
                    "optim.momentum=0.5", check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "optim.momentum is not a key of the config" in proc.stderr
    assert "Traceback" not in proc.stderr
    (sweep,) = (ws.path / "multirun").glob("*/*")
    assert not [p for p in sweep.iterdir() if p.is_dir()], "no job started"
    assert ws.runs(children_only=True) == []


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "target"), [
    ((), "hydra_plugins.backproplab_sweeper.sweeper.BackproplabSweeper"),
    (("hydra/sweeper=basic",), "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"),
    (("hparams_search=optuna",), "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"),
])
def test_the_default_sweeper_gives_way_to_a_chosen_one(ws: Workspace, overrides: tuple, target: str) -> None:
    proc = ws.train(*overrides, "--cfg", "hydra", "--package", "hydra.sweeper", timeout=120)
    assert f"_target_: {target}" in proc.stdout
