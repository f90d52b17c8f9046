"""The engine's text-grounded pre-fill (`grounded engine round --stage semi --prefill text --categories`)
on tiny random models saved locally: a Grounding DINO + the round's SAM, or a SAM 3 model in force.
The pre-filled masks equal what the detector + SAM path (or SAM 3) gives directly for the same images
and phrases after the same thresholds, are kept as `prefill` masks labelled by category, survive a
killed and resumed round, and the simulated annotator finishes the round; bad option sets are refused."""

import json

import numpy as np
import pytest

from grounded.cli import main
from grounded.engine import Project, init_project

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORIES = ["nucleus", "cell"]
NAMES = ["a.png", "b.png", "c.png"]


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    from grounded.sam.build import save_pretrained
    from grounded.testing import tiny_sam

    # Seed 7's random decoder gives masks that are neither empty nor full (seed 0's are all empty).
    return str(save_pretrained(tiny_sam("vit", seed=7), tmp_path_factory.mktemp("tiny") / "sam"))


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    from grounded.testing.dino import tiny_hf

    # A narrow Swin (the real-sized Swin-T takes seconds to build): only the wiring is under test.
    swin = dict(model_type="swin", window_size=7, image_size=224, embed_dim=16, depths=[1, 1, 1, 1],
                num_heads=[1, 1, 1, 1], out_indices=[2, 3, 4])
    return str(tiny_hf(tmp_path_factory.mktemp("gdino") / "gdino", seed=1, backbone_config=swin))


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    from grounded.testing.sam3 import tiny_sam3

    return str(tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3"))


def blobs(seed, size=64):
    """An image with three bright discs and their masks."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 20, np.uint8)
    masks = []
    for k in range(3):
        m = (yy - 12 - 20 * k) ** 2 + (xx - 12 - 18 * ((k + seed) % 3)) ** 2 <= (5 + (seed + k) % 3) ** 2
        image[m] = 200 - 40 * k
        masks.append(m)
    return image, np.stack(masks)


@pytest.fixture()
def data(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(blobs(i)[0]).save(tmp_path / "images" / name)
    return tmp_path


def load(path):
    from grounded.io.image import load_image

    return load_image(path)


def between(values):
    """A threshold with some values below it and some at or above it (the middle of the widest gap
    near the median), so that a test of the threshold keeps some masks and drops some."""
    ordered = np.unique(np.asarray(values, np.float64))
    assert len(ordered) >= 2, f"the random models gave one score only ({ordered}): the threshold would prove nothing"
    mid = len(ordered) // 2
    return float((ordered[mid - 1] + ordered[mid]) / 2)


def write_truth(path, truths):
    """A COCO file from {file name: N x H x W masks}."""
    from grounded.eval.masks import encode

    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for i, (name, masks) in enumerate(truths.items()):
        coco["images"].append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
        for rle in encode(masks):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                                        "segmentation": rle, "iscrowd": 0})
    path.write_text(json.dumps(coco))
    return str(path)


def detector_sam_directly(data, detector_dir, sam_dir, box_threshold, size):
    """Per image: every category's boxes from Grounding DINO, each box prompted to SAM (one mask, its
    predicted IoU), before the IoU threshold: [(category, mask, predicted IoU, detector score)]."""
    from grounded.detect import load_detector
    from grounded.sam import SamPredictor, from_pretrained

    detector = load_detector(detector_dir, size=size)
    predictor = SamPredictor(from_pretrained(sam_dir, image_encoder_backend="torch"))
    found = {}
    for name in NAMES:
        image = load(data / "images" / name)
        predictor.set_image(image)
        found[name] = []
        for category in CATEGORIES:
            dets = detector.detect([image], category, box_threshold=box_threshold, text_threshold=0.25)[0]
            if not len(dets):
                continue
            boxes = np.clip(dets.xyxy, 0, [64, 64, 64, 64])
            masks, ious, _ = predictor.predict_many(boxes=boxes, multimask_output=False)
            found[name] += [(category, masks[i, 0], float(ious[i, 0]), float(dets.scores[i])) for i in range(len(dets))]
    return found


def prefill_file(data, round_name):
    return json.loads((data / "proj" / "rounds" / round_name / "prefill.json").read_text())


def assert_prefill_equals(records, expected, by_score):
    from grounded.rle import decode_rle

    assert [r["label"] for r in records] == [e[0] for e in expected]
    assert all(r["prefill"] for r in records)
    for r, (_, mask, score, detector_score) in zip(records, expected):
        assert np.array_equal(decode_rle(r["segmentation"]), mask)
        assert r["score"] == pytest.approx(score, abs=1e-6)
        assert r["detector_score"] == pytest.approx(detector_score if by_score == "detector" else score, abs=1e-6)


def stop_after_first_image(monkeypatch):
    """The pre-fill dies on its second image (as a killed round would); returns the images it pre-filled."""
    from grounded.engine import text_prefill

    made = text_prefill.text_proposer
    seen = []

    def proposer(*args, **kwargs):
        propose = made(*args, **kwargs)

        def counted(image):
            if len(seen) == 1:
                raise RuntimeError("killed")
            seen.append(image.shape)
            return propose(image)

        return counted

    monkeypatch.setattr(text_prefill, "text_proposer", proposer)
    return seen


def test_detector_and_sam_prefill_equals_the_direct_path_resumes_and_is_reviewed(data, sam_dir, detector_dir,
                                                                                   monkeypatch, capsys):
    from grounded.engine import stages, text_prefill

    box_threshold = 0.97  # random weights score most queries above 0.9
    found = detector_sam_directly(data, detector_dir, sam_dir, box_threshold, size=160)
    iou_threshold = between([f[2] for v in found.values() for f in v])
    expected = {n: [f for f in v if f[2] >= iou_threshold] for n, v in found.items()}
    kept = sum(len(v) for v in expected.values())
    assert 0 < kept < sum(len(v) for v in found.values())  # the threshold keeps some masks and drops some
    assert {f[0] for v in expected.values() for f in v} == set(CATEGORIES)
    # The ground truth: the kept masks, so that the annotator accepts each (an image with none: a disc,
    # clicked from scratch).
    truths = {n: np.stack([f[1] for f in expected[n] if f[1].any()] or [blobs(i)[1][0]]) for i, n in enumerate(NAMES)}
    truth = write_truth(data / "truth.json", truths)
    init_project(data / "images", data / "proj", model=sam_dir)
    command = ["engine", "round", str(data / "proj"), "--stage", "semi", "--prefill", "text", "--categories",
               ",".join(CATEGORIES), "--detector", detector_dir, "--detector-size", "160", "--box-threshold",
               str(box_threshold), "--prefill-iou", repr(iou_threshold), "--truth", truth, "--no-finetune"]

    seen = stop_after_first_image(monkeypatch)
    assert main(command) == 1
    assert "killed" in capsys.readouterr().err
    entry = json.loads((data / "proj" / "project.json").read_text())["rounds"][0]
    assert entry["status"] == "labelling" and entry["prefill"] == {
        "source": "text", "segmenter": "detector+sam", "categories": CATEGORIES, "detector": detector_dir,
        "box_threshold": box_threshold, "text_threshold": 0.25, "pred_iou_thresh": iou_threshold, "detector_size": 160}
    first = prefill_file(data, "001-semi")
    assert list(first) == ["a.png"] and len(seen) == 1
    assert_prefill_equals(first["a.png"], expected["a.png"], "detector")
    # The page's store shows them apart: pre-filled, labelled by category.
    with Project.open(data / "proj") as project:
        store = stages.open_store(project, project.rounds[0], first)
        shown = store.get("a.png")["annotations"]
    assert [(a["label"], a["prefill"]) for a in shown] == [(e[0], True) for e in expected["a.png"]]

    # Resumed with the same command minus the options (the setting comes from project.json): the
    # pre-fill goes on from the second image, the first one's masks kept as they were.
    assert main(["engine", "round", str(data / "proj"), "--categories", "cell"]) == 1
    assert "round 1 (semi) resumes with the pre-fill it began with (text)" in capsys.readouterr().err
    monkeypatch.undo()
    original = text_prefill.text_proposer
    calls = []

    def counting(*args, **kwargs):
        propose = original(*args, **kwargs)
        return lambda image: calls.append(image.shape) or propose(image)

    monkeypatch.setattr(text_prefill, "text_proposer", counting)
    assert main(["engine", "round", str(data / "proj"), "--truth", truth]) == 0
    out = capsys.readouterr().out
    assert "resuming round 1 (semi) at labelling" in out and len(calls) == 2
    done = prefill_file(data, "001-semi")
    assert done["a.png"] == first["a.png"]
    for name in NAMES:
        assert_prefill_equals(done[name], expected[name], "detector")
    assert [a["id"] for v in done.values() for a in v] == list(range(1, kept + 1))

    # The simulated annotator reviewed every pre-filled mask: each non-empty one matches its truth
    # exactly and is accepted as it is, keeping its category; the discs are added by clicks.
    state = json.loads((data / "proj" / "project.json").read_text())
    entry = state["rounds"][0]
    assert entry["status"] == "done" and sorted(entry["labelled"]) == NAMES and entry["prefilled"] == kept
    assert entry["unreviewed_prefill"] == 0
    log = [json.loads(line) for line in (data / "proj" / "rounds" / "001-semi" / "labels" / "log.jsonl").open()]
    nonempty = [f for v in expected.values() for f in v if f[1].any()]
    assert sorted(r["label"] for r in log if r.get("confirmed")) == sorted(f[0] for f in nonempty)
    dataset = json.loads((data / "proj" / "datasets" / "v001.json").read_text())
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    labels = [names[a["category_id"]] for a in dataset["annotations"]]
    assert sorted(lab for lab in labels if lab in CATEGORIES) == sorted(f[0] for f in nonempty)
    assert len(labels) == entry["masks"] == sum(len(v) for v in truths.values())
    report = (data / "proj" / "report.md").read_text()
    assert f"pre-filled {kept} confident masks of the categories nucleus, cell ({detector_dir} + SAM)" in report


def test_sam3_in_force_prefills_its_concepts(data, sam3_dir, capsys):
    from grounded.engine.stages import load_model
    from grounded.text_to_mask import segment_text

    sam3 = load_model(sam3_dir)
    phrases = ["cat", "a dog"]
    found = {}
    for name in NAMES:
        image = load(data / "images" / name)
        found[name] = [(p, d.mask[0], float(d.scores[0]), float(d.scores[0])) for p in phrases
                       for d in segment_text(image, p, mode="sam3", sam3=sam3, sam3_threshold=0.0)]
    threshold = between([f[2] for v in found.values() for f in v])
    expected = {n: [f for f in v if f[2] >= threshold] for n, v in found.items()}
    assert 0 < sum(len(v) for v in expected.values()) < sum(len(v) for v in found.values())
    truths = {n: np.concatenate([np.stack([f[1] for f in expected[n] if f[1].any()] or [blobs(i)[1][0]]),
                                 blobs(i)[1]]) for i, n in enumerate(NAMES)}
    truth = write_truth(data / "truth.json", truths)
    init_project(data / "images", data / "proj", model=sam3_dir)
    base = ["engine", "round", str(data / "proj"), "--stage", "semi", "--truth", truth]
    # SAM 3 makes no automatic masks, segments phrases without a detector, and is not fine-tuned.
    assert main(base + ["--no-finetune"]) == 1
    assert "is SAM 3, which makes no automatic masks" in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", "cat", "--detector", "x/y", "--no-finetune"]) == 1
    assert "--detector are for a detector + SAM" in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", "cat"]) == 1
    assert "run manual and semi rounds with --no-finetune" in capsys.readouterr().err
    assert json.loads((data / "proj" / "project.json").read_text())["rounds"] == []

    assert main(base + ["--prefill", "text", "--categories", ",".join(phrases), "--sam3-threshold", repr(threshold),
                        "--no-finetune"]) == 0
    entry = json.loads((data / "proj" / "project.json").read_text())["rounds"][0]
    assert entry["prefill"] == {"source": "text", "segmenter": "sam3", "categories": phrases, "sam3_threshold": threshold}
    done = prefill_file(data, "001-semi")
    for name in NAMES:
        assert_prefill_equals(done[name], expected[name], "sam3")
    assert entry["status"] == "done" and sorted(entry["labelled"]) == NAMES and entry["unreviewed_prefill"] == 0
    log = [json.loads(line) for line in (data / "proj" / "rounds" / "001-semi" / "labels" / "log.jsonl").open()]
    nonempty = [f for v in expected.values() for f in v if f[1].any()]
    assert sorted(r["label"] for r in log if r.get("confirmed")) == sorted(f[0] for f in nonempty)
    assert any(r["simulated"] and r["num_clicks"] > 0 for r in log if not r.get("confirmed"))  # SAM 3's tracker clicked


def test_bad_option_sets_are_refused_before_a_round_begins(data, sam_dir, capsys):
    init_project(data / "images", data / "proj", model=sam_dir)
    base = ["engine", "round", str(data / "proj"), "--stage", "semi"]
    assert main(base + ["--prefill", "text"]) == 1
    assert '--prefill text needs --categories, the named categories to pre-fill (e.g. --categories "nucleus,cell")' \
        in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", " , "]) == 1
    assert "--prefill text needs --categories" in capsys.readouterr().err
    for extra in (["--prefill", "auto", "--categories", "cell"], ["--categories", "cell"]):
        assert main(base + extra) == 1
        assert "the automatic pre-fill (--prefill auto, the default) takes none: add --prefill text" in capsys.readouterr().err
    assert main(base + ["--box-threshold", "0.2"]) == 1
    assert "--box-threshold set the text pre-fill" in capsys.readouterr().err
    assert main(["engine", "round", str(data / "proj"), "--stage", "manual", "--prefill", "text", "--categories", "cell"]) == 1
    assert "are for semi rounds, not manual" in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", "cell,cell"]) == 1
    assert "names ['cell'] more than once" in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", "cell", "--prefill-iou", "1.5"]) == 1
    assert "--prefill-iou must be between 0 and 1, got 1.5" in capsys.readouterr().err
    assert main(base + ["--prefill", "text", "--categories", "cell", "--detector-size", "0"]) == 1
    assert "--detector-size must be a positive number of pixels, got 0" in capsys.readouterr().err
    # The hub is offline (tests run with HF_HUB_OFFLINE=1) and no cache holds the detector: the
    # loader's own error, naming what it tried.
    assert main(base + ["--prefill", "text", "--categories", "cell", "--detector", "grounded-missing/grounding-dino-tiny"]) == 1
    err = capsys.readouterr().err
    assert "Grounding DINO model 'grounded-missing/grounding-dino-tiny' not found. Tried:" in err
    assert "offline" in err and "local folder" in err
    assert json.loads((data / "proj" / "project.json").read_text())["rounds"] == []  # nothing begun
