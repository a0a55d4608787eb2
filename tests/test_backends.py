"""TensorFlow 2 and JAX (issue 12): both train the three nets through the CLI, equal autograd in float64
(tests/test_trainers.py holds every model x bias x loss to 1e-10), run every optimizer with torch.optim's math,
refuse what they cannot run in one line, and keep JAX's float64 switch to their own run."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Workspace

from backproplab import equivalence
from backproplab.trainers import registry

BACKENDS = ("tf2", "jax")


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Both trainers x the three nets, as one multirun through the real CLI."""
    ws = Workspace(tmp_path_factory.mktemp("backends"))
    ws.proc = ws.train("-m", "trainer=tf2,jax", "model=sequential,custom,dynamic", "trainer.max_steps=200",
                       env={"OMP_NUM_THREADS": "1"})
    ws.children = {(r.data.params["trainer.name"], r.data.params["model.name"]): r
                   for r in ws.runs(children_only=True)}
    return ws


@pytest.mark.parametrize("trainer", BACKENDS)
@pytest.mark.parametrize("model", ["sequential", "custom", "dynamic"])
def test_trains_every_net_through_the_cli(six: Workspace, trainer: str, model: str) -> None:
    run = six.children[(trainer, model)]
    assert run.info.status == "FINISHED"
    losses = six.losses(run.info.run_id)
    assert len(losses) == 200 and losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])  # it learns
    if trainer == "jax":  # compiled before the loop, and reported on its own
        assert run.data.metrics["time/compile_s"] > 0


def test_optimizers_mean_torch_optims_math() -> None:
    """Every optimizer each backend accepts, against torch.optim (Lightning), float64, 500 steps."""
    overrides = ["seed=0", "model=sequential", "logger=none", "accelerator=cpu", "data.dtype=float64",
                 "trainer.precision=64-true", "trainer.max_steps=500"]
    report = equivalence.check_optimizers(list(BACKENDS), overrides)
    rows = {row[0]: row for row in report.rows}
    assert set(rows) == {registry.reference("optim_reference"), *BACKENDS}
    for trainer in BACKENDS:
        assert rows[trainer][-1] == "ok", report.rows
        cells = dict(zip(report.params, rows[trainer][1:-1], strict=True))
        assert set(cells) == {"sgd", "sgd_momentum", "adam", "rmsprop", "adagrad"}
        for optim, cell in cells.items():
            bound = equivalence.OPTIM_TOL.get(optim, equivalence.OPTIM_TOL_DEFAULT)
            assert float(cell) <= bound, (trainer, optim, cell)
    assert report.ok


@pytest.mark.parametrize("trainer", BACKENDS)
def test_refusals_are_one_line_and_leave_no_run(ws: Workspace, trainer: str) -> None:
    for overrides, expected in [
        (["experiment=sine_module"], f"model=poly3 is not supported by trainer={trainer}"),
        (["optim=adam", "+optim.optimizer.weight_decay=1e-4"],
         f"optim.optimizer.weight_decay is not implemented by trainer={trainer}"),
        (["trainer.accelerator=gpu"], "trainer.accelerator=gpu"),
    ]:
        if overrides == ["trainer.accelerator=gpu"] and registry.load(trainer).gpu_available():
            continue  # a GPU is there: nothing to refuse
        proc = ws.train(*overrides, f"trainer={trainer}", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
        assert line.startswith("error: ") and expected in line, line
    assert not ws.db.exists()  # refused before the store is opened


def test_jax_float64_stays_inside_its_run() -> None:
    """A multirun runs its jobs in one process: a float64 job must not turn the next one's float32 to float64."""
    import jax
    from hydra import compose, initialize_config_dir

    from backproplab.problem import make_problem
    from backproplab.runtime import conf_dir
    from backproplab.spec import bind
    from backproplab.steps import Recorder

    dtypes = []
    for dtype in ("float64", "float32"):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["trainer=jax", "logger=none", f"data.dtype={dtype}",
                                                           "trainer.max_steps=3"])
        result = bind(cfg)(make_problem(cfg), Recorder().on_step)
        dtypes.append({w.dtype for w in result.weights.values()})
    assert dtypes == [{np.dtype("float64")}, {np.dtype("float32")}]
    assert not jax.config.jax_enable_x64


@pytest.mark.gpu
@pytest.mark.parametrize("trainer", BACKENDS)
def test_backend_on_gpu_matches_the_cpu(trainer: str) -> None:
    from conftest import REPO
    from hydra import compose, initialize_config_dir

    from backproplab.problem import make_problem
    from backproplab.spec import bind
    from backproplab.steps import Recorder

    if not registry.load(trainer).gpu_available():
        pytest.skip(f"{trainer}: its framework sees no GPU")
    curves = []
    for accelerator in ("cpu", "gpu"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                f"trainer={trainer}", "logger=none", "data.dtype=float64", "trainer.precision=64-true",
                "trainer.max_steps=20", f"trainer.accelerator={accelerator}"])
        rec = Recorder()
        bind(cfg)(make_problem(cfg), rec.on_step)
        curves.append(rec.losses)
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-8)
