"""The benchmark's report: every target with the measured figure beside it, the Markdown, the MLflow run."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import TARGETS, TORCH_TRAINERS, Settings


def fmt(x: Any, digits: int = 2, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with the measured figure beside it, and the measured rounds it is the median of."""
    rows: list[dict[str, Any]] = []
    st_ = results.get("meta", {}).get("settings", {})

    def add(name: str, measured: float | None, limit: float, unit: str, rounds: Any, at_most: bool = True) -> None:
        ok = None
        if measured is not None and math.isfinite(measured):
            ok = measured <= limit if at_most else measured >= limit
        rows.append({"target": name, "measured": measured, "limit": limit, "unit": unit,
                     "at_most": at_most, "met": ok, "rounds": rounds})

    loops, processes = st_.get("repeats"), st_.get("process_repeats")
    for name, r in results.get("trainers", {}).items():
        if sc := r.get("script"):  # issue 35: the tutorial's own script, first step to last
            add(f"{name} loop vs the tutorial's {sc['script']} loop (first step to last)", sc["ratio"], sc["target"],
                "x", sc["rounds"])
    for name, r in results.get("trainers", {}).items():
        what = "the reference optim loop" if name == "lightning" else "its reference loop"
        add(f"{name} loop vs {what} ({r['tutorial']}.py)", r["ratio"], r["target"], "x", loops)
    for name, r in results.get("backends", {}).items():
        if "ratio" in r:
            add(f"{name} loop vs the {r['against']} trainer's loop", r["ratio"], r["target"], "x", loops)
    for name, r in results.get("mlflow_loop", {}).items():
        add(f"{name} loop with logger=mlflow vs logger=none", r["ratio"], r["target"], "x", st_.get("mlflow_repeats"))
    fixed = results.get("mlflow_fixed", {})
    for experiment, r in fixed.get("later", {}).items():
        add(f"MLflow fixed cost, each later run ({experiment}: {r['trainer']})", r["fixed_s"],
            TARGETS["mlflow_fixed_later_s"], "s", st_.get("mlflow_repeats"))
    for experiment, r in fixed.get("later", {}).items():
        if "log_weights" in r.get("breakdown", {}):
            add(f"logging the weights and the model, each later run ({experiment}: {r['trainer']})",
                r["breakdown"]["log_weights"], TARGETS["model_later_s"], "s", st_.get("mlflow_repeats"))
    st = results.get("startup", {})
    if "model_process_s" in st:
        add("tracked trainer=numpy process: logging the model vs logger.log_model=false", st["model_process_s"],
            st["target_model_s"], "s", processes)
    if "ratio" in st:
        add("numpy process vs the reference numpy script", st["ratio"], st["target"], "x", processes)
    if "ratio_tracked" in st:
        add(f"tracked experiment=optim process vs the reference optim script (peak "
            f"{st['peak_mib']['ours_tracked']:.0f} vs {st['peak_mib']['tutorial_optim']:.0f} MiB)",
            st["ratio_tracked"], st["target_tracked"], "x", processes)
    peer = results.get("peer", {})
    if "ratio" in peer:
        add("tracked experiment=optim process vs the lightning-hydra-template peer (benchmarks/peer)", peer["ratio"],
            peer["target"], "x", peer["rounds"])
        add(f"its peak memory vs the peer's ({peer['ours_peak_mib']:.0f} vs {peer['peer_peak_mib']:.0f} MiB)",
            peer["ratio_peak"], peer["target_peak"], "x", peer["rounds"])
        add("its loop vs the peer's fit", peer["ratio_loop"], peer["target_loop"], "x", peer["rounds"])
    imp = results.get("imports", {})
    if "numpy_forbidden" in imp:
        rows.append({"target": "numpy process imports no torch / TensorFlow / Lightning",
                     "measured": ", ".join(imp["numpy_forbidden"]) or "none", "limit": "none", "unit": "",
                     "at_most": True, "met": not imp["numpy_forbidden"], "rounds": 1})
    sw = results.get("sweep", {})
    if "ratio" in sw:
        add(f"{len(sw['experiments'])}-experiment sweep vs the reference scripts as processes", sw["ratio"],
            sw["target"], "x", st_.get("sweep_repeats"))
    jb = results.get("jobs", {})
    if "ratio" in jb:
        small, big = jb["sizes"]
        add(f"a sweep job's marginal cost vs its loop (joblib, {jb['workers']} workers, {small} vs {big} seeds: "
            f"{fmt(jb['marginal_s'])} s vs {fmt(jb['loop_s'], 3)} s)", jb["ratio"], jb["target"], "x", jb["rounds"])
        if not jb["marginal_s"] > 0:  # the big sweeps no slower than the small: noise, not a figure to call met
            rows[-1]["met"] = None
    sc = results.get("scaling", {})
    for r in sc.get("rows", []):
        if r["size"] == sc["largest"] and r["impl"] in TORCH_TRAINERS:
            add(f"{r['impl']} at N=D_in=H={r['size']}: % of bare torch.mm", r["pct_of_mm"], sc["target_pct"], "%",
                1, at_most=False)
    th = results.get("threads", {})
    if q := th.get("quiet"):
        add(f"default run's loop, quiet: trainer.threads=auto ({q['auto']['threads'][0]}) vs the best fixed count "
            f"({q['best']})", q["ratio"], q["target"], "x", loops)
    if ul := th.get("under_load"):
        add(f"default run's loop with {ul['busy_processes']} busy processes vs quiet (auto: "
            f"{ul['loaded']['threads'][0]} thread(s))", ul["ratio"], ul["target"], "x", loops)
    return rows


def results_page(results: dict[str, Any]) -> str:
    """benchmarks/RESULTS.md, written by a full ``make bench``: where and when it ran, with which libraries, every
    target with its rounds and verdict, then the whole report."""
    m = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    lines = [
        "# Benchmark results",
        "",
        "<!-- written by a full `make bench` (python scripts/bench.py): do not edit; the method is in "
        "docs/performance.md -->",
        "",
        f"- machine: {m['machine']}",
        f"- date: {m.get('date', '?')}; commit: {m.get('git_commit') or '?'}; command: `{m['command']}`",
        f"- libraries: {versions}",
        "",
        "| target | measured | target | rounds | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for t in results["targets"]:
        measured, limit = target_cells(t)
        lines.append(f"| {t['target']} | {measured} | {limit} | {t.get('rounds') or '–'} | {verdict(t['met'])} |")
    body = markdown(results).split("\n", 1)[1]  # the report without its title
    return "\n".join(lines) + "\n\n## The whole report\n" + body.replace("\n## ", "\n### ")


def target_cells(t: dict[str, Any]) -> tuple[str, str]:
    """A target row's measured figure and limit, formatted."""
    if isinstance(t["measured"], str):
        return t["measured"], t["limit"]
    digits = 0 if t["unit"] == "%" else 2
    unit = t["unit"] if t["unit"] != "x" else "×"
    return fmt(t["measured"], digits, unit), ("≤ " if t["at_most"] else "≥ ") + f"{t['limit']:g}" + unit


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [
        "# backproplab benchmark",
        "",
        f"{m['machine']}, threads: {m['threads']}; load average {m['load_start']} at the start, "
        f"{m['load_end']} at the end, {max(m['load_samples'])} at most between sections; "
        f"{m['mode']} settings; {m['duration_s']:.0f} s. Medians of {m['settings']['repeats']} rounds after "
        f"{m['settings']['warmup']} warm-up, the compared sides alternating.",
    ]
    if max(m["load_samples"]) > (os.cpu_count() or 1) and m["threads"] == "library defaults":
        lines += ["", "**The machine was loaded** (load average above its CPU count at times: "
                  f"{', '.join(map(str, m['load_samples']))}): multi-threaded BLAS/OpenMP on the tutorial's tiny "
                  "matrices then stalls on descheduled threads, which swamps the overheads measured here; "
                  "`--threads 1` gives steadier ratios."]
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | target | verdict |",
        "|---|---:|---:|---|",
    ]
    for t in results["targets"]:
        measured, limit = target_cells(t)
        lines.append(f"| {t['target']} | {measured} | {limit} | {verdict(t['met'])} |")

    if tr := results.get("trainers"):
        lines += ["", f"## Trainers against the reference loops ({m['settings']['steps']} steps, logger=none)", "",
                  "| trainer | reference loop | trainer loop s | reference loop s | ratio | whole train() call s | "
                  "final loss trainer / reference |", "|---|---|---:|---:|---:|---:|---|"]
        for name, r in tr.items():
            lines.append(
                f"| {name} | {r['tutorial']}.py | {fmt(r['loop_s']['trainer'], 3)} | {fmt(r['loop_s']['tutorial'], 3)}"
                f" | {fmt(r['ratio'])}× | {fmt(r['trainer_call_s'], 3)} | "
                f"{r['final_loss']['trainer']:.4g} / {r['final_loss']['tutorial']:.4g} |")
            if "progress_bar_ratio" in r:
                lines.append(f"| {name} + progress bar | {r['tutorial']}.py | "
                             f"{fmt(r['loop_s']['trainer_progress_bar'], 3)} | {fmt(r['loop_s']['tutorial'], 3)} | "
                             f"{fmt(r['progress_bar_ratio'])}× | – | – |")

    tr = results.get("trainers") or {}
    if any("script" in r for r in tr.values()):
        lines += ["", "## Trainers against the tutorial's own scripts (first step to last, logger=none)", "",
                  f"The scripts run unchanged from {m.get('tutorial_dir')}, their `print` to a buffer; the time from "
                  "the first step's report to the last step's (a script's print, a trainer's on_step), imports "
                  "and set-up left out.", "",
                  "| trainer | script | steps | trainer loop s | script loop s | ratio | target | rounds |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in tr.items():
            if sc := r.get("script"):
                lines.append(f"| {name} | {sc['script']} | {sc['steps']} | {fmt(sc['loop_s']['trainer'], 3)} | "
                             f"{fmt(sc['loop_s']['script'], 3)} | {fmt(sc['ratio'])}× | ≤ {sc['target']:g}× | "
                             f"{sc['rounds']} |")
    if skipped := results.get("tutorial_scripts", {}).get("skipped"):
        lines += ["", f"Skipped: {skipped}."]

    if bk := results.get("backends"):
        lines += ["", "## TensorFlow 2 and JAX against the trainers they are held to (the tensor preset)", "",
                  "| trainer | against | loop s | its loop s | ratio | compile s | bare matmuls JAX / torch |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, r in bk.items():
            if "ratio" not in r:
                lines.append(f"| {name} | – | – | – | – | – | {r.get('skipped', '')} |")
                continue
            lines.append(
                f"| {name} | {r['against']} | {fmt(r['loop_s'][name], 3)} | {fmt(r['loop_s'][r['against']], 3)} | "
                f"{fmt(r['ratio'])}× | {fmt(r['compile_s'])} | "
                f"{fmt(r['matmul_ratio']) + '×' if 'matmul_ratio' in r else '–'} |")

    if ml := results.get("mlflow_loop"):
        lines += ["", "## MLflow: the loop with every step logged", "",
                  "| trainer (experiment) | loop logger=none s | loop logger=mlflow s | ratio | per step ms | "
                  "flush_every |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in ml.items():
            lines.append(f"| {name} ({r['experiment']}) | {fmt(r['loop_none_s'], 3)} | {fmt(r['loop_mlflow_s'], 3)} | "
                         f"{fmt(r['ratio'])}× | {fmt(r['per_step_overhead_ms'], 3)} | {r['flush_every']} |")
    if fx := results.get("mlflow_fixed"):
        keys = sorted({k for r in fx["runs"] for k in r["breakdown"]})
        lines += ["", "## MLflow: fixed cost per run (one process, runs one after another as in a sweep)", "",
                  f"`import mlflow`: {fmt(fx['import_mlflow_s'])} s (counted in the first run). "
                  "Breakdown columns are the seconds inside each call (flush includes the in-loop flushes).", "",
                  "| run | fixed s | enter s | finish s | exit s | " + " | ".join(keys) + " |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(keys)]

        def fixed_row(label: str, r: dict[str, Any], fixed_s: float) -> str:
            p, b = r["phases"], r["breakdown"]
            return (f"| {label} | {fmt(fixed_s)} | {fmt(p['enter_s'])} | {fmt(p['finish_s'])} | {fmt(p['exit_s'])} | "
                    + " | ".join(fmt(b.get(k), 3) for k in keys) + " |")

        lines.append(fixed_row(f"first ({fx['first']['experiment']})", fx["first"], fx["first"]["fixed_s"]))
        for experiment, r in fx["later"].items():
            lines.append(fixed_row(f"later {experiment} (median of {r['runs']})", r, r["fixed_s"]))

    if st := results.get("startup"):
        lines += ["", "## Start-up (whole process)", ""]
        if "skipped" in st:
            lines.append(f"skipped: {st['skipped']}")
        else:
            peak = st.get("peak_mib", {})
            rows = [("command", "ours"), ("command_experiment", "ours_experiment"), ("tutorial", "tutorial"),
                    ("command_tracked", "ours_tracked"), ("command_untracked", "ours_untracked"),
                    ("tutorial_optim", "tutorial_optim")]
            lines += ["| process | median s | peak MiB |", "|---|---:|---:|"]
            lines += [f"| `{st[label]}` | {fmt(st[f'{key}_s'])} | {fmt(peak.get(key), 0)} |"
                      for label, key in rows if label in st]
            lines.append(f"| numpy ratio (like for like in brackets) | {fmt(st['ratio'])}× "
                         f"({fmt(st['ratio_experiment'])}×) | |")
            if "ratio_tracked" in st:
                lines.append(f"| tracked optim ratio | {fmt(st['ratio_tracked'])}× | |")
            if "ratio_untracked" in st:
                lines.append(f"| … the same run with `logger=none` | {fmt(st['ratio_untracked'])}× | |")
    if imp := results.get("imports"):
        lines += ["", "## Heavy modules each trainer's process imports (compose + run.train, logger=none)", "",
                  "| trainer | heavy modules | process s |", "|---|---|---:|"]
        for name, r in imp.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {', '.join(r['heavy']) or 'none'} | {fmt(r['process_s'])} |")
    if sw := results.get("sweep"):
        lines += ["", "## The sweep in one command against the reference scripts", ""]
        if "skipped" in sw:
            lines.append(f"skipped: {sw['skipped']}")
        else:
            lines += ["| | s | vs the scripts |", "|---|---:|---:|",
                      f"| `{sw['command']}` | {fmt(sw['sweep_s'], 1)} | {fmt(sw['ratio'])}× |",
                      f"| `{sw['command_joblib']}` (one worker per CPU) | {fmt(sw['sweep_joblib_s'], 1)} | "
                      f"{fmt(sw['ratio_joblib'])}× |",
                      f"| the {len(sw['experiments'])} reference scripts, one process each | "
                      f"{fmt(sw['tutorial_s'], 1)} | |"]
    if jb := results.get("jobs"):
        lines += ["", "## A sweep job's marginal cost beyond its loop", ""]
        if "skipped" in jb:
            lines.append(f"skipped: {jb['skipped']}")
        else:
            small, big = jb["sizes"]
            lines += [f"`{jb['command']}` from a fresh launch dir each (its own mlflow.db and multirun/), N = {small} "
                      f"and {big} alternating, {jb['rounds']} pair(s); marginal = {jb['formula']}, the median over "
                      f"pairs, against the median `time/loop_s` of the {big}-seed sweeps' runs.", "",
                      f"| wall {small} seeds s | wall {big} seeds s | marginal s/job | median loop s | ratio | target "
                      "| verdict |", "|---:|---:|---:|---:|---:|---:|---|",
                      f"| {fmt(jb['small_s'], 1)} | {fmt(jb['big_s'], 1)} | {fmt(jb['marginal_s'])} | "
                      f"{fmt(jb['loop_s'], 3)} | {fmt(jb['ratio'])}× | ≤ {jb['target']:g}× | "
                      f"{verdict(jb['ratio'] <= jb['target'] if jb['marginal_s'] > 0 else None)} |"]
            if not jb["marginal_s"] > 0:
                lines += ["", f"The {big}-seed sweeps took no longer than the {small}-seed ones: the machine's noise "
                          "swamped the difference (no verdict); more pairs (--repeats) or a "
                          "quieter machine give a figure."]
    if sc := results.get("scaling"):
        lines += ["", f"## Scaling on {sc['device']}: N = D_in = H, D_out = {sc['d_out']}, {sc['dtype']}", "",
                  f"FLOPs per step = {sc['flops_formula']}. Steady-state step time (median of the intervals between "
                  "steps); % is of the bare torch.mm chain's rate measured in the same run.", "",
                  "| size | " + " | ".join(dict.fromkeys(r["impl"] for r in sc["rows"])) + " |",
                  "|---:|" + "---|" * len(dict.fromkeys(r["impl"] for r in sc["rows"]))]
        for size in dict.fromkeys(r["size"] for r in sc["rows"]):
            cells = [f"{fmt(r['step_ms'], 2)} ms, {fmt(r['gflops'], 1)} GF/s ({fmt(r['pct_of_mm'], 0)}%)"
                     for r in sc["rows"] if r["size"] == size]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    if th := results.get("threads"):
        counts = range(1, th["cpus"] + 1)
        lines += ["", "## Threads: a training step's 5 GEMMs on 1..CPUs torch threads (quiet)", "",
                  "| N, D_in, H, D_out | MFLOP/step | " + " | ".join(f"{c} thread(s)" for c in counts)
                  + " | best | auto |", "|---|---:|" + "---:|" * th["cpus"] + "---:|---:|"]
        for r in th["crossover"]:
            cells = [f"{fmt(r['step_ms'][c], 3)} ms" for c in counts]
            lines.append(f"| {', '.join(map(str, r['shape']))} | {fmt(r['mflop'], 1)} | " + " | ".join(cells)
                         + f" | {r['best']} | {r['auto']} ({fmt(r['auto_vs_best'])}×) |")
        if ul := th.get("under_load"):
            lines += ["", f"The default run's loop: {fmt(ul['quiet']['loop_s'], 3)} s quiet on auto's "
                      f"{ul['quiet']['threads'][0]} thread(s); with {ul['busy_processes']} busy processes beside it "
                      f"{fmt(ul['loaded']['loop_s'], 3)} s on auto's {ul['loaded']['threads'][0]} "
                      f"({fmt(ul['ratio'])}×), {fmt(ul['loaded_all_threads_loop_s'], 3)} s on {th['cpus']} threads, "
                      f"torch's default ({fmt(ul['ratio_all_threads'])}×)."]
    if sv := results.get("server"):
        lines += ["", "## A team server under load (mlflow server, 2 workers, PostgreSQL)", ""]
        if "skipped" in sv:
            lines.append(f"skipped: {sv['skipped']}")
        else:
            lines += [f"{sv['runs']} runs at once, `trainer=numpy`, {sv['steps_per_run']} steps each, every step "
                      f"recorded (a batch every {sv['flush_every']} steps): the runs wrote for "
                      f"{fmt(sv['window_s'], 1)} s (first start to last end; {fmt(sv['wall_s'], 1)} s with the "
                      "processes' start-up), "
                      f"**{fmt(sv['steps_per_s'], 0)} steps recorded per second**; {sv['runs_complete']} of "
                      f"{sv['runs']} runs FINISHED with every step exactly once ({sv['lost']} lost)."]
    if cu := results.get("scaling_cuda"):
        lines += ["", f"CUDA: {cu.get('skipped') or 'see JSON'}"]
    if co := results.get("compile"):
        lines += ["", "## torch.compile of the Lightning model", ""]
        if "error" in co:
            lines.append(f"failed: {co['error']}")
        else:
            lines.append(f"N = D_in = H = {co['size']}: eager {fmt(co['eager_step_ms'], 1)} ms/step, compiled "
                         f"{fmt(co['compiled_step_ms'], 1)} ms/step (speedup {fmt(co['speedup'])}×; the first "
                         f"compiled step took {fmt(co['first_compiled_step_s'], 1)} s)")
    if errors := results.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    lines += ["", f"Reproduce: `{m['command']}`", ""]
    return "\n".join(lines)


def flat_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The headline figures as MLflow metric names -> values (ratios, seconds, % of the mm chain)."""
    out: dict[str, float] = {}
    for name, r in results.get("trainers", {}).items():
        out[f"ratio/trainer/{name}"] = r["ratio"]
        if "script" in r:
            out[f"ratio/script/{name}"] = r["script"]["ratio"]
    for name, r in results.get("backends", {}).items():
        if "ratio" in r:
            out[f"ratio/backend/{name}"] = r["ratio"]
    for name, r in results.get("mlflow_loop", {}).items():
        out[f"ratio/mlflow_loop/{name}"] = r["ratio"]
    fx = results.get("mlflow_fixed", {})
    if "first" in fx:
        out["seconds/mlflow_fixed/first"] = fx["first"]["fixed_s"]
    for experiment, r in fx.get("later", {}).items():
        out[f"seconds/mlflow_fixed/later/{experiment}"] = r["fixed_s"]
    if "ratio" in results.get("startup", {}):
        out["ratio/startup/numpy"] = results["startup"]["ratio"]
    if "ratio" in results.get("peer", {}):
        out["ratio/peer/process"] = results["peer"]["ratio"]
        out["ratio/peer/peak"] = results["peer"]["ratio_peak"]
    if "ratio_tracked" in results.get("startup", {}):
        out["ratio/startup/tracked_optim"] = results["startup"]["ratio_tracked"]
    if "ratio_untracked" in results.get("startup", {}):
        out["ratio/startup/untracked_optim"] = results["startup"]["ratio_untracked"]
    if "ratio" in results.get("sweep", {}):
        out["ratio/sweep"] = results["sweep"]["ratio"]
    if "ratio" in results.get("jobs", {}):
        out["ratio/jobs"] = results["jobs"]["ratio"]
        out["seconds/jobs/marginal"] = results["jobs"]["marginal_s"]
    sc = results.get("scaling", {})
    for r in sc.get("rows", []):
        if r["impl"] in TORCH_TRAINERS:
            out[f"pct_of_mm/{r['size']}/{r['impl']}"] = r["pct_of_mm"]
    th = results.get("threads", {})
    if "quiet" in th:
        out["ratio/threads/auto_vs_best"] = th["quiet"]["ratio"]
    if "under_load" in th:
        out["ratio/threads/under_load"] = th["under_load"]["ratio"]
    return out


def log_to_mlflow(results: dict[str, Any], json_path: Path, md_path: Path, tracking_uri: str | None) -> str:
    """The benchmark as one run of experiment `benchmarks`: the headline figures as metrics, JSON and Markdown
    as artifacts. The store is the pipeline's (<cwd>/mlflow.db unless --tracking-uri or MLFLOW_TRACKING_URI says)."""
    from omegaconf import OmegaConf

    from backproplab.tracking.store import open_store

    client, exp_id = open_store(OmegaConf.create({"tracking_uri": tracking_uri, "experiment_name": "benchmarks"}))
    run = client.create_run(exp_id, run_name=f"bench {results['meta']['mode']}",
                            tags={"mlflow.source.git.commit": results["meta"].get("git_commit") or ""})
    rid = run.info.run_id
    for k, v in asdict(Settings(**results["meta"]["settings"])).items():
        client.log_param(rid, k, str(v))
    for k, v in flat_ratios(results).items():
        if math.isfinite(v):
            client.log_metric(rid, k, v)
    client.log_artifact(rid, str(json_path))
    client.log_artifact(rid, str(md_path))
    client.set_terminated(rid, "FINISHED")
    return rid
