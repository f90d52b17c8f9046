"""Models by Hugging Face hub id: the local cache first, the network only when the hub answers.

Every loader in grounded that takes a hub id (SAM, both Grounding DINO backends' models and BERT,
BLIP, CLIP, Stable Diffusion inpainting, Whisper by name) resolves it here to a folder on disk and
loads that folder, so no library call reaches for the network on its own:

1. the local cache (`HF_HUB_CACHE`, or `cache_dir`), without any network call;
2. with HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, nothing more;
3. otherwise one request to the hub (`HF_ENDPOINT`) that must answer within `HUB_ANSWER_SECONDS`,
   whatever timeouts the environment sets for huggingface_hub; only then the download.

The cache step uses only huggingface_hub calls that touch no network (`snapshot_download` and
`try_to_load_from_cache` with local files only; its `hf_hub_download` builds request headers even
then, and the first headers of a process fetch a telemetry registry from the endpoint).

A miss is a reason appended to the caller's `tried` list (which cache, which endpoint, what
happened), so the loader's error names every id and path it tried, within seconds when there is
no network (a hub that never answers costs HUB_ANSWER_SECONDS, one that refuses nothing)."""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")

# How long the hub may take to answer one request before it counts as unreachable.
HUB_ANSWER_SECONDS = 3.0
# Patterns of a transformers model folder: configs, tokenizer and processor files, and one weights format.
MODEL_FILES = ("*.json", "*.txt", "*.model")
WEIGHT_FORMATS = ("*.safetensors", "*.bin")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (then only the cache is read)."""
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub id ("org/name", or a legacy "bert-base-uncased") and is
    no path on disk."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not Path(name).expanduser().exists()


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def cache_location(cache_dir=None) -> str:
    """The hub cache folder a look-up reads (huggingface_hub reads HF_HUB_CACHE once at import;
    a later setting is honoured here too)."""
    from huggingface_hub import constants

    return str(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def hub_unreachable(repo_id: Optional[str] = None, revision: Optional[str] = None,
                    timeout: float = HUB_ANSWER_SECONDS, url: Optional[str] = None) -> Optional[str]:
    """None when the hub at HF_ENDPOINT answers a request about `repo_id` (any HTTP answer but a
    404 for the repository) within `timeout` seconds; otherwise what happened, in words. With
    `url`, a HEAD request for that file on its own server instead."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote

    endpoint = hub_endpoint() if url is None else "/".join(url.split("/", 3)[:3])  # scheme://host
    if url is None:
        url = f"{endpoint}/api/models/{repo_id}" if repo_id else f"{endpoint}/api/models?limit=1"
        if repo_id and revision:
            url += f"/revision/{quote(revision, safe='')}"
    outcome: List[str] = []

    def ask() -> None:
        from huggingface_hub import get_token

        try:
            # Not huggingface_hub's build_hf_headers: the first call in a process fetches a telemetry
            # registry from the endpoint (3 s on a dead one); get_token reads the environment and a file.
            token = get_token() if url.startswith(hub_endpoint()) else None
            headers = {"user-agent": "grounded", **({"authorization": f"Bearer {token}"} if token else {})}
            request = urllib.request.Request(url, headers=headers, method="GET" if "/api/" in url else "HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append("")
        except urllib.error.HTTPError as err:
            outcome.append(f"has no repository {repo_id!r} (HTTP 404)" if err.code == 404 and repo_id else "")
        except Exception as err:  # noqa: BLE001 - refused, reset, timed out, DNS: each is the reason
            cause = getattr(err, "reason", err)
            outcome.append(silent if isinstance(cause, TimeoutError) else
                           f"could not be reached ({type(cause).__name__}: {cause})")

    silent = f"did not answer within {timeout:g} s"
    # The socket timeout bounds each step; the thread bounds the whole (a server trickling bytes).
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    reason = outcome[0] if outcome else silent
    return f"{endpoint} {reason}" if reason else None


def from_cache_or_hub(describe: str, cached: Callable[[], T], download: Callable[[], T], tried: List[str],
                      repo_id: Optional[str] = None, revision: Optional[str] = None, cache_dir=None,
                      url: Optional[str] = None) -> Optional[T]:
    """`cached()` (reads the local cache only); on a miss, unless offline or the server does not
    answer (`hub_unreachable` for `repo_id`, or for `url`), `download()`. None when neither gives
    it, with the reason appended to `tried` as "<describe> (...): ...", naming cache and server."""
    try:
        return cached()
    except Exception as err:  # noqa: BLE001 - a cache miss, whatever the library calls it
        miss = _first_line(err)
    where = cache_location(cache_dir)
    if hub_offline():
        tried.append(f"{describe} (offline, cache {where}): not in the cache ({miss})")
        return None
    unreachable = hub_unreachable(repo_id, revision, url=url)
    if unreachable:
        tried.append(f"{describe} (cache {where}): not in the cache, and the server {unreachable}")
        return None
    try:
        return download()
    except Exception as err:  # noqa: BLE001 - missing repos, gated repos, network errors
        tried.append(f"{describe} (cache {where}, hub {hub_endpoint()}): {_first_line(err)}")
        return None


def _snapshot(repo_id: str, patterns: Sequence[str], local_only: bool, cache_dir, revision) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_only,
                                  allow_patterns=list(patterns), etag_timeout=HUB_ANSWER_SECONDS))


def hub_snapshot(repo_id: str, allow_patterns: Sequence[str], tried: List[str], cache_dir=None,
                 revision=None) -> Optional[Path]:
    """The snapshot folder of hub repository `repo_id` with the files matching `allow_patterns`:
    the cached snapshot when there is one, else downloaded (see the module docstring); None with
    the reason appended to `tried`."""
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")
    return from_cache_or_hub(f"Hugging Face hub id {repo_id!r}",
                             lambda: _snapshot(repo_id, allow_patterns, True, cache_dir, revision),
                             lambda: _snapshot(repo_id, allow_patterns, False, cache_dir, revision),
                             tried, repo_id, revision, cache_dir)


def model_snapshot(repo_id: str, tried: List[str], cache_dir=None, revision=None, files: Sequence[str] = MODEL_FILES,
                   config_file: str = "config.json", weight_formats: Sequence[str] = WEIGHT_FORMATS) -> Optional[Path]:
    """A model folder for hub id `repo_id`: `config_file`, the `files` patterns, and weights in the
    first of `weight_formats` the repository has. The cached snapshot when it holds the config and
    weights; else downloaded (safetensors before .bin); None with the reasons in `tried`."""
    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")

    def complete(folder: Path) -> bool:
        return (folder / config_file).is_file() and any(_has(folder, w) for w in weight_formats)

    def cached() -> Path:
        folder = _snapshot(repo_id, [*files, config_file, *weight_formats], True, cache_dir, revision)
        if not complete(folder):
            raise FileNotFoundError(f"the cached snapshot {folder} has no {config_file} with weights")
        return folder

    def download() -> Path:
        for weights in weight_formats:
            folder = _snapshot(repo_id, [*files, config_file, weights], False, cache_dir, revision)
            if complete(folder):
                return folder
        raise FileNotFoundError(f"the repository has no {config_file} with {' or '.join(weight_formats)} weights")

    return from_cache_or_hub(f"Hugging Face hub id {repo_id!r}", cached, download, tried, repo_id, revision, cache_dir)


def local_or_hub_folder(name: str, what: str, cache_dir=None, revision=None,
                        files: Sequence[str] = MODEL_FILES) -> Path:
    """`name` as a local folder, or the folder of hub id `name` (`model_snapshot`); else a
    FileNotFoundError naming `what` and everything tried."""
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    tried = [f"local folder {path.resolve()} (does not exist)" if not path.exists() else f"{path} is not a folder"]
    if not path.exists() and is_hub_id(str(name)):
        folder = model_snapshot(str(name), tried, cache_dir, revision, files)
        if folder is not None:
            return folder
    elif not path.exists():
        tried.append(f"{str(name)!r} is not a hub id of the form org/name")
    raise FileNotFoundError(f"{what} {str(name)!r} not found. Tried:\n  - " + "\n  - ".join(tried))


def _has(folder: Path, pattern: str) -> bool:
    return any(fnmatch.fnmatch(p.name, pattern) for p in folder.rglob("*") if p.is_file())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:400] if text else ''}"
