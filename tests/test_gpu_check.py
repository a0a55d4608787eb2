"""scripts/gpu_check.py: its no-CUDA path (one line, exit 0) and its pure-Python parts.

The full check needs a CUDA device (`make gpu-check`); here only what runs without one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(cuda_available(), reason="a CUDA device exists: the script would run the whole check")
def test_without_cuda_it_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import torch

    assert proc.stdout.splitlines() == [
        f"gpu-check: no CUDA device available (torch {torch.__version__}); nothing to check"
    ]
    assert not out.exists()


def test_without_torch_it_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    # -I -S: no PYTHONPATH and no site-packages, so no torch: the script needs only the standard library
    proc = subprocess.run([sys.executable, "-I", "-S", str(SCRIPT)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["gpu-check: no CUDA device available (torch not installed); nothing to check"]


def test_format_table() -> None:
    rows = [gpu_check.Row("device", "ok", 0.04, "H100, 79.1 GiB"),
            gpu_check.Row("trainer=numpy", "skipped", 0.0, "CPU-only trainer"),
            gpu_check.Row("pytest -m gpu", "FAILED", 12.345, "a | b\nc")]
    assert gpu_check.format_table(rows).splitlines() == [
        "| check | status | s | detail |",
        "|---|---|---:|---|",
        "| device | ok | 0.0 | H100, 79.1 GiB |",
        "| trainer=numpy | skipped | 0.0 | CPU-only trainer |",
        "| pytest -m gpu | FAILED | 12.3 | a \\| b c |",
    ]


def test_summarize_run_reads_the_last_loss_line() -> None:
    # run.py's lines: "<run name>: ..." (the run's MLflow name, a preset's or trainer-model-optim), then for a
    # tracked run "FINISHED run <run name>: <url>"
    log = ("[2026-11-27 23:39:42,488][backproplab][INFO] - lightning-sequential-sgd: 500 steps, "
           "loss 662.8 -> 1.088e-06 in 1.23s (loop 0.456s, 2 CPU threads)\n")
    assert gpu_check.summarize_run(log) == ("ok", "loss 662.8 -> 1.088e-06, loop 0.456 s (500 steps)")
    tracked = ("[2026-12-06 16:05:48,267][backproplab][INFO] - numpy: 500 steps, loss 3.688e+07 -> 2.1e-07 in "
               "0.97s (loop 0.281s, 1 CPU thread), mlflow run aee0cd1664c64595b680744f2c45011d\n"
               "[2026-12-06 16:05:48,274][backproplab][INFO] - FINISHED run numpy: http://127.0.0.1:5000/#/"
               "experiments/1/runs/aee0cd1664c64595b680744f2c45011d?workflowType=machine_learning\n")
    assert gpu_check.summarize_run(tracked) == ("ok", "loss 3.688e+07 -> 2.1e-07, loop 0.281 s (500 steps)")
    swept = "optim lr=0.001 hidden=200: 20 steps, loss 700 -> 650 in 0.50s (loop 0.100s, 2 CPU threads)\n"
    assert gpu_check.summarize_run(swept) == ("ok", "loss 700 -> 650, loop 0.100 s (20 steps)")
    status, detail = gpu_check.summarize_run(log.replace("1.088e-06", "700"))
    assert status == "FAILED" and detail.startswith("the loss did not go down")
    assert gpu_check.summarize_run("Traceback ...\nRuntimeError: boom\n") == (
        "FAILED", "no loss line in the output: RuntimeError: boom")


def test_step_flops_counts_five_gemms() -> None:
    # forward 2 GEMMs, backward 3 (dL/dh, dL/dW2, dL/dW1; no dL/dx), each 2*n^3 at equal sizes
    assert gpu_check.step_flops(8192, 8192, 8192, 8192) == 5 * 2 * 8192**3
    # the tutorial's shape, GEMM by GEMM (m, k, p): x@W1, h@W2, dy@W2^T, h^T@dy, x^T@dh
    gemms = [(64, 1000, 100), (64, 100, 10), (64, 10, 100), (100, 64, 10), (1000, 64, 100)]
    assert gpu_check.step_flops(64, 1000, 100, 10) == sum(2 * m * k * p for m, k, p in gemms)


def test_pytest_counts() -> None:
    out = "..s\nshort test summary info\nSKIPPED [1] x\n2 passed, 1 skipped, 1 error, 180 deselected in 9.10s\n"
    assert gpu_check.pytest_counts(out) == {"passed": 2, "skipped": 1, "errors": 1, "deselected": 180}
    assert gpu_check.pytest_counts("no tests ran in 0.01s") == {}


def test_junit_failures_split_missing_modules_from_real_ones(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_needs_it"><failure message="AssertionError: exit 1">'
        "ModuleNotFoundError: No module named 'surely_not_installed_xyz'</failure></testcase>"
        '<testcase classname="" name="tests.test_b"><error message="collection failure">'
        "E   ModuleNotFoundError: No module named 'surely_not_installed_xyz.sub'</error></testcase>"
        '<testcase classname="tests.test_a" name="test_real"><failure message="assert 1 == 2">'
        "No module named 'json' is a red herring: json is installed</failure></testcase>"
        "</testsuite></testsuites>"
    )
    missing, real = gpu_check.junit_failures(junit)
    assert missing == ["surely_not_installed_xyz", "surely_not_installed_xyz"]
    assert real == ["tests.test_a::test_real"]
    assert gpu_check.junit_failures(tmp_path / "absent.xml") == ([], [])


def test_run_process_kills_the_whole_group_on_timeout(tmp_path: Path) -> None:
    # a child that starts a grandchild holding the pipes: only killing the group lets this return quickly
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); print('started', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    rc, out, _ = gpu_check.run_process([sys.executable, "-c", code], tmp_path, timeout=2)
    assert rc is None and out.strip() == "started"
    assert time.monotonic() - t0 < 20
