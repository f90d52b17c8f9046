"""`--executor ray` (grounded.scale): on a local Ray of 2 CPUs, the same output as the local runner,
a run killed half-way and resumed loses and duplicates nothing, bad files are reported and skipped.
Tiny random SAM; hard timeouts everywhere (a stalled Ray fails the test, it does not hang CI)."""

import json
import os
import signal
import subprocess
import sys
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
def ray_cluster():
    """A local Ray of 2 CPUs, no dashboard, a small object store; workers find tests/ray_helpers.py."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + ([old] if old else []))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING")
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


def test_ray_run_killed_half_way_resumes_losing_nothing(tmp_path, ray_cluster, tiny_model_dir):
    from grounded.scale import run_on_ray

    n = 12
    inputs = images(tmp_path / "in", n)
    spec = tmp_path / "slow.yaml"
    spec.write_text((REPO / "pipelines" / "auto_masks.yaml").read_text().replace(
        "  - node: write_coco", "  - node: ray_helpers:Pause\n    params: {seconds: 0.4}\n  - node: write_coco"))
    sets = [a for o in overrides(tiny_model_dir) for a in ("--set", o)]
    out = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), OMP_NUM_THREADS="1")
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
