"""Lay a saved model folder out as a Hugging Face hub cache entry, so tests load it by hub id
offline (`HF_HUB_OFFLINE=1`) through the same `from_pretrained` code that a real id takes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Union

REVISION = "0123456789abcdef0123456789abcdef01234567"


def install_in_hf_cache(folder: Union[str, Path], cache_dir: Union[str, Path], repo_id: str,
                        revision: str = REVISION) -> Path:
    """Copy every file of `folder` into `cache_dir/models--org--name/snapshots/<revision>/` with
    `refs/main` naming that revision; returns `cache_dir`. Point `cache_dir=` (or HF_HUB_CACHE)
    at it and load `repo_id`."""
    folder, cache_dir = Path(folder), Path(cache_dir)
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in folder.rglob("*"):
        if path.is_file():
            target = snapshot / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)  # read without stripping: no newline
    return cache_dir


def point_hf_cache_at(monkeypatch, cache_dir: Union[str, Path]) -> None:
    """For a test: make this process's huggingface_hub read `cache_dir` offline. The library reads
    HF_HUB_CACHE once at import, so its constant is patched too; transformers 5 and diffusers read
    that constant (transformers 4 kept a copy of its own, `transformers.utils.hub.TRANSFORMERS_CACHE`)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
