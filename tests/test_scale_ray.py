"""`--executor ray` (grounded.scale): on a local Ray of 2 CPUs, the same output as the local runner,
a run killed half-way and resumed loses and duplicates nothing, bad files are reported and skipped.
Tiny random SAM; hard timeouts everywhere (a stalled Ray fails the test, it does not hang CI)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounded.io.results import read_jsonl
from grounded.pipeline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ray_tmp():
    """Ray's session folders (logs, sockets) for this module's Rays, removed afterwards. A short
    path: Ray's socket paths must stay under 108 characters."""
    folder = tempfile.mkdtemp(prefix="ray-")
    yield folder
    # A Ray started by a killed driver may outlive it for a while and keep writing logs here: end
    # every process that names this folder (in its command line or its RAY_TMPDIR), then remove it.
    end_processes_using(folder)
    for _ in range(50):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            break
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_cluster(ray_tmp):
    """A local Ray of 2 CPUs, no dashboard, a small object store; workers find tests/ray_helpers.py."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING",
             _temp_dir=ray_tmp)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit"), tmp_path_factory.mktemp("tiny_sam")))


def images(folder, n, bad=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40 + 4 * i, 56, 3)) * 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    if bad:
        (folder / "not_an_image.png").write_text("hello\n")
        data = (folder / "img00.png").read_bytes()
        (folder / "truncated.png").write_bytes(data[: len(data) // 3])
    return folder


def overrides(model_dir):
    # One image per batch: Ray Data may bundle rows into batches other than the local runner's (it
    # depends on which read finishes first), and an encoder batch of two images rounds differently
    # from two batches of one, so byte-equal outputs need the same batches.
    return [f"model={model_dir}", "device=cpu", "points_per_side=2", "segment_auto.pred_iou_thresh=0",
            "segment_auto.stability_score_thresh=0", "batch_size=1"]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_ray_addresses_that_cannot_work_are_refused_within_seconds(tmp_path, ray_tmp):
    """Issue 28: a Ray Client address, HOST:PORT with nothing listening and `auto` with no cluster
    each end in one clear line within seconds (they hung, or printed a traceback). First in this
    module: `auto` finds any Ray running on the machine (Ray looks for its processes), and the
    other tests start some."""
    from demo_helpers import free_port

    from grounded.cli import main

    image = images(tmp_path / "in", 1) / "img00.png"
    for address, said in ((f"ray://127.0.0.1:{free_port()}", "Ray Client (ray://) addresses cannot run Ray Data"),
                          (f"127.0.0.1:{free_port()}", "nothing listens there")):
        start = time.monotonic()
        with pytest.raises(ValueError if address.startswith("ray://") else RuntimeError, match=re.escape(said)):
            from grounded.pipeline.spec import load_pipeline as load
            from grounded.scale import run_on_ray

            run_on_ray(load("auto_masks"), [str(image)], tmp_path / "out", address=address)
        assert time.monotonic() - start < 10
        assert main(["run", "auto_masks", str(image), "--out", str(tmp_path / "out"), "--executor", "ray",
                     "--ray-address", address]) == 1

    # "auto" in a process of its own (this one may have a Ray); Ray looks for a cluster in RAY_TMPDIR
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_TMPDIR=tempfile.mkdtemp(dir=ray_tmp))
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "grounded", "run", "auto_masks", str(image), "--out",
                           str(tmp_path / "auto"), "--executor", "ray", "--ray-address", "auto"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "--ray-address auto: cannot connect to a Ray cluster (no cluster runs on this machine" in done.stderr
    assert time.monotonic() - start < 60  # python, torch and ray imports included


def test_ray_run_equals_local_run_and_reports_bad_files(tmp_path, ray_cluster, tiny_model_dir):
    from grounded.scale import run_on_ray

    inputs = images(tmp_path / "in", 5, bad=True)
    local = load_pipeline("auto_masks", overrides(tiny_model_dir)).run([str(inputs)], tmp_path / "local", progress=False)
    on_ray = run_on_ray(load_pipeline("auto_masks", overrides(tiny_model_dir)), [str(inputs)], tmp_path / "ray",
                        progress=False)
    assert (on_ray.total, on_ray.ok, on_ray.errors) == (local.total, local.ok, local.errors) == (7, 5, 2)

    a, b = tmp_path / "local", tmp_path / "ray"
    coco = json.loads((b / "coco.json").read_text())
    assert coco == json.loads((a / "coco.json").read_text()) and len(coco["annotations"]) > 0
    assert without_timing(read_jsonl(b / "manifest.jsonl")) == without_timing(read_jsonl(a / "manifest.jsonl"))
    errors = read_jsonl(b / "errors.jsonl")
    assert errors == read_jsonl(a / "errors.jsonl")
    assert {e["id"]: e["stage"] for e in errors} == {"not_an_image": "load", "truncated": "load"}
    assert all(e["error"] for e in errors)
    for i in range(5):  # every per-item file, byte for byte
        for rel in (f"coco/img{i:02d}.json", f"overlays/img{i:02d}.png"):
            assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel
    run_info = json.loads((b / "run.json").read_text())
    assert run_info["fingerprint"] == json.loads((a / "run.json").read_text())["fingerprint"]


def test_ray_run_killed_half_way_resumes_losing_nothing(tmp_path, ray_cluster, tiny_model_dir, ray_tmp):
    from grounded.scale import run_on_ray

    n = 12
    inputs = images(tmp_path / "in", n)
    spec = tmp_path / "slow.yaml"
    spec.write_text((REPO / "pipelines" / "auto_masks.yaml").read_text().replace(
        "  - node: write_coco", "  - node: ray_helpers:Pause\n    params: {seconds: 0.4}\n  - node: write_coco"))
    sets = [a for o in overrides(tiny_model_dir) for a in ("--set", o)]
    out = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), OMP_NUM_THREADS="1", RAY_TMPDIR=ray_tmp)
    cmd = [sys.executable, "-m", "grounded", "run", str(spec), str(inputs), "--out", str(out), "--executor", "ray",
           "--ray-cpus", "2", "--ray-object-store-mb", "100", "--no-progress", *sets]
    # Its own session, so the kill takes Ray's processes with it (as a kill -9 of a whole job would).
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert journal.exists(), "the Ray run did not finish an item in 150 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finished_before = len({json.loads(l)["id"] for l in journal.read_bytes().splitlines() if l.strip()})
    assert 3 <= finished_before < n, "the kill came too late to interrupt anything"

    pipeline = load_pipeline(str(spec), overrides(tiny_model_dir))
    report = run_on_ray(pipeline, [str(inputs)], out, resume=True, progress=False)
    assert (report.total, report.ok, report.errors) == (n, n, 0)
    assert report.done_before >= finished_before and report.processed == n - report.done_before

    lines = [json.loads(l) for l in journal.read_bytes().splitlines() if l.strip()]
    assert sorted(e["id"] for e in lines) == [f"img{i:02d}" for i in range(n)]  # nothing redone, nothing lost
    coco = json.loads((out / "coco.json").read_text())
    assert [img["item_id"] for img in coco["images"]] == [f"img{i:02d}" for i in range(n)]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert not [p for p in out.rglob(".tmp-*")]

    reference = load_pipeline("auto_masks", overrides(tiny_model_dir)).run(
        [str(inputs)], tmp_path / "local", progress=False)
    assert reference.ok == n
    assert coco == json.loads((tmp_path / "local" / "coco.json").read_text())


def test_progress_on_ray_moves_within_the_batches_in_the_actors(tmp_path, ray_cluster):
    """Issue 19: the bar moves as the actors' nodes report (here 3 steps per item), not only when a
    batch of 2 comes back."""
    from grounded.pipeline.spec import parse_pipeline
    from grounded.scale import run_on_ray

    spec = "version: 1\nbatch_size: 2\nnodes:\n  - node: ray_helpers:Steps\n    params: {steps: 3, seconds: 0.4}\n"
    positions = []
    report = run_on_ray(parse_pipeline(spec), [str(images(tmp_path / "in", 4))], tmp_path / "out",
                        progress=lambda done, total: positions.append(done))
    assert report.ok == 4 and positions == sorted(positions) and positions[-1] == 4
    within = [p for p in positions if p != int(p)]
    assert len(within) >= 4, positions  # fractions of items, reported from inside the actors


def test_a_killed_ray_run_leaves_no_process_behind_and_says_nothing_harmless(tmp_path, ray_tmp):
    """Issue 28: after kill -9 of the driver alone, its local Ray's processes (the dashboard and
    runtime-env agents among them, which lingered for a minute) are gone within seconds; and a Ray
    run prints no token warning and no core-worker error line."""
    from grounded.scale.reaper import descendants

    spec = tmp_path / "steps.yaml"
    spec.write_text("version: 1\nbatch_size: 1\nnodes:\n  - node: ray_helpers:Steps\n    params: {seconds: 0.5}\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen([sys.executable, "-m", "grounded", "run", str(spec), str(images(tmp_path / "in", 8)),
                             "--out", str(out), "--executor", "ray", "--ray-cpus", "2"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and not (out / "journal.jsonl").exists():
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        ray_processes = descendants(proc.pid)
        time.sleep(1.5)  # the watcher hears of them twice a second
        proc.kill()
        proc.wait(timeout=30)
        said = proc.stdout.read().decode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = {pid for pid, started in ray_processes.items() if _start_time(pid) == started}
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in alive]
        assert len(ray_processes) >= 4  # gcs, raylet, the agents, workers: there was something to end
    finally:
        for pid in [proc.pid] + list(descendants(proc.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert "Token authentication" not in said and "core_worker" not in said, said
    assert "Progress bars disabled" not in said and "execution finished" not in said, said


def processes_using(folder: str):
    needle = folder.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def end_processes_using(folder: str, wait: float = 15.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        pids = processes_using(folder)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def _start_time(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
