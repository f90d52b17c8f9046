"""`grounded engine export-ls` / `import-ls` through a real Label Studio 1.23.2 server (slow).

Label Studio does not install beside the project's pins, so it runs from its own virtual environment,
which bin/label-studio-env builds once (from label-studio-requirements.txt, minutes) and prints. The
server starts on 127.0.0.1 with a free port, its data (SQLite database, media) in the test's temporary
folder, a user and a legacy API token from environment variables, and local-file serving of the
project's images. Through the REST API the test creates a project with the labelling config export-ls
wrote, imports its tasks with their pre-annotations, annotates them as a reviewer would (one image:
the predictions accepted less one mask plus a new one; one image: every mask deleted; one image left
alone) and exports every task as JSON; import-ls reads that export back.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from demo_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 600  # a fresh database is migrated first: minutes on a loaded 2-core machine
USER, PASSWORD, TOKEN = "grounded@example.com", "grounded-test-password", "grounded0test0token0abcdef0123456789"

pytestmark = pytest.mark.slow


def label_studio_env() -> Path:
    done = subprocess.run([str(REPO / "bin" / "label-studio-env")], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"bin/label-studio-env failed:\n{done.stderr[-4000:]}"
    env = Path(done.stdout.strip().splitlines()[-1])
    assert (env / "bin" / "label-studio").exists(), env
    return env


def grounded(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "grounded", "engine", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, f"grounded engine {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


class Server:
    """A running `label-studio start`, spoken to with the legacy token."""

    def __init__(self, proc, log: Path, port: int):
        self.proc, self.log, self.port = proc, log, port

    def request(self, path: str, method: str = "GET", body=None, timeout: float = 120):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def api(self, path: str, method: str = "GET", body=None, expect=(200, 201)):
        status, raw = self.request(path, method, body)
        assert status in expect, f"{method} {path} answered {status}: {raw[:2000]!r}\n{self.tail()}"
        return json.loads(raw) if raw else None

    def tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- Label Studio's log ({self.log}), its end ---\n{text[-chars:]}"


def start_server(env_dir: Path, base: Path) -> Server:
    """`label-studio start` in a process group of its own; returns once /health answers UP."""
    data_dir, tmp = base / "label-studio-data", base / "label-studio-tmp"
    data_dir.mkdir()
    tmp.mkdir()
    log = base / "label-studio.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "TMPDIR": str(tmp),
        "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(base),
        # nothing leaves the machine: no error reports, analytics or version check
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
    })
    with open(log, "w") as out:
        proc = subprocess.Popen([str(env_dir / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--enable-legacy-api-token"], cwd=base, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(proc, log, port)
    try:
        wait_until_up(server)
    except BaseException:
        stop_server(server)  # a server that never answered goes too
        raise
    return server


def wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(f"label-studio start exited with {server.proc.returncode} before answering\n{server.tail()}")
        # Label Studio moves to the next port when the one asked for was taken meanwhile: it says so
        moved = re.findall(r"Starting development server at http://127\.0\.0\.1:(\d+)/", server.log.read_text(errors="replace"))
        if moved:
            server.port = int(moved[-1])
        try:
            status, raw = server.request("/health", timeout=5)
            if status == 200 and json.loads(raw).get("status") == "UP":
                return
        except (OSError, ValueError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"Label Studio did not answer GET http://127.0.0.1:{server.port}/health within "
                                 f"{STARTUP_SECONDS} s\n{server.tail()}")
        try:
            server.proc.wait(timeout=0.5)  # the pause between polls, cut short if the server exits
        except subprocess.TimeoutExpired:
            pass


def stop_server(server: Server) -> None:
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    except ProcessLookupError:
        pass


def shapes():
    """Three 48x64 masks: a cat, a dog and a third shape (a bird) the reviewer adds."""
    yy, xx = np.mgrid[:48, :64]
    cat = (yy - 15) ** 2 + (xx - 20) ** 2 < 100
    dog = np.zeros((48, 64), bool)
    dog[28:44, 30:60] = True
    bird = np.zeros((48, 64), bool)
    bird[3:12, 40:62] = True
    return cat, dog, bird


def test_a_round_through_a_running_label_studio_server_loses_nothing(tmp_path):
    from PIL import Image

    from grounded.engine.labelstudio import encode_brush
    from grounded.rle import compress_rle, decode_rle, encode_rle

    env_dir = label_studio_env()
    cat, dog, bird = shapes()
    images = tmp_path / "images"
    images.mkdir()
    given = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    for i, (name, masks) in enumerate([("a.png", [(cat, 1), (dog, 2)]), ("b.png", [(dog, 2)]), ("c.png", [(cat, 1)])]):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(images / name)
        given["images"].append({"id": i + 1, "file_name": name, "height": 48, "width": 64})
        for mask, category in masks:
            given["annotations"].append({"id": len(given["annotations"]) + 1, "image_id": i + 1, "category_id": category,
                                         "segmentation": compress_rle(encode_rle(mask)), "iscrowd": 0})
    (tmp_path / "given.json").write_text(json.dumps(given))
    grounded("init", images, "--out", tmp_path / "proj", "--coco", tmp_path / "given.json", "--model", "unused")
    grounded("export-ls", tmp_path / "proj", "--out", tmp_path / "tasks.json", "--image-url", "/data/local-files/?d=images/{name}")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    config = (tmp_path / "tasks.json.config.xml").read_text()
    assert '<Label value="cat"/>' in config and '<Label value="dog"/>' in config
    assert [t["data"]["grounded_file_name"] for t in tasks] == ["a.png", "b.png", "c.png"]

    server = start_server(env_dir, tmp_path)
    try:
        project = server.api("/api/projects", "POST", {"title": "grounded round", "label_config": config})
        pid = project["id"]
        server.api("/api/storages/localfiles", "POST", {"project": pid, "path": str(images), "title": "images",
                                                        "use_blob_urls": False})
        imported = server.api(f"/api/projects/{pid}/import", "POST", tasks)
        assert imported["task_count"] == 3 and imported["prediction_count"] == 3, imported
        held = server.api(f"/api/tasks?project={pid}&page_size=100")["tasks"]
        by_name = {t["data"]["grounded_file_name"]: t["id"] for t in held}
        assert sorted(by_name) == ["a.png", "b.png", "c.png"]
        # the server serves a task's image from the local files it was given
        status, raw = server.request("/data/local-files/?d=images/a.png")
        assert status == 200 and raw == (images / "a.png").read_bytes(), (status, raw[:200])

        # the reviewer: a.png's predictions accepted, less the dog, plus a new mask (labelled from the
        # config's labels, as Label Studio's editor offers: a second "dog", where the bird shape is);
        # b.png's only mask deleted (an annotation with no result); c.png not opened
        predicted = {n: server.api(f"/api/predictions?task={i}") for n, i in by_name.items()}
        for task in tasks:  # the server holds every pre-annotation as export-ls wrote it
            [stored] = predicted[task["data"]["grounded_file_name"]]
            assert [r["value"] for r in stored["result"]] == [r["value"] for r in task["predictions"][0]["result"]]
        a_results = predicted["a.png"][0]["result"]
        assert [r["value"]["brushlabels"] for r in a_results] == [["cat"], ["dog"]]
        new = {"id": "reviewer-1", "from_name": "tag", "to_name": "image", "type": "brushlabels", "origin": "manual",
               "original_width": 64, "original_height": 48, "image_rotation": 0,
               "value": {"format": "rle", "rle": encode_brush(bird), "brushlabels": ["dog"]}}
        server.api(f"/api/tasks/{by_name['a.png']}/annotations", "POST",
                   {"result": [a_results[0], new], "was_cancelled": False, "ground_truth": False})
        server.api(f"/api/tasks/{by_name['b.png']}/annotations", "POST", {"result": [], "was_cancelled": False})

        status, raw = server.request(f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true", timeout=300)
        assert status == 200, f"export answered {status}: {raw[:2000]!r}\n{server.tail()}"
        exported = json.loads(raw)
    finally:
        stop_server(server)
    assert server.proc.returncode is not None
    assert sorted(t["data"]["grounded_file_name"] for t in exported) == ["a.png", "b.png", "c.png"]
    (tmp_path / "export.json").write_text(json.dumps(exported))

    said = grounded("import-ls", tmp_path / "proj", tmp_path / "export.json")
    assert said.startswith("2 masks imported"), said
    path = Path(re.search(r"dataset (\S+)", said).group(1))
    coco = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    got = sorted((files[a["image_id"]], names[a["category_id"]], decode_rle(a["segmentation"]).tobytes())
                 for a in coco["annotations"])
    # a.png: the cat kept, the dog gone, the new one arrived; b.png: nothing; c.png (not reviewed): its cat
    assert got == sorted([("a.png", "cat", cat.tobytes()), ("a.png", "dog", bird.tobytes()), ("c.png", "cat", cat.tobytes())])
    assert {im["file_name"]: (im["height"], im["width"]) for im in coco["images"]}["b.png"] == (48, 64)
