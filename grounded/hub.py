"""Reading models from the Hugging Face hub's local cache: a repository's snapshot folder, only
from the cache when HF_HUB_OFFLINE is set, and in words what went wrong when it is not there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (then nothing is downloaded; only the cache is read)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_snapshot(repo_id: str, allow_patterns: Sequence[str], tried: List[str], cache_dir=None,
                 revision=None) -> Optional[Path]:
    """The snapshot folder of hub repository `repo_id` holding the files that match `allow_patterns`;
    None when it cannot be had, with the reason (and the cache looked in) appended to `tried`."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    # huggingface_hub reads HF_HUB_CACHE once at import; honour a later setting too.
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                      allow_patterns=list(allow_patterns)))
    except Exception as err:  # noqa: BLE001 - cache misses, bad ids, network errors: each is a reason in `tried`
        where = cache_dir or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        tried.append(f"Hugging Face hub id {repo_id!r} ({'offline, ' if offline else ''}cache {where}): "
                     f"{err.__class__.__name__}: {str(err).splitlines()[0][:200]}")
        return None
