"""The manual stays true: README.md and docs/*.md, checked against the code.

- every relative link and image resolves, and every anchor names a heading of its page;
- every ``python scripts/train.py ...`` / ``backproplab-train ...`` line composes, as ``--cfg job`` would
  (a sweep's first job; ``<placeholders>`` filled with a word);
- every ``make ...`` line passes ``make -n``;
- every config key a page names in code exists in the config composed with the groups named on the same line
  (``hydra.launcher.partition`` once ``hydra/launcher=slurm`` is chosen; a page may name groups for all its
  lines in a ``<!-- docs-check: group=option ... -->`` comment);
- the Python API page's examples run, and one short real job runs for each trainer the pages use, in one process;
- every other command is named in ``ELSEWHERE``, with the test that runs it or why none can;
- docs/configuration.md is what conf/ gives, and no picture in docs/images is stale.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO, clean_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAIN = ("python scripts/train.py", "backproplab-train")
GROUP = re.compile(r"^(?:hydra/)?[a-z_]+=")
KEY = re.compile(r"(?<![\w./-])((?:model|optim|loss|trainer|data|logger)\.[a-z_][\w.]*"
                 r"|hydra\.(?:launcher|sweeper)\.[a-z_][\w.]*)")
# Commands that are not train or make lines: the test that runs them, or why none can here.
ELSEWHERE = {
    "python scripts/verify.py": "tests/test_verify.py::test_all_trainers_agree_in_float64",
    "python scripts/report.py": "tests/test_report.py::test_cli_reports_the_latest_sweep_and_logs_it",
    "python scripts/bench.py": "tests/test_bench.py::test_json_has_every_section_and_positive_finite_ratios",
    "python scripts/sync.py": "tests/test_team_server.py::test_a_server_that_stays_away_costs_no_step_once_synced",
    "scripts/slurm_cluster.sh": "tests/test_slurm.py::cluster",
    "export SLURM_CONF": "tests/test_slurm.py::cluster",
    "sbatch ": "tests/test_slurm.py (the sweep from a job of its own: by hand, see docs/slurm.md)",
    "apt-get install": "needs root and Debian's registry: .ci/run installs these",
    "pip uninstall -y tensorflow-cpu": "needs a machine with an NVIDIA GPU",
    "mkdir -p team": "tests/test_team_server.py::team",
    "initdb ": "tests/test_team_server.py::team",
    "pg_ctl ": "tests/test_team_server.py::team",
    "psql ": "tests/test_team_server.py::team",
    "cat > team/basic_auth.ini": "tests/test_team_server.py::team",
    "export MLFLOW_": "tests/test_team_server.py::test_a_parallel_sweep_on_postgres_behind_a_login",
    "mlflow server ": "tests/test_team_server.py::team",
    "python -c \"import json": "tests/test_models.py::test_mlflow_models_predict_and_serve_answer_plain_json",
    "mlflow models ": "tests/test_models.py::test_mlflow_models_predict_and_serve_answer_plain_json",
    "curl -s http://127.0.0.1:5001/invocations": "tests/test_models.py (it posts the same JSON to the server)",
}
# make lines that must not run in a test, and the test that covers what they do
MAKE_NOT_RUN = {
    "test": "it would run the suite inside itself; CI runs it",
    "bench": "~20 min; tests/test_bench.py runs --quick",
    "ui": "it serves until stopped; tests/test_results.py::test_the_address_make_ui_prints_opens_on_the_runs_table",
    "gpu-check": "needs a GPU; tests/test_gpu_check.py",
}


# train lines that compose here but cannot run for real in this test, and the test that runs what they need
NEEDS = {
    "accelerator=gpu": "a GPU: tests/test_pipeline.py::test_gpu_trains",
    "hydra/launcher=slurm": "a Slurm cluster: tests/test_slurm.py::test_a_newcomers_numpy_sweep_runs_as_one_job_array",
    "logger.tracking_uri=http": "a server: tests/test_team_server.py::test_a_parallel_sweep_on_postgres_behind_a_login",
}


def fences(text: str) -> list[tuple[str, int, str]]:
    """(language, line number, line) of every line in a fenced block, continuation lines joined."""
    out, lang, joined, start = [], None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            continue
        if lang is None:
            continue
        joined, start = (joined + " " + line.strip(), start) if joined else (line, n)
        if joined.endswith("\\"):
            joined = joined[:-1]
            continue
        out.append((lang, start, joined))
        joined = ""
    return out


@cache
def commands() -> list[tuple[str, int, str]]:
    """(page, line, command) of every shell command in the pages: bash blocks and inline code."""
    found = []
    for page in PAGES:
        text = page.read_text()
        heredoc = None  # the end word of a here-document being skipped: its lines are data, not commands
        for lang, n, line in fences(text):
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            if lang in ("bash", "sh") and line.strip() and not line.strip().startswith("#"):
                found.append((page.name, n, line.strip()))
                if match := re.search(r"<<-?\s*'?(\w+)'?", line):
                    heredoc = match.group(1)
        for match in re.finditer(r"`((?:python scripts/|backproplab-train|make )[^`]*)`", text):
            found.append((page.name, text[: match.start()].count("\n") + 1, match.group(1)))
    return found


def argv(command: str) -> list[str]:
    filled = re.sub(r"<[^>]+>", "placeholder", command)
    return shlex.split(filled, comments=True)


def train_args(command: str) -> list[str] | None:
    for prog in TRAIN:
        if command.startswith(prog):
            return argv(command)[len(prog.split()):]
    return None


def first_job(args: list[str]) -> list[str]:
    """A sweep's first job (``optim=sgd,adam`` -> ``optim=sgd``), without the command line's flags."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides, skip = [], False
    for a in args:  # Hydra's flags, and the value of those that take one (--cfg job, -p hydra.launcher)
        if not skip and not a.startswith("-"):
            overrides.append(a)
        skip = a in ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp")
    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
                   else o.input_line)
    return out


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def test_links_and_images_resolve() -> None:
    broken = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            target = match.group(1)
            if re.match(r"^[a-z]+://", target):
                broken.append(f"{page.name}: {target} points outside the repository")
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} does not exist")
            elif anchor and file.suffix == ".md":
                headings = {re.sub(r"[^\w\- ]", "", h.strip("# ").lower()).replace(" ", "-")
                            for h in file.read_text().splitlines() if h.startswith("#")}
                if anchor not in headings:
                    broken.append(f"{page.name}: {target}: no heading #{anchor}")
    assert broken == []


def test_every_train_line_composes() -> None:
    from backproplab.cli import unknown_option
    from backproplab.config import refuse_added_keys

    failed = []
    for page, n, command in commands():
        args = train_args(command)
        if args is None or {"--help", "--version"} & set(args):
            continue
        try:
            overrides = first_job(args)
            assert unknown_option(overrides) is None, unknown_option(overrides)
            refuse_added_keys(compose(overrides), overrides)
        except Exception as e:
            failed.append(f"{page}:{n}: {command}: {str(e).splitlines()[0]}")
    assert failed == [] and len([c for c in commands() if train_args(c[2]) is not None]) > 40


def test_help_and_version_lines_run() -> None:
    for args in (["--help"], ["--version"]):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], capture_output=True,
                              text=True, timeout=120, env=clean_env())
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]


def test_every_make_line_is_a_target_make_can_plan() -> None:
    failed = []
    for page, n, command in commands():
        if not command.startswith("make "):
            continue
        args = argv(command)[1:]
        proc = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            failed.append(f"{page}:{n}: {command}: {proc.stderr.strip()[:200]}")
    assert failed == []
    covered = {t for t in MAKE_NOT_RUN if any(c.startswith(f"make {t}") for _, _, c in commands())}
    assert covered == set(MAKE_NOT_RUN), "a make line in MAKE_NOT_RUN is no longer in the pages"


def test_every_other_command_is_run_by_a_named_test() -> None:
    loose = []
    for page, n, command in commands():
        if train_args(command) is not None or command.startswith("make "):
            continue
        if not any(command.startswith(prefix) for prefix in ELSEWHERE):
            loose.append(f"{page}:{n}: {command}")
    assert loose == [], "name the test that runs these in ELSEWHERE"
    for where in ELSEWHERE.values():
        if where.startswith("tests/"):
            path, _, name = where.partition("::")
            file = REPO / path.split(" ")[0]
            assert file.is_file() and (not name or f"def {name.split()[0]}(" in file.read_text()), where


def test_lines_that_need_a_gpu_slurm_or_a_server_name_the_test_that_runs_them() -> None:
    for needle, where in NEEDS.items():
        assert any(needle in c for _, _, c in commands() if train_args(c) is not None), needle
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", where):
            assert f"def {name}(" in (REPO / path).read_text(), where


def page_groups(text: str) -> list[str]:
    return [g for c in re.findall(r"<!-- docs-check: ([^>]*)-->", text) for g in c.split() if "=" in g]


def test_every_config_key_named_exists() -> None:
    from omegaconf import OmegaConf

    missing = []
    for page in PAGES:
        text = page.read_text()
        context = page_groups(text)
        for n, line in enumerate(text.splitlines(), 1):
            spans = re.findall(r"`([^`]+)`", line) if not line.startswith(("    ", "python", "make")) else [line]
            keys = {k.rstrip(".") for span in spans for k in KEY.findall(span)
                    if not re.search(rf"\+{re.escape(k)}", span)}
            if not keys:
                continue
            tokens = [t for span in spans for t in span.replace(",", " ").split()]
            groups = [t for t in tokens if GROUP.match(t) and "." not in t.split("=")[0]]
            groups = [g.split(",")[0] for g in {*context, *groups}]
            try:
                cfg = compose(sorted(set(groups)))
            except Exception:
                cfg = compose(sorted(set(context)))
            for key in keys:
                if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
                    missing.append(f"{page.name}:{n}: {key} (groups: {' '.join(groups) or 'the defaults'})")
    assert missing == []


def trainers_used() -> set[str]:
    """The trainers the pages' train lines run: named, or their presets', or the default."""
    used = set()
    for _, _, command in commands():
        args = train_args(command)
        if args is None:
            continue
        for arg in args:
            key, _, value = arg.partition("=")
            for option in value.split(","):
                if key == "trainer":
                    used.add(option)
                elif key == "experiment":
                    preset = (REPO / "conf" / "experiment" / f"{option}.yaml").read_text()
                    used.add(re.search(r"override /trainer: (\w+)", preset).group(1))
        if not any(a.startswith(("trainer=", "experiment=")) for a in args):
            used.add("lightning")
    return used


@pytest.mark.slow
def test_the_python_examples_and_a_short_job_of_every_trainer_run(tmp_path: Path) -> None:
    """In one fresh process: the Python API page's examples as written, then each trainer the pages use for
    3 steps through backproplab.train, all recorded in one store."""
    blocks = [line for lang, _, line in fences((REPO / "docs" / "python-api.md").read_text()) if lang == "python"]
    trainers = sorted(trainers_used())
    assert {"numpy", "lightning", "tensorflow", "jax", "tf2"} <= set(trainers)
    script = "\n".join([
        *blocks,
        "import backproplab",
        f"for name in {trainers!r}:",
        "    r = backproplab.train(f'trainer={name}', 'trainer.max_steps=3')",
        "    assert r.status == 'FINISHED' and len(r.losses) == 3, (name, r)",
        "    print('ran', name, r.run_id)",
    ])
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ran ") == len(trainers)
    assert "FAILED loss diverged" in proc.stdout  # the page's failed example, as it says


@pytest.mark.parametrize("script", ["config_docs.py", "docs_images.py"])
def test_generated_docs_are_up_to_date(script: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
