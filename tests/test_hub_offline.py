"""Without a network, every model loader looks in the local cache first and fails within 10 s,
naming the ids and paths it tried, whatever the environment says: HF_HUB_OFFLINE unset (bin/test
sets it; the loaders run here in processes without it), hub timeouts of 10 minutes, and HF_ENDPOINT
pointed at a loopback server that accepts connections and never answers, or at one that refuses
them. Ids that are in the cache load, with the hub unreachable. (grounded/hub.py; the loaders run in
grounded/testing/offline_loaders.py.)"""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grounded.hub import HUB_ANSWER_SECONDS
from grounded.testing.hf_cache import install_in_hf_cache

LIMIT_SECONDS = 10
CACHED = {"grounded-test/tiny-blip": "blip", "grounded-test/tiny-clip": "clip",
          "grounded-test/tiny-sd-inpainting": "diffusion"}


@pytest.fixture(scope="module")
def endpoints():
    """http:// URLs of a server that accepts and never answers, and of a port that refuses."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    held = []

    def accept_and_hold():
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:  # closed at the end of the module
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    refusing_port = refusing.getsockname()[1]
    refusing.close()  # nothing listens there now: connections are refused
    yield {"silent": f"http://127.0.0.1:{silent.getsockname()[1]}", "refusing": f"http://127.0.0.1:{refusing_port}"}
    silent.close()
    for connection in held:
        connection.close()


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding a tiny BLIP, CLIP and SD inpainting pipeline by hub id."""
    from grounded.testing.blip import tiny_blip
    from grounded.testing.clip import tiny_hf_clip
    from grounded.testing.diffusion import tiny_sd_inpaint

    root = tmp_path_factory.mktemp("offline")
    tiny_blip(root / "blip")
    tiny_hf_clip(root / "clip")
    tiny_sd_inpaint(root / "sd")
    cache = root / "hub"
    for repo, folder in zip(CACHED, ("blip", "clip", "sd")):
        install_in_hf_cache(root / folder, cache, repo)
    return cache


@pytest.fixture(scope="module")
def results(endpoints, hub_cache, tmp_path_factory):
    """The loaders' outcomes under each endpoint, both processes run at once."""
    from grounded.testing.dino import tiny_official_config, write_official_config

    home = tmp_path_factory.mktemp("home")  # open_clip's and openai-whisper's caches live under ~/.cache
    config = write_official_config(home / "GroundingDINO_SwinT_OGC.py", tiny_official_config("bert-base-uncased"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(hub_cache), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               HF_HUB_ETAG_TIMEOUT="600", HF_HUB_DOWNLOAD_TIMEOUT="600")
    command = [sys.executable, "-m", "grounded.testing.offline_loaders", str(config),
               *(f"{repo}={kind}" for repo, kind in CACHED.items())]
    runs = {name: subprocess.Popen(command, env=dict(env, HF_ENDPOINT=url), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
            for name, url in endpoints.items()}
    out = {}
    for name, run in runs.items():
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


def test_the_loader_processes_run_without_hf_hub_offline(results):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # bin/test and conftest set it here; the children drop it
    assert set(results) == {"silent", "refusing"}


@pytest.mark.parametrize("server", ["silent", "refusing"])
def test_missing_models_fail_within_10_s_naming_ids_and_paths(results, endpoints, hub_cache, server):
    missing = {name: r for name, r in results[server].items() if not name.startswith("cached_")}
    assert len(missing) == 11
    print({name: r["seconds"] for name, r in missing.items()})
    why = f"did not answer within {HUB_ANSWER_SECONDS:g} s" if server == "silent" else "could not be reached"
    for name, outcome in missing.items():
        message = outcome["message"]
        assert outcome["error"] in ("FileNotFoundError", "InpaintModelNotFound", "SpeechModelNotFound"), (name, outcome)
        assert outcome["seconds"] < LIMIT_SECONDS, (name, outcome)
        assert "Tried" in message or "tried" in message, (name, message)
        if name == "openai_whisper":  # no hub: a name is looked up in ~/.cache/whisper only
            assert "base.en" in message and ".cache/whisper/base.en.pt" in message
            continue
        repo = {"grounding_dino_official": "bert-base-uncased", "open_clip_tag": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                "faster_whisper": "base.en"}.get(name, "grounded-missing/")
        assert repo in message and str(hub_cache) in message, (name, message)
        assert f"{endpoints[server]} {why}" in message, (name, message)


@pytest.mark.parametrize("server", ["silent", "refusing"])
def test_cached_hub_ids_load_without_the_network(results, server):
    cached = {name: r for name, r in results[server].items() if name.startswith("cached_")}
    assert sorted(cached) == ["cached_blip", "cached_clip", "cached_diffusion"]
    print({name: r["seconds"] for name, r in cached.items()})
    for name, outcome in cached.items():
        assert outcome["message"] == "loaded", (name, outcome)
        assert outcome["seconds"] < LIMIT_SECONDS, (name, outcome)


def test_a_cached_snapshot_needs_a_config_and_weights_in_either_format(tmp_path, monkeypatch):
    """A snapshot in the cache counts when it holds config.json and safetensors or .bin weights
    (offline, a .bin-only snapshot is found); without weights it is a miss that says so."""
    from grounded.hub import model_snapshot
    from grounded.testing.hf_cache import point_hf_cache_at

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cache = install_in_hf_cache(folder, tmp_path / "hub", "grounded-test/no-weights")
    point_hf_cache_at(monkeypatch, cache)
    tried = []
    assert model_snapshot("grounded-test/no-weights", tried) is None
    assert "'grounded-test/no-weights' (offline, cache" in tried[0] and "has no config.json with weights" in tried[0]
    (folder / "pytorch_model.bin").write_bytes(b"weights")
    install_in_hf_cache(folder, cache, "grounded-test/bin-only")
    found = model_snapshot("grounded-test/bin-only", [])
    assert found is not None and (found / "pytorch_model.bin").is_file()
