"""The data engine's mechanics on a tiny random SAM (fast): the project folder (version, corruption,
lock), rounds that resume, versioned datasets, the acceptance rule, images added and removed, empty
rounds, the semi stage's decisions and the page's confirm action, ONNX graphs re-exported for a new
model, and the CLI."""

import json
import shutil

import numpy as np
import pytest

from grounded.engine import Project, ProjectBusy, ProjectError, init_project, run_round, start_round
from grounded.engine import finetune


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from grounded.sam.build import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit"), tmp_path_factory.mktemp("tiny") / "sam"))


def blobs(seed, n=3, size=64):
    """An image with n bright discs and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 20, np.uint8)
    masks = []
    for k in range(n):
        cy, cx = 12 + 20 * (k % 3), 12 + 18 * ((k + seed) % 3)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (5 + rng.integers(0, 3)) ** 2
        image[m] = 200
        masks.append(m)
    return image, np.stack(masks)


@pytest.fixture()
def data(tmp_path):
    """Five images (a.png .. e.png); COCO truth for all; e.png held out."""
    from PIL import Image

    from grounded.eval.masks import encode

    folder = tmp_path / "images"
    folder.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "blob"}]}
    for i, name in enumerate("abcde"):
        image, masks = blobs(i)
        Image.fromarray(image).save(folder / f"{name}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{name}.png", "height": 64, "width": 64})
        for rle in encode(masks):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                                        "segmentation": rle, "iscrowd": 0})
    (tmp_path / "truth.json").write_text(json.dumps(coco))
    heldout = dict(coco, images=[im for im in coco["images"] if im["file_name"] == "e.png"],
                   annotations=[a for a in coco["annotations"] if a["image_id"] == 5])
    (tmp_path / "heldout.json").write_text(json.dumps(heldout))
    return tmp_path


def new_project(data, model, **kw):
    return init_project(data / "images", data / "proj", coco=str(data / "heldout.json"), heldout=["e.png"], model=model,
                        train={"steps": 1, "clicks": 3, "bootstrap": 200, **kw}, stage_settings={
                            "semi": {"points_per_side": 4}, "auto": {"points_per_side": 4}})


def quiet(*_):
    pass


def test_init_writes_a_versioned_project_and_refuses_bad_input(data, tiny_model):
    project = new_project(data, tiny_model)
    state = json.loads((data / "proj" / "project.json").read_text())
    assert state["format"] == "grounded-engine-project" and state["version"] == 1
    assert state["heldout"]["images"] == ["e.png"] and sorted(state["image_ids"]) == [f"{c}.png" for c in "abcde"]
    held = json.loads((data / "proj" / "heldout.json").read_text())
    assert len(held["annotations"]) == 3 and held["images"][0]["file_name"] == "e.png"
    assert json.loads(project.dataset_path(0).read_text())["annotations"] == []  # held-out masks never train
    with pytest.raises(ProjectError, match="project already"):
        new_project(data, tiny_model)
    with pytest.raises(FileNotFoundError, match="no data folder"):
        init_project(data / "nothing", data / "p2")
    with pytest.raises(ValueError, match="need masks"):
        init_project(data / "images", data / "p3", heldout=["a.png"])
    with pytest.raises(ValueError, match="not in"):
        init_project(data / "images", data / "p4", heldout=["zzz.png"])


def test_a_project_of_another_version_or_corrupted_is_refused_naming_the_file(data, tiny_model):
    new_project(data, tiny_model)
    path = data / "proj" / "project.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps(dict(state, version=99)))
    with pytest.raises(ProjectError, match=r"project\.json is a version 99 project"):
        Project.open(data / "proj")
    path.write_text('{"format": "grounded-engine-project", "vers')
    with pytest.raises(ProjectError, match=r"project\.json is corrupted"):
        Project.open(data / "proj")
    path.write_text(json.dumps({k: v for k, v in state.items() if k != "rounds"}))
    with pytest.raises(ProjectError, match="lacks 'rounds'"):
        Project.open(data / "proj")
    with pytest.raises(FileNotFoundError):
        Project.open(data / "missing")


def test_a_second_round_at_once_is_refused(data, tiny_model, capsys):
    from grounded.cli import main

    new_project(data, tiny_model)
    with Project.open(data / "proj"):
        with pytest.raises(ProjectBusy, match="already running"):
            Project.open(data / "proj").lock()
        assert main(["engine", "round", str(data / "proj"), "--stage", "auto"]) == 1
        assert "a round is already running" in capsys.readouterr().err
    with Project.open(data / "proj"):  # released: the next holder gets it
        pass


def test_rounds_version_datasets_resume_and_keep_out_a_worse_model(data, tiny_model, monkeypatch):
    new_project(data, tiny_model)
    with Project.open(data / "proj") as project:
        entry = start_round(project, "manual", take=2)
        assert entry["images"] == ["a.png", "b.png"]

        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed during the evaluation")

        monkeypatch.setattr(finetune, "evaluate_models", killed)
        with pytest.raises(KeyboardInterrupt):
            run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
    state = json.loads((data / "proj" / "project.json").read_text())
    assert state["rounds"][0]["status"] == "evaluating"
    round_dir = data / "proj" / "rounds" / "001-manual"
    log_lines = (round_dir / "labels" / "log.jsonl").read_text().splitlines()
    assert len(log_lines) == 6 and all(1 <= json.loads(t)["num_clicks"] <= 20 for t in log_lines)
    seeds = sorted(round_dir.glob("train/seed_*/final/model.safetensors"))
    assert len(seeds) == 3
    stamps = [p.stat().st_mtime_ns for p in seeds]
    v1 = json.loads((data / "proj" / "datasets" / "v001.json").read_text())
    assert len(v1["annotations"]) == 6 and {im["file_name"] for im in v1["images"]} == {"a.png", "b.png"}

    # resumed: the fine-tuned seeds come out worse on the held-out split, so the model stays
    def worse(project, out, models, log=print):
        base = {"iou": np.full(30, 0.8), "noc90": np.full(30, 2.0), "ar100": np.full(30, 0.5)}
        rng = np.random.default_rng(0)
        return {label: base if label == "current" else {"iou": 0.6 + 0.01 * rng.random(30), "noc90": np.full(30, 4.0),
                                                          "ar100": np.full(30, 0.5)} for label in models}

    monkeypatch.setattr(finetune, "evaluate_models", worse)
    with Project.open(data / "proj") as project:
        entry = project.unfinished()
        run_round(project, entry, log=quiet)
        assert entry["status"] == "done" and not entry["decision"]["accepted"]
        assert "worse" in entry["decision"]["why"]
        assert project.state["model"]["current"] == tiny_model
    assert [p.stat().st_mtime_ns for p in seeds] == stamps  # nothing trained twice
    assert len((round_dir / "labels" / "log.jsonl").read_text().splitlines()) == 6  # nothing labelled twice
    report = (data / "proj" / "report.md").read_text()
    assert "worse beyond the 95% interval (NoC@90, mIoU): kept out" in report and (data / "proj" / "report_heldout.png").exists()

    # a better one is kept, as models/v002, and the next round starts from it
    def better(project, out, models, log=print):
        return {label: {"iou": np.full(30, 0.5 if label == "current" else 0.9) + 0.01 * np.arange(30) / 30,
                        "noc90": np.full(30, 5.0 if label == "current" else 2.0), "ar100": np.full(30, 0.4)} for label in models}

    monkeypatch.setattr(finetune, "evaluate_models", better)
    with Project.open(data / "proj") as project:
        entry = start_round(project, "manual", images=["c.png"])
        run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
        assert entry["decision"]["accepted"] and project.state["model"]["current"] == "models/v002"
        assert (data / "proj" / "models" / "v002" / "model.safetensors").exists()
    v2 = json.loads((data / "proj" / "datasets" / "v002.json").read_text())
    assert len(v2["annotations"]) == 9  # v001's six kept, three added
    assert json.loads((data / "proj" / "datasets" / "v001.json").read_text()) == v1  # a version never changes
    with Project.open(data / "proj") as project:
        entry = start_round(project, "auto")
        assert entry["model"] == str(data / "proj" / "models" / "v002") and entry["images"] == ["d.png"]
        run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
        assert entry["status"] == "done" and "decision" not in entry  # auto rounds do not fine-tune by default
        assert set(entry["auto_ap"]) >= {"AP", "AP50", "AR@100"} and entry["auto_ap"]["truth"] == 3
        with pytest.raises(ValueError, match="an empty round"):
            start_round(project, "auto")


def test_images_added_and_removed_between_rounds(data, tiny_model, monkeypatch):
    from PIL import Image

    from grounded.engine.report import status_text

    monkeypatch.setattr(finetune, "evaluate_models", lambda project, out, models, log=print: {
        label: {"iou": np.full(5, 0.5), "noc90": np.full(5, 3.0), "ar100": np.full(5, 0.2)} for label in models})
    new_project(data, tiny_model)
    with Project.open(data / "proj") as project:
        entry = start_round(project, "manual", images=["a.png", "b.png"])
        run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
        assert "not better" in entry["decision"]["why"]
    (data / "images" / "b.png").unlink()
    Image.fromarray(blobs(7)[0]).save(data / "images" / "f.png")
    project = Project.open(data / "proj")
    text = status_text(project)
    assert "1 new since the last round" in text and "1 gone: b.png" in text
    items = finetune.training_items(project, project.dataset_path(1))
    assert [item.key for item in items] == ["engine-1"]  # b.png's masks stay in v001, out of training
    with Project.open(data / "proj") as project:
        entry = start_round(project, "auto", finetune=False)
        assert entry["images"] == ["c.png", "d.png", "f.png"] and entry["added_images"] == ["f.png"]
        assert entry["removed_images"] == ["b.png"]


def test_acceptance_rule_needs_the_interval_and_three_seeds(data, tiny_model):
    rng = np.random.default_rng(1)
    base = {"iou": rng.uniform(0.5, 0.9, 40), "noc90": rng.integers(1, 10, 40).astype(float), "ar100": rng.uniform(0, 1, 40)}
    sign = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)  # as many objects better as worse
    noisy = {f"seed_{s}": {"iou": base["iou"] + 0.05 * sign, "noc90": base["noc90"] - sign, "ar100": base["ar100"]}
             for s in range(3)}
    decision = finetune.decide({"current": base, **noisy}, list(noisy), bootstrap=500)
    assert not decision["accepted"] and decision["kept_seed"] is None
    low, high = decision["difference"]["mIoU"]["ci95"]
    assert low < 0 < high
    fewer_clicks = {s: {"iou": base["iou"], "noc90": base["noc90"] - 1, "ar100": base["ar100"]} for s in noisy}
    decision = finetune.decide({"current": base, **fewer_clicks}, list(fewer_clicks), bootstrap=500)
    assert decision["accepted"] and decision["difference"]["NoC@90"]["ci95"][1] < 0
    # clicking better while the automatic masks stop being found: kept out
    lost = {s: dict(v, ar100=base["ar100"] * 0.2) for s, v in fewer_clicks.items()}
    decision = finetune.decide({"current": base, **lost}, list(lost), bootstrap=500)
    assert not decision["accepted"] and decision["difference"]["AR@100"]["ci95"][1] < 0 and "(automatic-mask recall)" in decision["why"]
    with pytest.raises(ValueError, match="at least 3 fine-tuning seeds"):
        new_project(data, tiny_model, seeds=[0, 1])


def test_fine_tuning_keeps_the_automatic_stages_predicted_iou(data, tiny_model):
    """The engine's default fine-tune trains the mask heads only: the masks change, while every prompt's
    predicted IoU, which the auto and semi stages threshold at the SAM paper's 0.88 and 0.92, stays the
    base model's (training the IoU head on the round's masks moved its scale so far on the stardist
    proof that no automatic mask passed; issue 27)."""
    from grounded.engine.stages import load_model
    from grounded.sam import SamPredictor
    from grounded.sam.training.data import TrainItem
    from grounded.sam.utils.amg import build_point_grid

    project = new_project(data, tiny_model, steps=1, lr=1e-2)
    assert "mask_decoder.iou_prediction_head" not in project.state["train"]["trainable"]
    entry = {"index": 1, "stage": "manual", "model": tiny_model}
    items = [TrainItem(f"blobs-{i}", *blobs(i)) for i in range(2)]
    folders = finetune.train_seeds(project, entry, items, log=quiet)
    image = blobs(9)[0]
    grid = build_point_grid(4) * 64  # the auto stage's kind of prompt: single grid points, three outputs each

    def outputs(spec):
        predictor = SamPredictor(load_model(spec))
        predictor.set_image(image)
        masks, scores, _ = predictor.predict_many(grid[:, None], np.ones((len(grid), 1), int), return_logits=True)
        return masks, scores

    base_masks, base_scores = outputs(tiny_model)
    for folder in folders:
        masks, scores = outputs(str(folder))
        assert np.abs(masks - base_masks).max() > 1e-3  # the fine-tune changed the masks
        np.testing.assert_allclose(scores, base_scores, rtol=0, atol=1e-5)


def test_semi_decisions_and_the_confirm_action(tmp_path):
    from grounded.annotate.store import AnnotationStore, ImageRecord
    from grounded.engine.annotator import semi_decisions
    from grounded.rle import compress_rle, encode_rle

    _, truths = blobs(0, n=3)
    shifted = np.roll(truths[1], 3, axis=1)  # a poor match: corrected
    stray = np.zeros_like(truths[0])
    stray[50:60, 50:60] = True  # nothing there: deleted
    prefilled = [{"id": i + 1, "segmentation": compress_rle(encode_rle(m)), "label": "object", "prefill": True,
                  "bbox": [0, 0, 1, 1], "score": 0.95} for i, m in enumerate([truths[0], shifted, stray])]
    plan = semi_decisions(prefilled, truths)
    assert plan == {"accept": [1], "correct": {2: 1}, "delete": [3], "add": [2]}

    store = AnnotationStore(tmp_path, [ImageRecord("a", tmp_path / "a.png", "a.png", 64, 64, 1)], {"a": prefilled})
    version = store.confirm("a", 0, 1, seconds=1.5)["version"]
    state = store.get("a")
    assert [a.get("prefill", False) for a in state["annotations"]] == [False, True, True]
    (line,) = [json.loads(t) for t in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert line["confirmed"] and line["num_clicks"] == 0 and line["annotation_id"] == 1 and line["seconds"] == 1.5
    with pytest.raises(ValueError, match="not a pre-filled mask"):
        store.confirm("a", version, 1)
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert len(coco["annotations"]) == 3


def test_the_page_session_reexports_graphs_when_the_model_changes(data, tiny_model):
    import onnx
    from onnx import numpy_helper

    from grounded.engine import stages
    from grounded.sam import from_pretrained
    from grounded.sam.build import save_pretrained

    new_project(data, tiny_model)
    with Project.open(data / "proj") as project:
        entry = start_round(project, "manual", take=1)
        model = stages.load_model(project.model_spec())
        first = stages.page_session(project, entry, model)
        assert first.stage == "manual" and [r.file_name for r in first.images] == ["a.png"]
        again = stages.page_session(project, entry, stages.load_model(project.model_spec()))
        assert again.model_dir == first.model_dir  # the same weights: the same graphs, not exported twice
        tuned = from_pretrained(tiny_model)
        with __import__("torch").no_grad():
            tuned.mask_decoder.iou_prediction_head.layers[-1].bias += 1.0  # as a fine-tuned decoder would differ
        save_pretrained(tuned, data / "proj" / "models" / "v001")
        project.state["model"]["current"] = "models/v001"
        second = stages.page_session(project, entry, stages.load_model(project.model_spec()))
    assert second.model_dir != first.model_dir

    def bias_in(folder):
        graph = onnx.load(str(folder / "decoder.onnx")).graph
        values = [numpy_helper.to_array(t) for t in graph.initializer]
        want = tuned.mask_decoder.iou_prediction_head.layers[-1].bias.detach().numpy()
        return any(v.shape == want.shape and np.allclose(v, want) for v in values)

    assert bias_in(second.model_dir) and not bias_in(first.model_dir)


def test_cli_init_status_and_bad_input(data, tiny_model, capsys):
    from grounded.cli import main

    assert main(["engine", "init", str(data / "images"), "--out", str(data / "proj"), "--coco", str(data / "heldout.json"),
                 "--heldout", "e.png", "--model", tiny_model, "--seeds", "0,1,2", "--steps", "1"]) == 0
    assert "4 unlabelled" in capsys.readouterr().out
    assert main(["engine", "round", str(data / "proj")]) == 1
    assert "name a new round's --stage" in capsys.readouterr().err
    with Project.open(data / "proj") as project:
        start_round(project, "manual", take=1)  # a page round left at labelling
    assert main(["engine", "status", str(data / "proj")]) == 0
    out = capsys.readouterr().out
    assert "round 1 manual: labelling" in out and "unfinished" in out
    assert main(["engine", "round", str(data / "proj"), "--stage", "semi"]) == 1
    assert "round 1 (manual) is unfinished" in capsys.readouterr().err
    assert main(["engine", "init", str(data / "images"), "--out", str(data / "p2"), "--seeds", "0,1"]) == 1
    assert "at least 3 fine-tuning seeds" in capsys.readouterr().err
    shutil.rmtree(data / "proj")


def test_a_killed_round_resumes_where_it_stopped(data, tiny_model, capsys):
    """`grounded engine round` killed (SIGKILL) during fine-tuning: the lock is free again, and the same
    command resumes the training from its checkpoint and finishes the round."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from grounded.cli import main

    new_project(data, tiny_model, steps=80)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-m", "grounded", "engine", "round", str(data / "proj"), "--stage", "manual",
                              "--take", "1", "--truth", str(data / "truth.json")], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoints = data / "proj" / "rounds" / "001-manual" / "train" / "seed_0" / "checkpoints"
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("step_*.pt")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition: the first checkpoint of the first seed
        assert child.poll() is None, "the round ended before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    state = json.loads((data / "proj" / "project.json").read_text())
    assert state["rounds"][0]["status"] == "training"
    assert main(["engine", "round", str(data / "proj")]) == 0
    out = capsys.readouterr().out
    assert "resuming round 1 (manual) at training" in out and "seed 0: resumed at step" in out
    state = json.loads((data / "proj" / "project.json").read_text())
    assert state["rounds"][0]["status"] == "done" and state["rounds"][0]["masks"] == 3
    assert len(list((data / "proj" / "rounds" / "001-manual" / "train").glob("seed_*/final/model.safetensors"))) == 3


def test_a_sam2_model_runs_every_stage_fine_tunes_and_serves_the_page(data, tmp_path, monkeypatch):
    """The engine with a SAM 2.1 model in force: manual and semi rounds by the simulated annotator, its
    fine-tune kept and then in force (a grounded.sam2 folder), an auto round, and the page's SAM 2 graphs."""
    import torch

    from grounded.engine import stages
    from grounded.sam2 import Sam2, Sam2Config, SAM2ImagePredictor, build_sam2, save_pretrained
    from sam2_reference import TINY_HIERA

    torch.manual_seed(0)
    folder = str(save_pretrained(build_sam2(Sam2Config(**TINY_HIERA, image_size=256)), tmp_path / "sam2"))

    def better(project, out, models, log=print):
        return {label: {"iou": np.full(30, 0.5 if label == "current" else 0.9) + 0.01 * np.arange(30) / 30,
                        "noc90": np.full(30, 5.0 if label == "current" else 2.0), "ar100": np.full(30, 0.4)}
                for label in models}

    truth = json.loads((data / "truth.json").read_text())
    given = dict(truth, annotations=[a for a in truth["annotations"] if a["image_id"] >= 4])  # d.png and e.png
    (data / "given.json").write_text(json.dumps(given))
    init_project(data / "images", data / "proj", coco=str(data / "given.json"), heldout=["e.png"], model=folder,
                 train={"steps": 2, "clicks": 3, "bootstrap": 200},
                 stage_settings={"semi": {"points_per_side": 4}, "auto": {"points_per_side": 4}})
    monkeypatch.setattr(finetune, "evaluate_models", better)
    with Project.open(data / "proj") as project:
        entry = start_round(project, "manual", images=["a.png"])
        run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
        assert entry["status"] == "done" and entry["decision"]["accepted"]
        assert project.state["model"]["current"] == "models/v001"
        tuned = stages.load_model(project.model_spec())
        assert isinstance(tuned, Sam2)
        seed = stages.load_model(str(data / "proj" / "rounds" / "001-manual" / "train" / "seed_0" / "final"))
        before = stages.load_model(folder)
        assert all(torch.equal(a, b) for a, b in zip(tuned.image_encoder.state_dict().values(),
                                                     before.image_encoder.state_dict().values()))  # frozen
        assert any(not torch.equal(a, b) for a, b in zip(tuned.sam_mask_decoder.state_dict().values(),
                                                         before.sam_mask_decoder.state_dict().values()))
        assert isinstance(stages.segmenter_for(tuned).predictor, SAM2ImagePredictor)
        assert len(tuned.state_dict()) == len(seed.state_dict())

        entry = start_round(project, "semi", images=["b.png"], finetune=False)
        session = stages.page_session(project, entry, tuned)  # the page on this round, its pre-fill made once
        run_round(project, entry, truth=str(data / "truth.json"), log=quiet)
        assert entry["status"] == "done" and entry["model"].endswith("models/v001")
        assert (data / "proj" / "rounds" / "002-semi" / "prefill.json").exists()
        assert len(json.loads(project.latest_dataset().read_text())["annotations"]) == 9  # d.png's given, a and b

        entry = start_round(project, "auto", images=["c.png"])
        run_round(project, entry, log=quiet)
        assert entry["status"] == "done" and entry["labelled"] == ["c.png"]
    manifest = json.loads((session.model_dir / "manifest.json").read_text())
    assert manifest["family"] == "sam2" and session.family == "sam2"
