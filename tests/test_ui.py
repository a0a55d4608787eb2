"""`make ui` (scripts/ui.py): stopped by Ctrl-C or SIGTERM at any moment, it leaves none of the processes MLflow's
UI started behind (issue 36, item 9), and MLflow's deprecation noise does not reach the terminal.

These run MLflow's UI as `make ui` does, its job runner and huey consumers included (the processes that used to
stay behind), on a private store in a tmp dir: ~25 s of CPU for each start on 2 cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, clean_env, free_port, untraced

pytestmark = pytest.mark.slow
UI = REPO / "scripts" / "ui.py"
START_S = 90  # MLflow's UI answers in ~20 s on a busy 2-core machine


def processes() -> dict[int, tuple[str, int, int, int]]:
    """Every live process: pid -> (state, parent, process group, session), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return found


def family(root: int) -> set[int]:
    """``root``'s descendants now, and the sessions and process groups they lead: what came from it."""
    procs = processes()
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, (_, parent, _, _) in procs.items() if parent in frontier} - found
        found |= frontier
    return found | {procs[p][2] for p in found if p in procs} | {procs[p][3] for p in found if p in procs}


def left_of(ids: set[int]) -> dict[int, str]:
    """The live processes that are, or belong to a group or session of, ``ids``: pid -> command line."""
    left = {}
    for pid, (_, _, pgid, sid) in processes().items():
        if pid in ids or pgid in ids or sid in ids:
            try:
                left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:
                continue
    return left


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_ui(tmp_path: Path, until, then: int, to_group: bool):
    """Start ``scripts/ui.py`` as `make ui` does, in a tmp dir with its own store, in a session of its own (as a
    terminal's foreground job is a group of its own); once ``until(port, pid)`` holds, send it ``then``: to its
    group, as Ctrl-C in a terminal does, or ``to_group=False`` to the process alone, as `kill` does. Returns
    (its exit status, seconds it took to stop, its output, what is left of everything it started, read right
    after it ended)."""
    log = tmp_path / "ui.log"
    port = free_port()
    with log.open("w") as out:  # untraced: under `make test`'s coverage MLflow's UI would start much slower
        ui = subprocess.Popen([sys.executable, str(UI), "--port", str(port)], cwd=tmp_path, stdout=out,
                              stderr=subprocess.STDOUT, env=untraced(clean_env()), start_new_session=True)
    seen: set[int] = {ui.pid}
    try:
        deadline = time.monotonic() + START_S
        while not until(port, ui.pid):
            seen |= family(ui.pid)
            if ui.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the UI did not get there (exit {ui.poll()}): {log.read_text()[-3000:]}")
            time.sleep(0.3)
        seen |= family(ui.pid)
        t0 = time.monotonic()
        (os.killpg if to_group else os.kill)(ui.pid, then)
        status = ui.wait(timeout=60)
        took = time.monotonic() - t0
        left = left_of(seen)
        return status, took, log.read_text(), left
    finally:  # whatever the outcome, nothing this test started stays
        for pid in [*left_of(seen), ui.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ui.wait(timeout=30)


def test_sigterm_once_the_ui_answers_stops_everything_it_started(tmp_path: Path) -> None:
    status, took, out, left = run_ui(tmp_path, lambda port, pid: answers(port), signal.SIGTERM, to_group=False)
    assert left == {}, f"left behind: {left}"
    assert status == -signal.SIGTERM and took < 30, (status, took, out[-2000:])
    assert "no runs yet in sqlite:///" in out.splitlines()[0]  # what it printed first: the store it serves
    assert "DeprecationWarning" not in out and "Traceback" not in out, out[-3000:]


def test_ctrl_c_while_the_ui_starts_stops_everything_it_started(tmp_path: Path) -> None:
    """Ctrl-C at an awkward moment: MLflow's job runner is starting its huey consumers, nothing answers yet."""

    def starting(port: int, pid: int) -> bool:
        return any("huey_consumer" in cmd for cmd in left_of(family(pid)).values())

    status, took, out, left = run_ui(tmp_path, starting, signal.SIGINT, to_group=True)
    assert left == {}, f"left behind: {left}"
    assert status == -signal.SIGINT and took < 30, (status, took, out[-2000:])
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
