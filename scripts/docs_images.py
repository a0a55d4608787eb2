"""The pictures of the README and docs/, made from real runs (``make docs-images``), and whether they are stale.

    python scripts/docs_images.py           # runs make examples and make examples-sine in a temporary folder,
                                            # then screenshots MLflow's UI on their store (headless Chromium)
    python scripts/docs_images.py --check   # exit 1 when an image's drawing code changed since it was made
    python scripts/docs_images.py --only compare.png   # one picture (and, for compare.png, docs/comparing.md's
                                                       # quoted output)

docs/images/manifest.json holds, for each image, a hash of the code that draws it (the report and figure modules,
the presets that are drawn, MLflow's version for the UI) and of the image itself. File times mean nothing in a
fresh clone, so ``--check`` compares those hashes; a test runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
MANIFEST = IMAGES / "manifest.json"
FIGURES = ["src/backproplab/tracking/report.py", "src/backproplab/tracking/figures.py", "scripts/docs_images.py"]
UI = ["src/backproplab/tracking/ui.py", "src/backproplab/tracking/names.py", "scripts/docs_images.py"]
# image -> (the code that draws it, what it shows)
DRAWN_BY = {
    "nine-examples.png": ([*FIGURES, "conf/experiment/*.yaml"], "make examples: the report's loss curves"),
    "sine-fits.png": ([*FIGURES, "conf/experiment/sine_*.yaml"], "make examples-sine: the fits and the curves"),
    "ui-runs.png": (UI, "mlflow ui: the runs table of make examples"),
    "ui-run.png": (UI, "mlflow ui: the optim run's page, its loss chart"),
    "compare.png": ([*FIGURES, "src/backproplab/stats.py", "src/backproplab/tracking/groups.py"],
                    "make compare: 3 optimizers x 5 seeds, a band per group"),
}
COMPARING = REPO / "docs" / "comparing.md"
BLOCK = re.compile(r"(<!-- compare:begin[^>]*-->\n).*?(<!-- compare:end -->)", re.S)


def code_hash(patterns: list[str]) -> str:
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(REPO.glob(pattern)):
            digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    if "src/backproplab/tracking/ui.py" in patterns:  # the UI's pictures are MLflow's pages too
        digest.update(f"mlflow {version('mlflow')}".encode())
    return digest.hexdigest()[:16]


def image_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stale() -> list[str]:
    """The images whose drawing code changed since they were made (or that are missing)."""
    made = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    out = []
    for name, (patterns, _) in DRAWN_BY.items():
        entry, path = made.get(name, {}), IMAGES / name
        if not path.is_file() or entry.get("code") != code_hash(patterns) or entry.get("image") != image_hash(path):
            out.append(name)
    return out


def make(target: str, cwd: Path) -> Path:
    """Run a Makefile example target's command (as ``make -n`` spells it) in ``cwd``; its sweep's folder."""
    line = subprocess.run(["make", "-s", "-n", target], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    argv[0:2] = [sys.executable, str(REPO / "scripts" / "train.py")]  # .venv/bin/python scripts/train.py
    before = set(cwd.glob("multirun/*/*"))
    subprocess.run(argv, cwd=cwd, check=True)
    (sweep,) = set(cwd.glob("multirun/*/*")) - before
    return sweep


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def ui_pictures(work: Path) -> None:
    """MLflow's UI on the examples' store, in headless Chromium driven by Playwright (the [dev] extra): the runs
    table with the sweep opened and its final losses, and the optim run's page with its loss chart. The assistant
    panel that MLflow 3.17 opens on a fresh browser profile is closed first."""
    import mlflow
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("chromium is not installed (apt-get install chromium): the UI's pictures need it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (work / "ui.log").open("w")
    ui = subprocess.Popen([sys.executable, str(REPO / "scripts" / "ui.py"), "--port", str(port)], cwd=work,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not healthy(port):
            if ui.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"mlflow ui did not start: {(work / 'ui.log').read_text()[-2000:]}")
            time.sleep(0.5)
        runs_table = re.search(r"http://\S+", (work / "ui.log").read_text()).group(0)
        client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
        (optim,) = client.search_runs([client.get_experiment_by_name("backproplab").experiment_id],
                                      "tags.preset = 'optim'")
        run_page = runs_table.replace("runs?", f"runs/{optim.info.run_id}/model-metrics?")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1860, "height": 620})
            page.goto(runs_table)
            page.wait_for_selector("text=matching runs", timeout=120_000)
            page.locator("[aria-label='Close']").first.click()  # the assistant panel
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # open the sweep
            for column in ("trainer.name", "final_loss"):
                page.get_by_role("button", name="Columns", exact=True).click()
                page.keyboard.type(column)
                page.get_by_text(column, exact=True).last.click()
                page.keyboard.press("Escape")
            page.wait_for_timeout(1500)
            page.screenshot(path=IMAGES / "ui-runs.png")
            page.set_viewport_size({"width": 1100, "height": 620})
            page.goto(run_page)
            page.get_by_placeholder("Search metric charts").fill("train")
            page.wait_for_timeout(3000)
            page.screenshot(path=IMAGES / "ui-run.png")
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=30)


def compare(work: Path) -> None:
    """make compare's figure, and its groups and verdicts quoted in docs/comparing.md, as the sweep wrote them."""
    report = make("compare", work) / "report"
    shutil.copy(report / "loss_curves.png", IMAGES / "compare.png")
    md = (report / "report.md").read_text()
    groups = md.split("## Groups", 1)[1].split("## Contrasts", 1)[0]
    table = [line for line in groups.splitlines() if line.startswith("|")]
    verdicts = [line for line in md.splitlines() if line.startswith("- ") and " vs " in line]
    block = "\n".join(["![make compare: a band per optimizer over its 5 seeds](images/compare.png)", "",
                       *table, "", *verdicts, ""])
    COMPARING.write_text(BLOCK.sub(lambda m: m.group(1) + block + m.group(2), COMPARING.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which images are stale")
    parser.add_argument("--only", choices=list(DRAWN_BY), help="make this picture alone")
    args = parser.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory(prefix="backproplab-docs-") as name:
            if args.only != "compare.png":
                sys.exit("--only makes compare.png alone; the others come from one run of make examples")
            compare(Path(name))
        made = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
        patterns, shows = DRAWN_BY[args.only]
        made[args.only] = {"code": code_hash(patterns), "image": image_hash(IMAGES / args.only), "shows": shows}
        MANIFEST.write_text(json.dumps(made, indent=2) + "\n")
        print(f"wrote {args.only} and manifest.json in {IMAGES.relative_to(REPO)}")
        return 0
    if args.check:
        if old := stale():
            print(f"stale images in docs/images: {', '.join(old)}: run make docs-images", file=sys.stderr)
            return 1
        print("docs/images: every image is as its drawing code makes it")
        return 0
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backproplab-docs-") as name:
        work = Path(name)
        shutil.copy(make("examples", work) / "report" / "loss_curves.png", IMAGES / "nine-examples.png")
        ui_pictures(work)
        shutil.copy(make("examples-sine", work) / "report" / "loss_curves.png", IMAGES / "sine-fits.png")
        compare(work)
    manifest = {name: {"code": code_hash(patterns), "image": image_hash(IMAGES / name), "shows": shows}
                for name, (patterns, shows) in DRAWN_BY.items()}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {', '.join(DRAWN_BY)} and manifest.json in {IMAGES.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
