"""The shape of the code, held by tests: the import graph's arrows point one way, MLflow lives in tracking/,
and the trainers are known only through the registry (their yamls)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

from backproplab.trainers import registry

PKG = REPO / "src" / "backproplab"


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def ours(path: Path) -> set[str]:
    """The backproplab modules a file imports, as paths under src/backproplab ("tracking/run", "steps", ...)."""
    out = set()
    for name in imports(path):
        if name.startswith("backproplab."):
            parts = name.split(".")[1:]
            for depth in range(len(parts), 0, -1):  # the longest prefix that is a module or a package
                rel = "/".join(parts[:depth])
                if (PKG / f"{rel}.py").exists() or (PKG / rel).is_dir():
                    out.add(rel)
                    break
    return out


def files(under: str) -> list[Path]:
    base = PKG / under
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def test_trainers_import_only_the_step_contract_problem_models_functions_and_optimizers() -> None:
    allowed = {"steps", "problem", "forward", "models", "functions", "optimizers", "runtime", "signals", "trainers"}
    for path in files("trainers"):
        for dep in ours(path):
            assert dep.split("/")[0] in allowed, f"{path.relative_to(REPO)} imports backproplab.{dep}"


def test_trainers_take_plain_values_and_the_run_never_writes_its_config() -> None:
    """Issue 35: no trainer module takes the config (none imports omegaconf), each exposes its own forward pass
    and first-step gradients beside its loop, and the run flow reads its run spec without writing the config."""
    for spec in registry.trainers().values():
        path = PKG / (spec.module.removeprefix("backproplab.").replace(".", "/") + ".py")
        assert not {m for m in imports(path) if m.split(".")[0] == "omegaconf"}, f"{path.name} imports omegaconf"
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
            t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert {"train", "gradients", "predict"} <= defined, f"{path.name} defines {sorted(defined)}"
    for path in files("trainers"):  # their shared helpers too; the registry reads the yamls, with OmegaConf
        assert path.name == "registry.py" or "omegaconf" not in {m.split(".")[0] for m in imports(path)}, path.name
    assert "open_dict" not in (PKG / "run.py").read_text()


def reach(path: Path) -> set[str]:
    """Every backproplab module a file imports, directly or through the modules it imports."""
    seen: set[str] = set()
    todo = list(ours(path))
    while todo:
        dep = todo.pop()
        if dep in seen:
            continue
        seen.add(dep)
        target = PKG / f"{dep}.py" if (PKG / f"{dep}.py").exists() else PKG / dep / "__init__.py"
        if target.exists():
            todo += ours(target)
    return seen


def test_tracking_never_imports_a_trainer_and_nothing_low_imports_upward() -> None:
    for path in files("tracking"):
        assert not any(d.split("/")[0] in ("trainers", "run", "config") for d in reach(path)), path
    for low in ("steps", "problem", "models", "functions", "optimizers", "runtime", "signals", "regions"):
        for dep in ours(PKG / f"{low}.py"):
            assert dep in {"steps", "runtime", "signals"}, f"{low}.py imports backproplab.{dep}"


def import_graph() -> dict[str, set[str]]:
    """Each module of the package (dotted: ``backproplab.tracking.run``; a package's ``__init__`` is the package)
    -> the package's modules it imports: module-level and inside functions, relative names resolved. ``from
    backproplab import signals`` is an arrow to ``backproplab.signals``, not to the package's ``__init__``; the
    parent packages that Python loads on the way are not arrows (each would close a circle with its own modules)."""
    modules = {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..tracking import store
                    anchor = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # a name inside a module, or not ours at all
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def unit(name: str) -> str:
    """A module's unit: its subpackage (tracking, slurm, trainers, data), or itself for a top module."""
    return ".".join(name.split(".")[:2])


def by_package(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same arrows between units (``unit``)."""
    units: dict[str, set[str]] = {}
    for name, deps in graph.items():
        units.setdefault(unit(name), set()).update(unit(d) for d in deps if unit(d) != unit(name))
    return units


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of arrows (its first node repeated at its end), or None: a depth-first walk."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                return [*path[path.index(dep):], dep]
            if dep not in done and (cycle := visit(dep)):
                return cycle
        done.add(path.pop())
        return None

    return next((cycle for node in sorted(graph) if node not in done and (cycle := visit(node))), None)


def test_no_import_runs_in_a_circle() -> None:
    """Neither between modules nor between packages: tracking/ and slurm/ each importing the other is a circle,
    though no two modules of theirs import each other."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"] and find_cycle({"a": {"b"}}) is None
    graph = import_graph()
    assert "backproplab.agreement" in graph["backproplab.run"]  # an import inside a function is an arrow too
    cycle = find_cycle(graph)
    assert cycle is None, "modules import each other in a circle: " + " -> ".join(cycle or [])
    cycle = find_cycle(by_package(graph))
    if cycle is not None:
        hops = []
        for a, b in zip(cycle, cycle[1:], strict=False):  # each hop with the module imports that make it
            arrows = sorted(f"{m} -> {d}" for m in graph for d in graph[m] if unit(m) == a and unit(d) == b)
            hops.append(f"{a} -> {b} ({', '.join(arrows)})")
        pytest.fail("packages import each other in a circle: " + "; ".join(hops))


def test_tracking_and_trainers_never_import_the_run_or_its_entry_points() -> None:
    """Not directly, nor through another module: run.py, cli.py and api.py are above both (and the package's
    ``__init__``, which loads api.py for ``backproplab.train``)."""
    graph = import_graph()
    above = {"backproplab", "backproplab.run", "backproplab.cli", "backproplab.api"}
    for start in sorted(n for n in graph if n.startswith(("backproplab.tracking", "backproplab.trainers"))):
        came_from: dict[str, str] = {start: ""}
        todo = [start]
        while todo:
            node = todo.pop()
            for dep in graph[node] - came_from.keys():
                came_from[dep] = node
                todo.append(dep)
        for top in sorted(above & came_from.keys()):
            chain = [top]
            while came_from[chain[-1]]:
                chain.append(came_from[chain[-1]])
            pytest.fail(f"{start} imports {top}: " + " -> ".join(reversed(chain)))


def test_every_mlflow_import_in_the_package_is_inside_tracking() -> None:
    outside = [p for p in PKG.rglob("*.py") if "tracking" not in p.parts]
    for path in outside:
        assert not any(m == "mlflow" or m.startswith("mlflow.") for m in imports(path)), path


def test_the_package_holds_no_module_over_450_lines() -> None:
    for path in PKG.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 450, path


def test_no_trainer_is_named_in_src_outside_trainers() -> None:
    names = "|".join(registry.trainers())
    quoted = re.compile(rf"""["']({names})["']""")
    for path in PKG.rglob("*.py"):
        if "trainers" in path.parts:
            continue
        assert not quoted.search(path.read_text()), f"{path.relative_to(REPO)} names a trainer"


def test_every_trainer_yaml_names_an_importable_module_and_its_capabilities() -> None:
    import importlib.util

    specs = registry.trainers()
    assert sorted(specs) == sorted(p.stem for p in (REPO / "conf" / "trainer").glob("*.yaml"))
    for spec in specs.values():
        assert importlib.util.find_spec(spec.module), spec.module
        assert spec.models and spec.optims and spec.devices and spec.precisions, spec.name
    assert registry.reference() in specs


def test_tensorflow_is_an_extra_with_a_cpu_and_a_gpu_build() -> None:
    """tensorflow-cpu can never see a GPU, so TensorFlow is not a core dependency: the [tf] extra is the CPU
    build (make installs it), [tf-gpu] the GPU-capable wheel with its CUDA libraries, and the trainers that need
    TensorFlow name both when it is missing, and the GPU one when a CPU-only build is asked for a GPU."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("tensorflow")]
    extras = project["optional-dependencies"]
    assert extras["tf"] == ["tensorflow-cpu>=2.16,<2.22"]
    assert extras["tf-gpu"] == ["tensorflow[and-cuda]>=2.16,<2.22"]
    assert "tf," in (REPO / "Makefile").read_text().split("-e '.[")[1]
    needing = [s for s in registry.trainers().values() if "tensorflow" in s.requires]
    assert {s.name for s in needing} == {"tensorflow", "tf2"}
    for spec in needing:
        assert "'.[tf]'" in spec.install and "'.[tf-gpu]'" in spec.install, spec.name
        assert spec.gpu_install == "pip uninstall -y tensorflow-cpu && pip install -e '.[tf-gpu]'", spec.name


@pytest.mark.slow
def test_a_new_trainer_is_its_module_and_its_yaml(tmp_path: Path) -> None:
    """A copy of trainers/numpy.py under a new name, with a copy of its yaml renamed inside, trains through the
    CLI and is compared by verify; no other file is touched."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import clean_env

    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__")
    for part in ("src", "conf", "scripts"):  # src/backproplab/conf stays a link to conf/
        shutil.copytree(REPO / part, repo / part, ignore=skip, symlinks=True)
    trainers = repo / "src" / "backproplab" / "trainers"
    shutil.copy(trainers / "numpy.py", trainers / "numpy_copy.py")
    yaml = (repo / "conf" / "trainer" / "numpy.yaml").read_text()
    yaml = yaml.replace("name: numpy\n", "name: numpy_copy\n").replace(".trainers.numpy\n", ".trainers.numpy_copy\n")
    (repo / "conf" / "trainer" / "numpy_copy.yaml").write_text(yaml)
    env = {**clean_env(), "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}

    def run(script: str, *args: str) -> str:
        proc = subprocess.run([sys.executable, str(repo / "scripts" / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert "numpy_copy-sequential-sgd: 5 steps" in run("train.py", "trainer=numpy_copy", "trainer.max_steps=5",
                                                        "logger=none")
    out = run("verify.py", "--trainers", "numpy,numpy_copy", "--steps", "20", "--bias", "true")
    assert "│ numpy_copy " in out and "all trainers agree" in out


@pytest.mark.slow
def test_an_installed_package_works_from_any_directory(tmp_path: Path) -> None:
    """``pip install .`` (not editable) ships conf/ inside the package: both console scripts run elsewhere."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import clean_env

    source, target, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    for part in ("src", "conf"):  # a copy: building writes build/ and *.egg-info into the tree
        shutil.copytree(REPO / part, source / part, symlinks=True,
                        ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(target), str(source)], check=True, capture_output=True, timeout=600)
    assert (target / "backproplab" / "conf" / "config.yaml").is_file()
    elsewhere.mkdir()
    env = {**clean_env(), "PYTHONPATH": str(target)}

    def run(script: str, *args: str) -> str:
        proc = subprocess.run([str(target / "bin" / script), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert "numpy-sequential-sgd: 3 steps" in run("backproplab-train", "trainer=numpy", "trainer.max_steps=3",
                                                  "logger=none")
    assert "all trainers agree" in run("backproplab-verify", "--trainers", "numpy", "--steps", "10", "--bias", "true")
    versions = run("backproplab-train", "--version")
    libraries = ("torch", "lightning", "hydra-core", "mlflow")
    assert versions.startswith("backproplab 0.") and all(f"{name} " in versions for name in libraries), versions
    # the Python API, in a fresh process: the installed package's config, its store in the current directory
    api = subprocess.run(
        [sys.executable, "-c", "import backproplab; r = backproplab.train('trainer=numpy', 'trainer.max_steps=3'); "
         "print(r.status, len(r.losses), r.run_id is not None, r.output_dir)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert api.returncode == 0 and "\nFINISHED 3 True " in api.stdout, api.stderr[-3000:]
    assert (elsewhere / "mlflow.db").is_file() and str(elsewhere / "outputs") in api.stdout
    where = subprocess.run([sys.executable, "-c", "import backproplab; print(backproplab.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(target)), where
    assert not os.path.exists(elsewhere / "conf")


def test_every_trainer_and_model_it_trains_has_its_step_marked() -> None:
    """The lesson page shows each run's step from regions marked in the source (``# lesson: <name>``), chosen by
    the trainer's yaml for the model: every pair a trainer supports has them, and each region is code."""
    from backproplab import regions

    for spec in registry.trainers().values():
        assert spec.lesson, spec.name
        for model in spec.models:
            chosen = regions.picks(spec.lesson, model)
            step = regions.step_code(regions.read([file for file, _ in chosen]), chosen)
            assert {r["region"] for r in step} == {region for _, region in chosen}, (spec.name, model)
            assert all(r["code"].strip() and "# lesson:" not in r["code"] for r in step), (spec.name, model)


@pytest.mark.parametrize("experiment", ["numpy", "tensor", "autograd", "function"])
def test_the_lesson_shows_the_tutorials_net_as_the_tutorial_writes_it(experiment: str) -> None:
    """Issue 35: the lesson page of ``-m experiment=numpy,tensor`` shows at most 30 non-blank lines of code per way
    (the tutorial's own scripts are 21 and 23): the plain two-layer net and the loop, not the dynamic net's loop
    nor the harness's plumbing; the dynamic net has its own region."""
    from omegaconf import OmegaConf

    from backproplab import regions

    preset = OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml")
    spec = registry.spec(next(d["override /trainer"] for d in preset.defaults if "override /trainer" in d))
    chosen = regions.picks(spec.lesson, "sequential")
    step = regions.step_code(regions.read([file for file, _ in chosen]), chosen)
    lines = [line for r in step for line in str(r["code"]).splitlines() if line.strip()]
    assert len(lines) <= 30, f"{experiment}: {len(lines)} lines\n" + "\n".join(lines)
    assert not any("wm" in line or "middle" in line for line in lines), experiment  # the dynamic net's
    if spec.supports("model", "dynamic"):
        assert "dynamic_net" in {region for _, region in regions.picks(spec.lesson, "dynamic")}, spec.name
