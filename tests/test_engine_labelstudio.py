"""Label Studio interchange: grounded's brush RLE against label_studio_converter/brush.py from
label-studio-converter 0.0.59 (loaded by file path from the wheel bin/env keeps,
sha256-verified, in the environment), and a project's round exported as tasks and imported back
with no mask or label lost."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from grounded.engine.labelstudio import decode_brush, encode_brush
from reference import module_from_reference_wheel

WHEEL = Path(sys.prefix) / "reference-wheels" / "label_studio_converter-0.0.59-py3-none-any.whl"
WHEEL_SHA256 = "886b4ec3e8347cdef114f10a796ffee9699832fc811e8f8296664d65afcad5b2"


@pytest.fixture(scope="module")
def brush(tmp_path_factory):
    return module_from_reference_wheel(WHEEL.name, "label_studio_converter/brush.py",
                                       tmp_path_factory.mktemp("label_studio_converter"), WHEEL_SHA256)


def masks(seed=0):
    rng = np.random.default_rng(seed)
    out = [np.zeros((17, 23), bool), np.ones((9, 5), bool)]  # empty, full
    yy, xx = np.mgrid[:61, :90]
    out.append((yy - 30) ** 2 + (xx - 40) ** 2 < 400)  # runs of every size class
    out.append(rng.random((40, 33)) > 0.5)  # many runs of one pixel (4 values)
    wide = np.zeros((300, 300), bool)
    wide[5:295, 3:297] = True  # runs longer than 2**16 values
    big = np.zeros((140, 140), bool)
    big[1:, :] = True  # one run of 78,400 values: the 2**16 split
    return out + [wide, big]


def test_brush_rle_equals_label_studio_converter(brush):
    for mask in masks():
        ours = encode_brush(mask)
        theirs = brush.mask2rle(mask.astype(np.uint8) * 255)
        assert ours == theirs, mask.shape
        decoded = brush.decode_rle(ours).reshape(mask.shape[0], mask.shape[1], 4)[:, :, 3]
        np.testing.assert_array_equal(decoded > 0, mask)
        np.testing.assert_array_equal(decode_brush(theirs, *mask.shape), mask)


def test_brush_decoding_reads_literal_runs_and_refuses_bad_sizes(brush):
    # brush.encode_rle writes runs of length 1 as literal values, as Label Studio's editor may
    values = np.array([0, 255, 0, 0, 255, 255, 255, 255], np.int64)
    stream = brush.encode_rle(values)
    np.testing.assert_array_equal(decode_brush(stream, 1, 2), [[False, True]])
    with pytest.raises(ValueError, match="a 3x1 RGBA image"):
        decode_brush(stream, 1, 3)


def a_labelled_round(tmp_path):
    """A project of two 40x50 images whose round 1 accepted a cat and a dog on a.png and a dog on b.png
    (dataset v001 holds them); returns (cat, dog)."""
    from PIL import Image

    from grounded.annotate.store import AnnotationStore
    from grounded.engine import init_project
    from grounded.engine.rounds import write_dataset
    from grounded.engine.stages import round_records

    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "images" / name)
    project = init_project(tmp_path / "images", tmp_path / "proj", model="unused")
    entry = {"index": 1, "stage": "manual", "images": ["a.png", "b.png"], "status": "done", "model": "unused"}
    project.rounds.append(entry)
    store = AnnotationStore(project.round_dir(entry) / "labels", round_records(project, ["a.png", "b.png"]))
    for record in store.images:
        record.height, record.width = 40, 50
    cat = np.zeros((40, 50), bool)
    cat[5:20, 10:30] = True
    dog = np.zeros((40, 50), bool)
    dog[22:38, 2:45] = True
    v = store.add("a.png", 0, cat, "cat", 0.9, {})["version"]
    store.add("a.png", v, dog, "dog", 0.8, {})
    store.add("b.png", 0, dog, "dog", 0.7, {})
    write_dataset(project, entry)
    project.save()
    return cat, dog


def dataset_masks(path):
    """A dataset version -> sorted (file name, label, mask bytes), and its images' sizes by file name."""
    from grounded.rle import decode_rle

    coco = json.loads(Path(path).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    masks = sorted((files[a["image_id"]], names[a["category_id"]], decode_rle(a["segmentation"]).tobytes())
                   for a in coco["annotations"])
    return masks, {im["file_name"]: (im["height"], im["width"]) for im in coco["images"]}


def test_a_round_exported_as_tasks_and_imported_back_loses_nothing(tmp_path, brush):
    from grounded.engine import Project
    from grounded.engine.labelstudio import export_tasks, import_tasks

    cat, dog = a_labelled_round(tmp_path)
    out = tmp_path / "tasks.json"
    assert export_tasks(Project.open(tmp_path / "proj"), out, round_index=1) == 2
    tasks = json.loads(out.read_text())
    assert "<BrushLabels" in (tmp_path / "tasks.json.config.xml").read_text()
    # the pre-annotations decode with Label Studio's own converter
    first = tasks[0]["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in first] == [["cat"], ["dog"]]
    layers = brush.decode_from_annotation("tag", [dict(r, **r["value"]) for r in first])
    np.testing.assert_array_equal(layers["tag-cat-0"] > 0, cat)
    np.testing.assert_array_equal(layers["tag-dog-0"] > 0, dog)

    # a reviewer keeps the cat, relabels the dog "wolf" (a.png) and does not open b.png
    review = dict(first[1], value=dict(first[1]["value"], brushlabels=["wolf"]))
    tasks[0]["annotations"] = [{"id": 7, "was_cancelled": False, "result": [first[0], review]}]
    reviewed = tmp_path / "reviewed.json"
    reviewed.write_text(json.dumps(tasks))
    with Project.open(tmp_path / "proj") as project:
        path, count = import_tasks(project, reviewed)
        entry = project.rounds[-1]
        assert count == 2 and entry["stage"] == "review" and entry["status"] == "done"
        assert entry["images"] == ["a.png"] and entry["not_reviewed"] == 1
    got, _ = dataset_masks(path)
    assert got == sorted([("a.png", "cat", cat.tobytes()), ("a.png", "wolf", dog.tobytes()), ("b.png", "dog", dog.tobytes())])
    with pytest.raises(ValueError, match="grounded_file_name"):
        import_tasks(Project.open(tmp_path / "proj"), _write(tmp_path / "bad.json", [{"data": {"image": "x"}}]))


def test_an_image_reviewed_empty_loses_its_masks_and_one_not_reviewed_keeps_them(tmp_path):
    """An annotation that exists and holds no mask means "reviewed, nothing there": the image's earlier
    masks go. No annotation (or only a skipped one) means "not reviewed": its masks stay, and its
    pre-annotations are not accepted."""
    from grounded.engine import Project
    from grounded.engine.labelstudio import export_tasks, import_tasks

    cat, dog = a_labelled_round(tmp_path)
    out = tmp_path / "tasks.json"
    export_tasks(Project.open(tmp_path / "proj"), out, round_index=1)
    tasks = json.loads(out.read_text())
    # a reviewer skips b.png, then a later pass deletes every mask of a.png; Label Studio's JSON export
    # lists a task's predictions by id (tests/test_engine_labelstudio_server.py), so they are never read
    tasks[1]["annotations"] = [{"id": 3, "was_cancelled": True, "result": []}]
    tasks[1]["predictions"] = [17]
    with pytest.raises(ValueError, match="nothing was reviewed"):
        import_tasks(Project.open(tmp_path / "proj"), _write(tmp_path / "skipped.json", tasks))
    assert len(Project.open(tmp_path / "proj").rounds) == 1  # the refused import left no round behind
    tasks[0]["annotations"] = [{"id": 1, "was_cancelled": False, "result": tasks[0]["predictions"][0]["result"],
                                "updated_at": "2026-01-01T10:00:00Z"},
                               {"id": 2, "was_cancelled": False, "result": [], "updated_at": "2026-01-02T10:00:00Z"}]
    with Project.open(tmp_path / "proj") as project:
        path, count = import_tasks(project, _write(tmp_path / "emptied.json", tasks))
        assert count == 0 and project.rounds[-1]["images"] == ["a.png"]
    got, sizes = dataset_masks(path)
    assert got == [("b.png", "dog", dog.tobytes())]
    assert sizes["a.png"] == (40, 50)  # still listed, at its size, with no masks

    # the next round of review puts a mask back on a.png: it arrives
    tasks[0]["annotations"].append({"id": 4, "was_cancelled": False, "result": [tasks[0]["predictions"][0]["result"][0]],
                                    "updated_at": "2026-01-03T10:00:00Z"})
    with Project.open(tmp_path / "proj") as project:
        path, count = import_tasks(project, _write(tmp_path / "again.json", tasks))
    assert count == 1 and dataset_masks(path)[0] == sorted([("a.png", "cat", cat.tobytes()), ("b.png", "dog", dog.tobytes())])


def test_a_killed_import_resumes_without_doubling_and_duplicate_tasks_are_refused(tmp_path, monkeypatch):
    from grounded.annotate.store import AnnotationStore
    from grounded.engine import Project, run_round
    from grounded.engine.labelstudio import export_tasks, import_tasks

    cat, dog = a_labelled_round(tmp_path)
    out = tmp_path / "tasks.json"
    export_tasks(Project.open(tmp_path / "proj"), out, round_index=1)
    tasks = json.loads(out.read_text())
    first = tasks[0]["predictions"][0]["result"]
    wolf = dict(first[1], value=dict(first[1]["value"], brushlabels=["wolf"]))
    tasks[0]["annotations"] = [{"id": 1, "was_cancelled": False, "result": [first[0], wolf]}]
    tasks[1]["annotations"] = [{"id": 2, "was_cancelled": False, "result": tasks[1]["predictions"][0]["result"]}]
    reviewed = _write(tmp_path / "reviewed.json", tasks)
    with pytest.raises(ValueError, match=r"\['a.png'\] in more than one task"):
        import_tasks(Project.open(tmp_path / "proj"), _write(tmp_path / "twice.json", tasks + tasks[:1]))

    add_many, calls = AnnotationStore.add_many, []

    def killed_at_the_second_write(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # a.png's cat is saved, its wolf not yet
            raise KeyboardInterrupt("killed during the import")
        return add_many(self, *args, **kwargs)

    monkeypatch.setattr(AnnotationStore, "add_many", killed_at_the_second_write)
    with pytest.raises(KeyboardInterrupt), Project.open(tmp_path / "proj") as project:
        import_tasks(project, reviewed)
    monkeypatch.setattr(AnnotationStore, "add_many", add_many)
    with Project.open(tmp_path / "proj") as project:
        entry = project.unfinished()
        assert entry["stage"] == "review" and entry["imported"] == []
        with pytest.raises(ValueError, match="import-ls .* again to finish it"):
            run_round(project, entry)
        with pytest.raises(ValueError, match="round 2 is unfinished"):
            import_tasks(project, _write(tmp_path / "other.json", tasks))
        path, count = import_tasks(project, reviewed)
        assert count == 3 and project.rounds[-1]["status"] == "done" and len(project.rounds) == 2
    got, _ = dataset_masks(path)
    assert got == sorted([("a.png", "cat", cat.tobytes()), ("a.png", "wolf", dog.tobytes()), ("b.png", "dog", dog.tobytes())])


def _write(path, value):
    path.write_text(json.dumps(value))
    return path
