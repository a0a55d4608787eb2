"""The command line: ``python scripts/bench.py [--quick] [--only ...] [--mlflow]``, and the children it starts
(``python -m benchmarks _child <kind> ...``) for what needs a fresh process."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from backproplab import runtime
from benchmarks.backends import BACKENDS, bench_backends
from benchmarks.common import CHILD_MARK, PAIRS, QUICK, Settings, load
from benchmarks.loops import bench_trainers
from benchmarks.mlflow_cost import _child_fixed, bench_mlflow_fixed, bench_mlflow_loop
from benchmarks.processes import _child_imports, bench_imports, bench_jobs, bench_peer, bench_startup, bench_sweep
from benchmarks.report import flat_ratios, log_to_mlflow, markdown, results_page, targets
from benchmarks.scaling import bench_compile, bench_scaling
from benchmarks.server_load import bench_server_load
from benchmarks.threads import bench_threads
from benchmarks.tutorial import ENV, _child_script, missing_line, tutorial_dir

# measured after the other in-process sections: TensorFlow's thread pools must not touch torch's figures
LAST = ("tensorflow",)
SECTIONS = ("trainers", "backends", "mlflow", "startup", "peer", "imports", "sweep", "jobs", "scaling", "threads",
            "server", "compile")


DEFAULT_ONLY = ",".join(s for s in SECTIONS if s != "compile")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"  # what a full run (no --quick, --only, --steps...) writes


def versions() -> dict[str, str]:
    """The versions of the libraries measured, from their metadata."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("backproplab", "torch", "lightning", "hydra-core", "mlflow", "numpy", "tensorflow-cpu", "jax"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py", description="Hold every trainer, MLflow and start-up against the tutorial's own code.")
    p.add_argument("--quick", action="store_true",
                   help="CI settings: tiny steps and sizes, no nine-experiment sweep, 2- and 4-seed job sweeps")
    p.add_argument("--out", type=Path, default=Path("bench-results/bench.json"), help="the JSON (and .md beside it)")
    p.add_argument("--only", default=DEFAULT_ONLY,
                   help=f"comma-separated sections to run (of {', '.join(SECTIONS)})")
    p.add_argument("--steps", type=int, help="training steps of the loop comparisons (default 500)")
    p.add_argument("--repeats", type=int, help="measured rounds per comparison (default 5)")
    p.add_argument("--sizes", help="scaling sizes, comma-separated (default 256,1024,4096)")
    p.add_argument("--no-sweep", action="store_true", help="skip the nine-experiment sweep")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile at the largest size (slow)")
    p.add_argument("--threads", type=int,
                   help="set OMP/OpenBLAS/MKL threads (numpy, torch; also in the processes it starts): on a "
                        "loaded machine multi-threaded BLAS on the tutorial's tiny matrices stalls on every call")
    p.add_argument("--tutorial-dir", type=Path,
                   help="the tutorial's own scripts (numpy_manual.py, ...), to hold each trainer's loop against "
                        f"its script's (default: ${ENV}, else ../shared/seed beside the repository; "
                        "without them those targets are skipped)")
    p.add_argument("--mlflow", action="store_true", help="log the benchmark as a run of experiment `benchmarks`")
    p.add_argument("--tracking-uri", help="the store for --mlflow (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else Settings()
    if args.steps:
        s = replace(s, steps=args.steps)
    if args.repeats:
        s = replace(s, repeats=args.repeats, mlflow_repeats=args.repeats, process_repeats=args.repeats)
    if args.sizes:
        s = replace(s, sizes=tuple(int(v) for v in args.sizes.split(",")))
    if args.no_sweep:
        s = replace(s, sweep=())
    if args.compile:
        s = replace(s, compile=True)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    if args.threads:  # before numpy or torch is imported; the processes started below inherit it
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    s = settings_from(args)
    sections = set(args.only.split(",")) | ({"compile"} if s.compile else set())
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "mode": "quick" if args.quick else "default",
        "settings": asdict(s),
        "sections": sorted(sections),
        "threads": args.threads or "library defaults",
        "git_commit": runtime.git_commit(),
        "load_start": load(),
        "command": " ".join(["python scripts/bench.py", *argv]),
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
    }
    results: dict[str, Any] = {"meta": meta}
    errors: dict[str, str] = {}

    meta["load_samples"] = [meta["load_start"]]

    meta["section_s"] = {}  # wall time of each section: where the benchmark's own minutes go

    def section(key: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            results[key] = fn()
        except Exception as e:  # one failed measurement must not lose the others
            errors[key] = f"{type(e).__name__}: {e}".strip()[:2000]
            print(f"[bench] {key} failed: {errors[key]}", file=sys.stderr, flush=True)
        meta["section_s"][key] = round(time.perf_counter() - t0, 2)
        meta["load_samples"].append(load())

    from backproplab.trainers import registry

    paired = [t for t in PAIRS if t in registry.trainers()]  # in the tutorial's order
    scripts = tutorial_dir(args.tutorial_dir) if "trainers" in sections else None
    meta["tutorial_dir"] = str(scripts) if scripts else None
    if "trainers" in sections and scripts is None:
        results["tutorial_scripts"] = {"skipped": missing_line(args.tutorial_dir)}
        print(f"[bench] skipped: {results['tutorial_scripts']['skipped']}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="backproplab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # in-process first; TensorFlow last of them, so that its thread pools cannot touch torch's figures
        if "trainers" in sections:
            section("trainers", lambda: bench_trainers(s, [t for t in paired if t not in LAST], scripts, tmp))
        if "mlflow" in sections:
            section("mlflow_loop", lambda: bench_mlflow_loop(s, s.mlflow_trainers, tmp))
        if "scaling" in sections:
            section("scaling", lambda: bench_scaling(s))
            import torch

            if torch.cuda.is_available():
                section("scaling_cuda", lambda: bench_scaling(s, device="cuda"))
            else:
                results["scaling_cuda"] = {"skipped": "no CUDA device"}
        if "threads" in sections:
            section("threads", lambda: bench_threads(s))
        if "compile" in sections:
            section("compile", lambda: bench_compile(s))
        if "trainers" in sections:
            section("trainers_tf", lambda: bench_trainers(s, [t for t in paired if t in LAST], scripts, tmp))
            results.setdefault("trainers", {}).update(results.pop("trainers_tf", {}))
        if "backends" in sections:  # TensorFlow and JAX: after torch's figures, like the TF1 trainer
            section("backends", lambda: bench_backends(s))
        # fresh processes
        if "mlflow" in sections:
            section("mlflow_fixed", lambda: bench_mlflow_fixed(s, tmp))
        if "startup" in sections:
            section("startup", lambda: bench_startup(s, tmp))
        if "peer" in sections:
            section("peer", lambda: bench_peer(s, tmp))
        if "imports" in sections:
            section("imports", lambda: bench_imports(s, tmp))
        if "sweep" in sections:
            section("sweep", lambda: bench_sweep(s, tmp))
        if "jobs" in sections:
            section("jobs", lambda: bench_jobs(s, tmp, quick=args.quick))
        if "server" in sections:
            section("server", lambda: bench_server_load(s, tmp))

    if "trainers" in results:  # in the tutorial's order
        results["trainers"] = {k: results["trainers"][k] for k in paired if k in results["trainers"]}
    # a trainer the registry has but the benchmark holds to nothing is named, not silently left out
    results["trainers_without_reference"] = [t for t in registry.trainers() if t not in PAIRS and t not in BACKENDS]
    meta["load_end"] = load()
    meta["duration_s"] = time.perf_counter() - start
    if "torch" in sys.modules:
        meta["torch"] = sys.modules["torch"].__version__
        meta["torch_threads"] = sys.modules["torch"].get_num_threads()
    results["targets"] = targets(results)
    results["ratios"] = flat_ratios(results)
    results["errors"] = errors
    md = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    md_path = args.out.with_suffix(".md")
    md_path.write_text(md)
    print(md)
    print(f"[bench] wrote {args.out} and {md_path}", file=sys.stderr)
    if not args.quick and args.only == DEFAULT_ONLY and not any([args.steps, args.repeats, args.sizes]):
        RESULTS.write_text(results_page(results))  # a full run: the committed results
        print(f"[bench] wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}",
              file=sys.stderr)
    if args.mlflow:
        rid = log_to_mlflow(results, args.out, md_path, args.tracking_uri)
        print(f"[bench] logged as MLflow run {rid} in experiment benchmarks", file=sys.stderr)
    return 1 if errors else 0


def child_main(argv: Sequence[str]) -> int:
    """`python -m benchmarks _child <kind> ...`: a measurement that needs a fresh process."""
    kind, *rest = argv
    children = {"fixed": _child_fixed, "imports": _child_imports, "script": _child_script}
    answer = children[kind](*rest)
    print(CHILD_MARK + json.dumps(answer), flush=True)
    return 0
