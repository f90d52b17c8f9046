"""Writing a run's results so that nothing is lost and nothing is counted twice.

- Every file is written atomically: to a temporary name in the same folder, flushed to disk,
  then renamed over the target. A reader (or a resumed run) sees the old file or the new one,
  never half of one, whenever the process dies. The file gets the permissions a plain `open`
  would give it: a replaced file keeps its mode, a new one gets 0666 less the umask (a temporary
  file starts at 0600, which would hide results from everyone else on a shared filesystem).
- The journal (`journal.jsonl`) is append-only, one JSON line per finished item, flushed and
  fsynced before the next item counts as done. An item is finished when, and only when, its line
  is there: its files were all written before it. A torn last line (a kill during the write) is
  ignored and cut off when the journal is opened again.
- `RunLock` keeps two runs from writing one folder at once (an OS lock: it dies with its process).
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

PathLike = Union[str, os.PathLike]
TMP_PREFIX = ".tmp-"


# ---- atomic files -----------------------------------------------------------------------------

def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_open_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # replacing a file keeps its mode, as open(path, "w") does
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _plain_open_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, value: Any, indent: Optional[int] = None) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_save_image(path: PathLike, array, format: str = "PNG") -> Path:
    """An HxW or HxWx3 array as an image file (PNG unless told), atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: PathLike) -> int:
    """Delete temporary files a killed run left behind under `folder`; returns how many."""
    removed = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except OSError:
                    pass
    return removed


# ---- journal ----------------------------------------------------------------------------------

class Journal:
    """Append-only JSONL of finished items, keyed by their `id`; the last line for an id wins."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._file = None

    def load(self) -> Dict[str, Dict[str, Any]]:
        """Entries by id, in the order first finished. Lines that do not parse (a torn last line) are skipped."""
        entries: Dict[str, Dict[str, Any]] = {}
        if not self.path.exists():
            return entries
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "id" in entry:
                entries[str(entry["id"])] = entry
        return entries

    def open(self) -> "Journal":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self._file = open(self.path, "ab")
        return self

    def _cut_torn_tail(self) -> None:
        # A kill in the middle of an append leaves a line without its newline; the next append
        # would be glued to it. Cut it: that item was not finished.
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def append(self, entry: Dict[str, Any]) -> None:
        if self._file is None:
            self.open()
        # One write of the whole line, then fsync: the line is there in full or (torn) ignored.
        self._file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Journal":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# ---- one run per folder -----------------------------------------------------------------------

class RunLock:
    """An exclusive lock on `folder/.lock` for the life of a run. Raises if another run holds it."""

    def __init__(self, folder: PathLike):
        self.path = Path(folder) / ".lock"
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RuntimeError(f"another run is writing to {self.path.parent}; wait for it or choose another --out") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Rows of a JSONL file (a manifest or errors file written by a run)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows
