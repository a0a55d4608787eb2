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
- docs/configuration.md is what conf/ gives, and no picture in docs/images is stale;
- every output a page quotes is what a real run prints (``QUOTES``, below): a ```text block's lines, and the
  inline quotes listed there. A ```text block's ``$ python scripts/train.py ...`` lines are run, and the lines
  under each are what it must print; ``verify``'s figures are held to the bounds equivalence.md states.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO, TRAIN, clean_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TRAIN_PROGS = ("python scripts/train.py", "backproplab-train")
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
    for prog in TRAIN_PROGS:
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
        "import backproplab, mlflow",
        "print('description:', mlflow.MlflowClient().get_run(result.run_id).data.tags['mlflow.note.content'])",
        f"for name in {trainers!r}:",
        "    r = backproplab.train(f'trainer={name}', 'trainer.max_steps=3')",
        "    assert r.status == 'FINISHED' and len(r.losses) == 3, (name, r)",
        "    print('ran', name, r.run_id)",
    ])
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ran ") == len(trainers)
    # what the page says its prints print, and the description it names for its first run
    page = (REPO / "docs" / "python-api.md").read_text()
    said = [m.group(1) for line in blocks if (m := re.search(r"^\s*print\(.*\)\s+#\s*(.+)$", line))]
    said += re.findall(r"e\.g\. `(backproplab-train [^`]+)`", page)
    assert len(said) == 3, said
    for quote in said:
        assert printed(quote, {}, proc.stdout), f"python-api.md quotes {quote!r}; printed:\n{proc.stdout[-3000:]}"


@pytest.mark.parametrize("script", ["config_docs.py", "docs_images.py"])
def test_generated_docs_are_up_to_date(script: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- Quoted output ------------------------------------------------------------------------------------------------
# Every output a page quotes is what a real run prints. A quote is matched against the run's output (ANSI codes
# stripped, each redrawn frame a line) by its shape: <...>, "..." and "…" stand for any text; a progress bar, a
# clock time and whitespace match any of their kind; every other character is itself, and every number must be
# the printed one within the digits the page shows. LOOSE lets a figure that moves with the thread count or the
# clock be a bound instead (lo, hi), and a word that may print otherwise be a regex.
RUNS = {  # the runs whose output the pages quote, each once, in a fresh launch dir with its own store
    "register": ["-m", "optim=sgd,adam", "optim.lr=1e-4,1e-3", "logger.register=tutorial-net"],
    "diverging sweep": ["-m", "experiment=sine_numpy", "optim.lr=1e-6,1e-3", "trainer.progress_bar=true"],
    "all refused": ["-m", "trainer=numpy", "optim=adam,rmsprop", "logger.register=tutorial-net"],
}
# (page, the quote as the page has it, the run that prints it, LOOSE)
QUOTES = [
    ("models.md", "[backproplab] registered lightning-sequential-sgd lr=0.001 (final loss 1.169e-12) as tutorial-net "
     "version 1, alias champion: models:/tutorial-net@champion", "register",
     {"sgd": "sgd|adam", "1.169e-12": (0, 1e-10)}),  # two jobs end at float32's rounding floor
    ("models.md", "[backproplab] logger.register=tutorial-net: no run FINISHED, so no model was registered",
     "all refused", {}),
    ("running.md", "[backproplab] job 3/4: optim=adam optim.lr=0.0001", "register", {}),
    ("running.md", "train ━━━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━ 1551/2000 loss 30.77 3,083 steps/s 0:00:00",
     "diverging sweep", {"1551": (1, 2000), "30.77": (12, 6e5), "3,083": (1, math.inf)}),  # a moment's
    ("lesson.md", "[backproplab] lesson: http://127.0.0.1:5000/#/experiments/1/runs/<parent run id>/artifacts/"
     "lesson.html?workflowType=machine_learning (after: make ui, or mlflow ui here); the file: <sweep dir>/report/"
     "lesson.html", "diverging sweep", {}),
    ("results.md", "FINISHED run <run name>: http://127.0.0.1:5000/#/experiments/1/runs/<run id>?workflowType="
     "machine_learning (after: make ui, or mlflow ui here)", "diverging sweep", {}),
    ("tutorial.md", "Result: y = 0.04307 + 0.8111 x - 0.00743 x^2 - 0.08683 x^3", "diverging sweep", {}),
    ("faults.md", "[backproplab] FAILED sine_numpy lr=0.001 (<run id>): loss diverged at step 2: train/loss=1.097e+16 "
     "> trainer.divergence_factor=1e+06 x the first step's loss 5.606e+05", "diverging sweep", {}),
    ("faults.md", "[backproplab] sweep done: 1 failed, 1 finished (parent run <run id>)", "diverging sweep", {}),
    ("sweeps.md", "[backproplab] sweep done: 1 failed, 1 finished (parent run <run id>)", "diverging sweep", {}),
]
# quoted output that no run here prints, and the test that checks it or why none can
QUOTED_ELSEWHERE = {
    ("architecture.md", "config (Hydra composes"): "a diagram, not output",
    ("architecture.md", "conf/ "): "the layout of the repository, not output",
    ("slurm.md", "error: Slurm refused the jobs"): "a Slurm cluster: tests/test_slurm.py::"
                                                   "test_a_request_the_cluster_cannot_meet_is_refused_in_one_line",
}
SHAPE = re.compile(r"(?P<hole><[^<>\s][^<>]*>|\.\.\.|…)|(?P<bar>[━╸╺]+)|(?P<clock>\d+:\d\d:\d\d)"
                   r"|(?P<num>(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?(?![\w]))|(?P<space>\s+)")


def clean(output: str) -> list[str]:
    """Output as lines: ANSI codes dropped, each redrawn frame (\\r, erase-line) a line of its own."""
    output = re.sub(r"\x1b\[\d*K", "\n", output)
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    return output.replace("\r", "\n").splitlines()


def number(text: str) -> float:
    return float(text.replace(",", ""))


def within_digits(page: str, printed: float) -> bool:
    """``printed`` rounds to the number ``page`` shows: within half a unit of its last digit."""
    mantissa, _, exponent = page.replace(",", "").lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    return abs(printed - number(page)) <= unit / 2 * (1 + 1e-9)


def printed(quote: str, loose: dict, output: str) -> bool:
    """Whether a line of ``output`` has ``quote``'s shape, its numbers within the digits or bounds it shows."""
    keys = "|".join(re.escape(k) for k in sorted(loose, key=len, reverse=True))
    tokens = re.compile(rf"(?P<loose>{keys})|{SHAPE.pattern}" if keys else SHAPE.pattern)
    pattern, checks, at = "", [], 0
    for m in tokens.finditer(quote):
        pattern += re.escape(quote[at:m.start()])
        at, kind, text = m.end(), m.lastgroup, m.group()
        if kind == "loose" and isinstance(loose[text], str):
            pattern += f"(?:{loose[text]})"
        elif kind in ("loose", "num"):
            pattern += r"([-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)"
            lo, hi = loose.get(text, (None, None))
            checks.append((lambda p, lo=lo, hi=hi: lo <= number(p) <= hi) if lo is not None
                          else (lambda p, text=text: within_digits(text, number(p))))
        else:
            pattern += {"hole": ".+?" if text.startswith("<") else ".*?", "bar": "[━╸╺]+",
                        "clock": r"\d+:\d\d:\d\d", "space": r"\s+"}[kind]
    pattern += re.escape(quote[at:])
    for line in clean(output):
        for m in re.finditer(pattern, line):
            if all(check(group) for check, group in zip(checks, m.groups(), strict=True)):
                return True
    return False


def in_page(page: str, quote: str) -> bool:
    text = " ".join((REPO / "docs" / page).read_text().split()) if page != "README.md" else ""
    return " ".join(quote.split()) in text


def output_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number, lines) of every ```text block, and every block without a language."""
    found, inside = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if inside is None:
                inside = line.strip()[3:].strip()
                if inside in ("", "text"):
                    found.append((n, []))
            else:
                inside = None
        elif inside in ("", "text"):
            found[-1][1].append(line)
    return found


def transcripts() -> list[tuple[str, str, list[str]]]:
    """(page, command, the lines under it) of every ``$ python scripts/train.py`` line of a ```text block."""
    found = []
    for page in PAGES:
        for _, lines in output_blocks(page.read_text()):
            for line in lines:
                if line.startswith("$ "):
                    found.append((page.name, line[2:], []))
                elif found and found[-1][0] == page.name and line.strip() and lines[0].startswith("$ "):
                    found[-1][2].append(line)
    return found


def train_output(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**clean_env(), "PYTHONUNBUFFERED": "1"})
    return proc.returncode, proc.stdout + proc.stderr


def test_every_quoted_output_is_checked() -> None:
    """Each ```text (or bare) block's lines are a quote of QUOTES, a transcript's, or QUOTED_ELSEWHERE's; each quote
    is in its page as written."""
    quoted = {(page, " ".join(q.split())) for page, q, _, _ in QUOTES}
    quoted |= {(page, " ".join(line.split())) for page, command, lines in transcripts() for line in lines}
    loose = []
    for page in PAGES:
        for n, lines in output_blocks(page.read_text()):
            if any(page.name == p and lines[0].strip().startswith(s) for p, s in QUOTED_ELSEWHERE):
                continue  # the whole block
            loose += [f"{page.name}:{n}: {line[:100]}" for line in lines if line.strip()
                      and not line.startswith("$ ") and (page.name, " ".join(line.split())) not in quoted]
    assert loose == [], "output quoted in a page that no test checks: add it to QUOTES"
    missing = [f"{page}: {q[:80]}" for page, q, _, _ in QUOTES if not in_page(page, q)]
    assert missing == [], "QUOTES names text its page no longer has"
    for (page, start), where in QUOTED_ELSEWHERE.items():
        assert start in (REPO / "docs" / page).read_text(), (page, start)
        for path, name in re.findall(r"(tests/\w+\.py)::(\w+)", where):
            assert f"def {name}(" in (REPO / path).read_text(), where
    assert set(RUNS) == {source for _, _, source, _ in QUOTES}


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(RUNS))
def test_quoted_output_is_what_the_run_prints(source: str, tmp_path: Path) -> None:
    _, output = train_output(RUNS[source], tmp_path)
    wrong = [f"{page}: {quote}" for page, quote, src, loose in QUOTES
             if src == source and not printed(quote, loose, output)]
    assert wrong == [], f"not printed by {' '.join(RUNS[source])}:\n{output[-6000:]}"


@pytest.mark.slow
def test_transcripts_print_what_they_show(tmp_path: Path) -> None:
    """The ``$ python scripts/train.py ...`` lines of the pages' ```text blocks, run: each prints the lines shown."""
    found = transcripts()
    assert len(found) >= 3
    for page, command, lines in found:
        code, output = train_output(train_args(command), tmp_path)
        wrong = [line for line in lines if not printed(line, {}, output)]
        assert wrong == [], f"{page}: {command}: does not print {wrong}:\n{output[-3000:]}"
        if lines[0].startswith("error:"):  # bad input: one line, exit 2, no run (faults.md)
            assert code == 2 and len(clean(output)) == 1, output[-3000:]
    assert not (tmp_path / "mlflow.db").exists()


def verify_tables(output: str) -> list[dict[str, dict[str, str]]]:
    """verify's tables: for each, {column: {trainer: cell}}."""
    tables, header = [], None
    for line in output.splitlines():
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
            tables.append({c: {} for c in header})
        elif line.startswith("│") and header and (cells := [c.strip() for c in line.strip("│").split("│")])[0]:
            for column, cell in zip(header, cells, strict=True):
                tables[-1][column][cells[0]] = cell
    return tables


def largest(table: dict[str, dict[str, str]], columns: list[str]) -> float:
    values = [float(v) for c in columns for v in table[c].values() if re.fullmatch(r"\d[\d.e+-]*", v)]
    assert values, columns
    return max(values)


@pytest.mark.slow
def test_verify_stays_within_the_bounds_equivalence_md_states(tmp_path: Path) -> None:
    """The page's commands, run: every gradient and curve difference below the bounds it gives, the dynamic net's
    too with tensorflow's row skipped, and the optimizers' (thread-dependent figures: bounds, not digits)."""
    page = " ".join((REPO / "docs" / "equivalence.md").read_text().split())
    grad, curve = map(float, re.search(r"Measured here, below (\S+) for gradients and (\S+) for curves", page).groups())
    plain, adam, adagrad = map(float, re.search(
        r"measured below (\S+) for sgd, sgd_momentum and rmsprop, (\S+) for adam and (\S+) for adagrad", page).groups())
    assert "python scripts/verify.py --model dynamic --steps 200" in page
    outputs = []
    for args in ([], ["--model", "dynamic", "--steps", "200", "--optimizers", "off"]):  # the optimizers: above
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "verify.py"), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=clean_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs.append(proc.stdout)
    tables = verify_tables(outputs[0])
    assert len(tables) == 3, outputs[0][-3000:]  # with and without biases, then the optimizers
    dynamic = verify_tables(outputs[1])
    assert len(dynamic) == 2, outputs[1][-3000:]  # with and without biases
    assert all(table["verdict"]["tensorflow"].startswith("skipped") for table in dynamic), outputs[1][-3000:]
    for table in [*tables[:2], *dynamic]:
        assert largest(table, [c for c in table if c.startswith("grad ")]) < grad, table
        assert largest(table, [c for c in table if c.startswith("loss curve")]) < curve, table
    optimizers = tables[2]
    assert largest(optimizers, ["sgd", "sgd_momentum", "rmsprop"]) < plain, optimizers
    assert largest(optimizers, ["adam"]) < adam and largest(optimizers, ["adagrad"]) < adagrad, optimizers
