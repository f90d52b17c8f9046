"""Finding a run's inputs: image files, folders (recursive, by extension), globs, text lists of
paths and JSONL manifests, each becoming an `Item` with an id unique within the run.

- A folder is walked recursively, in sorted order, keeping files whose extension (any case) is
  an image extension. Hidden files and folders (".name") are skipped, and so are symbolic links
  to folders (they could loop); a symbolic link to a file is kept even when it dangles, so the
  run reports it instead of silently missing it.
- A glob (`"data/**/*.png"`, quoted so the shell leaves it) takes every file it matches.
- A `.txt`/`.lst` file lists one path per line (blank lines and `#` comments skipped).
- A `.jsonl` file has one JSON object per line: the image under `image` (or `image_path`, `path`,
  `file_name`), an optional unique `id`, and any other `Sample` fields (`text`, `points`,
  `tags`, ...), which the item carries into the pipeline.
- Relative paths in a list or a manifest are relative to the folder of the list or manifest
  file, not to the current folder.
- An image named twice (a folder and a file in it, a list line or a manifest line without fields
  naming an image already an input) is one item; each line left out that way is reported.
- Any other file is taken as an image whatever its extension; if it is not one, the run records why.

Ids are paths relative to the input (folder, list or glob base) without the extension, with `/`
between folders; when two would collide (a.jpg and a.png) they keep their extensions, and
repeats across inputs get -2, -3. The same inputs always give the same ids, which is what lets a
run be resumed. Names are paths, never opened here: reading happens in the run, per item.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico")
LIST_EXTENSIONS = (".txt", ".lst")
MANIFEST_EXTENSIONS = (".jsonl",)
_IMAGE_KEYS = ("image", "image_path", "path", "file_name")


# (name, source, path, fields, id, origin): origin says where it was named, for messages
Found = Tuple[str, str, Optional[Path], Dict[str, Any], Optional[str], str]


class InputError(ValueError):
    """An input that cannot be used at all (missing, a glob with no match, a malformed manifest line)."""


@dataclass(frozen=True)
class Item:
    """One unit of work: `id` (unique in the run, names its output files), `source` (the path as
    the user gave or listed it), `path` (the image to read, None for a manifest line without
    one) and `fields` (Sample fields from a manifest line)."""

    id: str
    source: str
    path: Optional[Path]
    fields: Dict[str, Any] = field(default_factory=dict)


def discover(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], *,
             extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[Union[str, os.PathLike]] = (),
             report: Optional[Callable[[str], None]] = None) -> List[Item]:
    """The items of every input, in order, each file once. `exclude` names folders to leave out
    (a run's output folder inside its input folder, for one). `report` is told of every input
    left out because its image is already an input (default: a warning)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    exts = tuple(e.lower() for e in extensions)
    skip = [os.path.abspath(e) for e in exclude]
    found: List[Found] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if os.path.lexists(path):
            if path.is_dir():
                found += [(rel, str(p), p, {}, None, f"in {text}") for rel, p in _walk(path, exts, skip)]
            elif path.suffix.lower() in MANIFEST_EXTENSIONS:
                found += _manifest(path)
            elif path.suffix.lower() in LIST_EXTENSIONS:
                found += _listed(path)
            else:
                found.append((path.name, text, path, {}, None, "as an input"))
        elif glob.has_magic(text):
            base = _glob_base(text)
            matches = _glob(base, text)
            if not matches:
                raise InputError(f"{text}: no file matches this pattern")
            for m in matches:
                match = str(m)
                if m.is_dir():
                    found += [(rel, str(p), p, {}, None, f"in {match}") for rel, p in _walk(m, exts, skip)]
                elif not _excluded(m, skip):
                    found.append((_relative(m, base), match, m, {}, None, f"by {text}"))
        else:
            raise InputError(f"{text}: no such file or folder")
    return _with_ids(found, report or _warn)


def fields_of(items: Iterable[Item]) -> List[str]:
    """The Sample fields these items give a pipeline: the image fields, plus manifest keys."""
    names: List[str] = []
    for item in items:
        extra = (["image", "image_path"] if item.path is not None else []) + ["image_id"] + list(item.fields)
        for name in extra:
            if name not in names:
                names.append(name)
    return names


def _walk(folder: Path, exts: Tuple[str, ...], skip: List[str]) -> List[Tuple[str, Path]]:
    out = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _excluded(root_path / d, skip)
                         and not (root_path / d).is_symlink())
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            p = root_path / name
            out.append((p.relative_to(folder).as_posix(), p))
    return out


def _excluded(path: Path, skip: List[str]) -> bool:
    where = os.path.abspath(path)
    return any(where == s or where.startswith(s + os.sep) for s in skip)


def _glob(base: Path, pattern: str) -> List[Path]:
    # pathlib's ** does not follow links to folders (glob.glob's does, into loops); hidden files
    # and folders are left out, as in a folder walk.
    rest = Path(pattern).relative_to(base) if Path(pattern).is_absolute() or base != Path(".") else Path(pattern)
    found = []
    for match in base.glob(str(rest)):
        if not any(part.startswith(".") for part in match.relative_to(base).parts):
            found.append(match)
    return sorted(found)


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _relative(path: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return path.name
    return path.name if rel.startswith("..") else Path(rel).as_posix()


def _listed(list_file: Path) -> List[Found]:
    out = []
    folder = list_file.parent
    for number, line in enumerate(_read_lines(list_file), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry) if Path(entry).is_absolute() else folder / entry
        out.append((_relative(p, folder), str(p), p, {}, None, f"at {list_file}:{number}"))
    return out


def _manifest(manifest: Path) -> List[Found]:
    out = []
    folder = manifest.parent
    for number, line in enumerate(_read_lines(manifest), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                             "each line must be one JSON object, e.g. {\"image\": \"a.jpg\", \"text\": \"a cat\"}") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        fields = dict(record)
        item_id = fields.pop("id", None)
        if item_id is not None:
            item_id = _checked_id(str(item_id), where)
        image = None
        for key in _IMAGE_KEYS:
            if key in fields:
                image = fields.pop(key)
                break
        if image is None:
            if not fields:
                raise InputError(f"{where}: the line gives neither an image nor any field; "
                                 f"add \"image\": \"path\" (or {', '.join(_IMAGE_KEYS[1:])}) or fields such as \"text\"")
            out.append((item_id or f"line{number}", f"{manifest.name}:{number}", None, fields, item_id, f"at {where}"))
            continue
        if not isinstance(image, str):
            raise InputError(f"{where}: the image must be a path string, got {type(image).__name__}")
        p = Path(image) if Path(image).is_absolute() else folder / image
        out.append((_relative(p, folder), str(p), p, fields, item_id, f"at {where}"))
    return out


def _read_lines(path: Path) -> List[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it ({err})") from None


def _checked_id(item_id: str, where: str) -> str:
    parts = item_id.replace("\\", "/").split("/")
    if not item_id or item_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InputError(f"{where}: id {item_id!r} must be a relative name without '..' or empty parts (it names output files)")
    return item_id


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _with_ids(found: List[Found], report: Callable[[str], None]) -> List[Item]:
    # The same file named twice (a folder and a file in it, or a link to it) is one item.
    unique, first = [], {}
    for name, source, path, fields, item_id, origin in found:
        key = os.path.realpath(path) if path is not None else None
        if key is not None and not fields and key in first:
            report(f"left out {source} ({origin}): the same image is already an input ({first[key]})")
            continue
        if key is not None:
            first.setdefault(key, f"{source} {origin}")
        unique.append((name, source, path, fields, item_id))

    def stem(name: str) -> str:
        base, ext = os.path.splitext(name)
        return base if base and not base.endswith("/") else name

    # Names that share a stem but differ (a.jpg, a.png) keep their extensions; what is still
    # the same after that (x.jpg from two folders) gets -2, -3 below.
    names_by_stem: Dict[str, set] = {}
    for name, _, _, _, item_id in unique:
        if item_id is None:
            names_by_stem.setdefault(stem(name), set()).add(name)
    explicit = {item_id for *_, item_id in unique if item_id is not None}
    items, used = [], set()
    for name, source, path, fields, item_id in unique:
        if item_id is not None:
            if item_id in used:
                raise InputError(f"{source}: id {item_id!r} is used twice; ids must be unique")
            chosen = item_id
        else:
            chosen = stem(name) if len(names_by_stem[stem(name)]) == 1 else name
            base, n = chosen, 1
            while chosen in used or (chosen in explicit):
                n += 1
                chosen = f"{base}-{n}"
        used.add(chosen)
        items.append(Item(chosen, source, path, fields))
    return items
