"""`grounded run` as a user runs it: a folder with good, corrupt and empty images, the run killed
with SIGKILL mid-way (twice), resumed, and the output checked item by item. Plus the real job:
MobileSAM on a sample image, offline."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def grounded(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "grounded", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def environment(*paths):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths), env.get("PYTHONPATH", "")])
    return env


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder of 6 good images, a corrupt one and an empty one; a saved tiny SAM; a spec of the
    user's own that adds a slow step (their node, by import path) so a kill lands mid-run."""
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    root = tmp_path_factory.mktemp("job")
    model = save_pretrained(tiny_sam("vit"), root / "tiny_sam")
    photos = root / "photos"
    (photos / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.jpg", "b.png", "c.JPG", "more/d.jpg", "more/e.png", "more/f.jpeg"]
    for i, name in enumerate(names):
        Image.fromarray((rng.random((30 + i, 40, 3)) * 255).astype(np.uint8)).save(photos / name)
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    (photos / "empty.png").write_bytes(b"")
    (root / "my_nodes.py").write_text(textwrap.dedent('''
        import time
        import numpy as np
        from grounded.pipeline import Node, Param

        class Pause(Node):
            """Waits a while per image (stands in for a slow model)."""
            name = "pause"
            reads = {"image": np.ndarray}
            params = {"seconds": Param(0.5, float)}

            def process(self, sample):
                time.sleep(self.seconds)
    '''))
    spec = root / "slow_auto_masks.yaml"
    spec.write_text(textwrap.dedent('''
        description: automatic masks, slowly
        vars: {model: mobile_sam}
        batch_size: 2
        nodes:
          - node: segment_auto
            params: {model: "${model}", device: cpu, points_per_side: 3, pred_iou_thresh: 0, stability_score_thresh: 0}
          - node: my_nodes:Pause
            params: {seconds: 0.4}
          - node: write_coco
          - node: write_overlays
    '''))
    ids = ["a", "b", "c", "corrupt", "empty", "more/d", "more/e", "more/f"]
    return dict(root=root, model=model, photos=photos, spec=spec, ids=ids, good=[i for i in ids if i not in ("corrupt", "empty")])


def run_and_kill(args, env, journal, at_least):
    """Start `grounded run`, wait until the journal lists `at_least` items, SIGKILL it; return that count."""
    proc = subprocess.Popen([sys.executable, "-m", "grounded", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = len(jsonl(journal)) if journal.exists() else 0
            if done >= at_least:
                break
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
            time.sleep(0.02)
        else:
            raise AssertionError("the run never finished an item")
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return len(jsonl(journal))


def test_killed_twice_then_resumed_every_item_exactly_once(job):
    out = job["root"] / "out"
    env = environment(job["root"])
    args = ["run", job["spec"], job["photos"], "--out", out, "--set", f"model={job['model']}"]
    journal = out / "journal.jsonl"

    first = run_and_kill(args, env, journal, at_least=1)
    assert 1 <= first < len(job["ids"])
    refused = grounded(*args, env=env)  # without --resume the folder is not touched
    assert refused.returncode == 1 and "pass --resume" in refused.stderr
    second = run_and_kill(args + ["--resume"], env, journal, at_least=first + 1)
    assert first < second < len(job["ids"])

    final = grounded(*args, "--resume", "--fail-on-error", env=env)
    assert final.returncode == 1, final.stderr  # items failed and --fail-on-error was given
    assert f"{len(job['ids'])} items: {len(job['good'])} done, 2 failed ({second} finished by an earlier run)" in final.stdout
    assert "corrupt" in final.stdout and "empty" in final.stdout

    # The journal: one line per item, ever: nothing finished was redone.
    entries = jsonl(journal)
    assert sorted(e["id"] for e in entries) == sorted(job["ids"])
    # The manifest: every item once, in input order, with its outputs on disk.
    rows = jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in rows] == job["ids"]
    for row in rows:
        if row["id"] in job["good"]:
            assert row["status"] == "ok" and row["detections"] > 0
            coco_item = json.loads((out / row["outputs"]["write_coco"]).read_text())
            assert len(coco_item["annotations"]) == row["detections"]
            assert Image.open(out / row["outputs"]["write_overlays"]).size == (row["width"], row["height"])
        else:
            assert row["status"] == "error" and row["stage"] == "load"
    # The errors file: the corrupt and the empty file, with reasons.
    errors = {e["id"]: e for e in jsonl(out / "errors.jsonl")}
    assert set(errors) == {"corrupt", "empty"}
    assert "file is empty (0 bytes)" in errors["empty"]["error"]
    assert "corrupt" in errors["corrupt"]["error"] or "not an image" in errors["corrupt"]["error"]
    # The run's COCO file: each good image once, annotation ids unique, masks of the right size.
    coco = json.loads((out / "coco.json").read_text())
    assert [img["item_id"] for img in coco["images"]] == job["good"]
    assert [img["id"] for img in coco["images"]] == list(range(1, len(job["good"]) + 1))
    assert sorted(a["id"] for a in coco["annotations"]) == list(range(1, len(coco["annotations"]) + 1))
    assert len(coco["annotations"]) == sum(r.get("detections", 0) for r in rows)
    for ann in coco["annotations"]:
        image = coco["images"][ann["image_id"] - 1]
        assert ann["segmentation"]["size"] == [image["height"], image["width"]]
    # No temporary file survived the kills.
    assert not [p for p in out.rglob(".tmp-*")]

    again = grounded(*args, "--resume", env=env)  # all done: nothing to do, exit 0 without --fail-on-error
    assert again.returncode == 0 and "this run processed 0" in again.stdout


def test_help_says_what_each_command_does():
    top = grounded("--help")
    assert top.returncode == 0
    for command in ("segment", "run", "nodes", "weights"):
        line = next(l for l in top.stdout.splitlines() if l.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 20
    run_help = grounded("run", "--help").stdout
    assert "--resume" in run_help and "--fail-on-error" in run_help and "--set KEY=VALUE" in run_help
    assert "relative to its own folder" in " ".join(run_help.split())  # lists and manifests (issue 28)
    nodes = grounded("nodes").stdout
    assert "segment_auto: Automatic masks" in nodes and "write_coco:" in nodes


def test_cli_errors_are_one_clear_line(tmp_path):
    missing = grounded("run", "auto_masks", tmp_path / "nope", "--out", tmp_path / "out")
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
    bad_set = grounded("run", "auto_masks", REPO / "samples", "--out", tmp_path / "out", "--set", "points_per_sid=8")
    assert bad_set.returncode == 1 and "did you mean 'points_per_side'" in bad_set.stderr


def test_real_mobile_sam_on_a_sample_offline(tmp_path, mobile_sam_checkpoint):
    """The README's main job on one image with a coarse grid: real weights, no hub, well under a minute."""
    start = time.monotonic()
    result = grounded("run", "pipelines/auto_masks.yaml", "samples/chelsea.jpg", "--out", tmp_path / "out",
                      "--set", "points_per_side=8", "--set", "device=cpu", env=environment())
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "1 items: 1 done, 0 failed" in result.stdout
    assert "img/s" in result.stderr or "s/img" in result.stderr  # the progress bar's rate
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert coco["images"][0]["width"] == 451 and coco["images"][0]["height"] == 300
    assert len(coco["annotations"]) >= 3  # a real model finds the cat, its parts, the background
    assert all(isinstance(a["segmentation"]["counts"], str) for a in coco["annotations"])
    assert all(a["score"] >= 0.88 for a in coco["annotations"])  # the generator's default quality filter held
    overlay = Image.open(tmp_path / "out" / "overlays" / "chelsea.png")
    assert overlay.size == (451, 300)
    assert seconds < 90, seconds
