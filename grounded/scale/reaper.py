"""No Ray process outlives the run that started it. A local Ray shuts down with the run, but a
driver killed outright (kill -9, the out-of-memory killer) cannot shut it down: Ray's dashboard and
runtime-env agents then wait on timeouts for a minute before they notice. So the driver keeps a
small watcher process told which processes are its own (its descendants, with their start times);
when the driver's pipe closes without "done", the watcher ends those processes. Linux only (it
reads /proc); elsewhere it does nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Set

_PROC = Path("/proc")


def descendants(root: int, skip: Set[int] = frozenset()) -> Dict[int, str]:
    """{pid: start time} of every process below `root` (not `skip`, nor what is below it)."""
    children: Dict[int, list] = {}
    started: Dict[int, str] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        started[pid] = fields[19]
    found: Dict[int, str] = {}
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in skip and pid not in found:
                found[pid] = started[pid]
                todo.append(pid)
    return found


def _start_time(pid: int) -> Optional[str]:
    try:
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Reaper:
    """The driver's side: `record()` now and then while Ray runs, `done()` once Ray is shut down."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        if not (_PROC / "self" / "stat").exists():
            return
        # This file as a script: the standard library only, not the grounded package (and torch).
        # Its own session, so a Ctrl-C at the terminal (which the driver handles) does not end it.
        self.proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve())],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)

    def record(self) -> None:
        if self.proc is None:
            return
        own = descendants(os.getpid(), skip={self.proc.pid})
        try:
            self.proc.stdin.write("".join(f"{pid} {start}\n" for pid, start in own.items()) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self.proc = None

    def done(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.write("done\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=10)
        self.proc = None


def watch() -> None:
    """The watcher: read snapshots (lines "PID START", a blank line after each) until "done", or
    until the pipe closes, then end the processes of the last snapshot that still run."""
    latest: Dict[int, str] = {}
    current: Dict[int, str] = {}
    for line in sys.stdin:
        line = line.strip()
        if line == "done":
            return
        if not line:
            latest, current = current, {}
            continue
        pid, start = line.split()
        current[int(pid)] = start
    for sig, pause in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 0.0)):
        alive = [pid for pid, start in latest.items() if _start_time(pid) == start]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if alive and pause:
            time.sleep(pause)


if __name__ == "__main__":
    watch()
