"""The annotation server without a browser: traversal in every URL form, a foreign Host header, a
write without the token, two tabs on one image (409), atomic saving that a restarted server reads
back, the COCO file pycocotools reads, the per-mask log, bad images reported."""

import base64
import http.client
import json
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from grounded.annotate import LOG_SCHEMA, collect_images, make_server
from grounded.annotate.server import STATIC_DIR, Session, postprocess_low_res
from grounded.annotate.store import AnnotationStore


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    (tmp_path / "secret.txt").write_text("outside")
    return tmp_path


def fake_embed(image):
    return np.full((1, 4, 2, 2), image.mean(), np.float32)


@contextmanager
def serving(folder, out="out"):
    records, initial = collect_images([str(folder / "images")])
    session = Session(records, AnnotationStore(folder / out, records, initial), None, fake_embed, 64)
    server = make_server(session)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield session, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def request(port, path, method="GET", body=None, headers=None, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", f"localhost:{port}" if host is None else host)
    data = b"" if body is None else json.dumps(body).encode()
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(data)))
    connection.endheaders(data)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, payload, dict(response.getheaders())


def accept_body(version, value=1.0, label="cat", **extra):
    logits = np.full((16, 16), -value, np.float32)
    logits[2:9, 3:12] = value
    return {"version": version, "label": label, "low_res_logits": base64.b64encode(logits.tobytes()).decode(),
            "clicks": [[10, 12, 1, 0]], "box": None, "seconds": 2.5, "candidate": 1, "score": 0.9, **extra}


TRAVERSALS = ["/static/../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt", "/static/%252e%252e/secret.txt",
              "/static/..%2f..%2fsecret.txt", "/static/..%5c..%5csecret.txt", "/static//etc/passwd",
              "/static/%2fetc%2fpasswd", "/static/./index.html", "/static/C:%5cwindows", "/static/index.html%00.js",
              "/../secret.txt", "/models/../../secret.txt", "/models/%2e%2e%2fsecret.txt", "/api/image/..%2f1",
              "/api/image/-1", "/api/image/99", "/api/annotations/%2e%2e"]


def test_traversal_in_every_url_form_is_refused(folder):
    with serving(folder) as (session, port):
        for path in TRAVERSALS:
            status, payload, headers = request(port, path)
            assert status in (400, 404), (path, status)
            assert b"outside" not in payload and b"root:" not in payload
            assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, payload, _ = request(port, "/api/session")
        assert status == 200 and json.loads(payload)["token"] == session.token


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "", "localhost.evil"])
def test_a_foreign_host_header_is_refused(folder, host):
    with serving(folder) as (session, port):
        status, payload, _ = request(port, "/api/session", host=host)
        assert status == 403 and session.token.encode() not in payload
        status, _, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(0), host=host,
                               headers={"X-Grounded-Token": session.token})
        assert status == 403
    assert not (folder / "out" / "coco.json").exists()


def test_a_write_without_the_token_is_refused(folder):
    with serving(folder) as (session, port):
        for headers in ({}, {"X-Grounded-Token": "guess"}, {"X-Grounded-Token": session.token[:-1]}):
            status, _, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(0), headers=headers)
            assert status == 403
        assert json.loads(request(port, "/api/annotations/0")[1])["annotations"] == []


def test_accept_saves_atomically_and_two_tabs_conflict(folder):
    out = folder / "out"
    with serving(folder) as (session, port):
        token = {"X-Grounded-Token": session.token}
        status, payload, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(0), headers=token)
        assert status == 200 and json.loads(payload)["version"] == 1
        # a second tab still at version 0: a visible conflict, nothing overwritten
        status, payload, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(0, label="dog"), headers=token)
        assert status == 409 and json.loads(payload)["version"] == 1
        status, payload, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(1, label="dog"), headers=token)
        assert status == 200
        ids = [a["id"] for a in json.loads(request(port, "/api/annotations/0")[1])["annotations"]]
        status, _, _ = request(port, "/api/annotations/0/relabel", "POST", {"version": 2, "id": ids[1], "label": "cow"},
                               headers=token)
        assert status == 200
        status, _, _ = request(port, "/api/annotations/0/delete", "POST", {"version": 3, "id": ids[0]}, headers=token)
        assert status == 200
    assert not list(out.rglob(".*.tmp*"))
    with serving(folder) as (session, port):  # a restarted server: nothing lost, versions go on
        saved = json.loads(request(port, "/api/annotations/0")[1])
        assert saved["version"] == 4 and [a["label"] for a in saved["annotations"]] == ["cow"]

    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils

    coco = COCO(str(out / "coco.json"))
    (annotation,) = coco.loadAnns(coco.getAnnIds())
    expected = postprocess_low_res(np.where(np.pad(np.ones((7, 9)), ((2, 7), (3, 4))) > 0, 1.0, -1.0), 64, (60, 80))
    assert coco.cats[annotation["category_id"]]["name"] == "cow"
    np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), expected)
    assert annotation["area"] == int(mask_utils.area(annotation["segmentation"])) == expected.sum()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and set(log[0]) == set(LOG_SCHEMA) and log[0]["seconds"] == 2.5 and log[0]["num_clicks"] == 1


def test_images_embeddings_and_bad_images(folder):
    with serving(folder) as (session, port):
        info = json.loads(request(port, "/api/session")[1])
        names = [i["key"] for i in info["images"]]
        assert names == ["a", "b", "broken"]
        status, payload, headers = request(port, "/api/image/0")
        assert status == 200 and headers["Content-Type"] == "image/png" and payload.startswith(b"\x89PNG")
        status, payload, _ = request(port, "/api/embedding/1")
        assert status == 200 and len(payload) == 4 * 4 * 2 * 2
        status, payload, _ = request(port, "/api/image/2")
        assert status == 422 and "cannot read" in json.loads(payload)["error"]
        status, _, _ = request(port, "/api/annotations/1/accept", "POST", {"version": 0, "low_res_logits": "AAAA"},
                               headers={"X-Grounded-Token": session.token})
        assert status == 400


def test_opening_a_coco_file_shows_its_masks(folder):
    with serving(folder) as (session, port):
        request(port, "/api/annotations/1/accept", "POST", accept_body(0, label="fish"),
                headers={"X-Grounded-Token": session.token})
    coco_file = folder / "images" / "labels.json"
    coco = json.loads((folder / "out" / "coco.json").read_text())
    for image in coco["images"]:
        image["file_name"] = image["file_name"].split("/")[-1]
    coco_file.write_text(json.dumps(coco))
    records, initial = collect_images([str(coco_file)])
    store = AnnotationStore(folder / "again", records, initial)
    (annotation,) = store.get("b")["annotations"]
    assert annotation["label"] == "fish" and store.get("a")["annotations"] == []


def test_the_page_is_built_into_the_package(tmp_path):
    """The built page is in the source tree and in a wheel built from it (a pip user needs no npm)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    assert (STATIC_DIR / "index.html").is_file()
    assert list(STATIC_DIR.glob("ort/*.wasm")), "onnxruntime-web's wasm files ship with the page"
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so the build's folders stay out of the clone
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    shutil.copytree(repo / "grounded", source / "grounded", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("grounded-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "grounded/annotate/static/index.html" in names and "grounded/annotate/static/app.js" in names
    assert any(n.startswith("grounded/annotate/static/ort/") and n.endswith(".wasm") for n in names)


def test_a_huge_image_is_shown_scaled_and_saved_at_full_size(tmp_path):
    import io

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (3000, 2200), (40, 80, 120)).save(images / "huge.png")
    with serving(tmp_path) as (session, port):
        status, payload, _ = request(port, "/api/image/0")
        assert status == 200 and Image.open(io.BytesIO(payload)).size == (2048, 1502)
        saved = json.loads(request(port, "/api/annotations/0")[1])
        assert (saved["width"], saved["height"]) == (3000, 2200)
        status, payload, _ = request(port, "/api/annotations/0/accept", "POST", accept_body(0),
                                     headers={"X-Grounded-Token": session.token})
        assert status == 200 and json.loads(payload)["annotation"]["segmentation"]["size"] == [2200, 3000]


def start_command(repo, env, folder, model):
    """`grounded annotate` in a process of its own; returns it, its port and what it printed."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "grounded", "annotate", str(folder / "images"), "--out",
                             str(folder / "out"), "--model", str(model), "--port", "0", "--no-browser"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said = []
    for line in proc.stdout:
        said.append(line)
        started = re.search(r"annotating (\d+) images into .* at http://localhost:(\d+)/", line)
        if started:
            assert started.group(1) == "3"  # a.png, b.jpg and the broken one (shown with a message in the page)
            return proc, int(started.group(2)), said
    proc.wait()
    raise AssertionError("".join(said))


def test_the_command_serves_on_localhost_survives_a_kill_and_stops_on_ctrl_c(folder, tmp_path):
    """`grounded annotate FOLDER --out DIR` end to end as a user starts it: the model loads, its page
    graphs export, the server answers on 127.0.0.1 (the page, the session, a foreign Host refused); the
    process killed (SIGKILL) right after an accept and started again loses nothing; Ctrl-C stops it."""
    import os
    import signal
    from pathlib import Path

    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    repo = Path(__file__).resolve().parents[1]
    model = tmp_path / "model"
    save_pretrained(tiny_sam("vit", seed=7), model)
    env = dict(os.environ, PYTHONPATH=str(repo), GROUNDED_CACHE=str(tmp_path / "cache"))
    proc, port, said = start_command(repo, env, folder, model)
    try:
        status, page, _ = request(port, "/")
        assert status == 200 and b"<html" in page.lower()
        status, info, _ = request(port, "/api/session")
        assert status == 200 and len(json.loads(info)["images"]) == 3
        assert request(port, "/", host="evil.example:80")[0] in (400, 403, 421)
        token = {"X-Grounded-Token": json.loads(info)["token"]}
        status, _, _ = request(port, "/api/annotations/1/accept", "POST", accept_body(0, label="cup"), headers=token)
        assert status == 200
        proc.kill()  # no shutdown code runs: what was accepted must already be on disk
        proc.wait()
        proc, port, said = start_command(repo, env, folder, model)
        saved = json.loads(request(port, "/api/annotations/1")[1])
        assert saved["version"] == 1 and [a["label"] for a in saved["annotations"]] == ["cup"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130), "".join(said)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
