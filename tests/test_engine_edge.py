"""The data engine on the input a demanding user gives it (issue: bug hunt on `grounded engine`): odd
file names, broken images among good ones, COCO files that do not fit their images, hand-edited
project files, Label Studio reviews that do not fit the project. Each test failed before its fix."""

import json

import numpy as np
import pytest
from PIL import Image

from grounded.engine import Project, ProjectError, init_project, run_round, start_round


def disc(size=(40, 50), centre=(20, 25), radius=8):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def folder_of(tmp_path, names, size=(40, 50)):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names:
        image = np.full(size + (3,), 20, np.uint8)
        image[disc(size)] = 200
        Image.fromarray(image).save(folder / name)
    return folder


def one_line_error(capsys, argv) -> str:
    """`grounded ARGV` fails with one line on stderr (no traceback); returns it."""
    from grounded.cli import main

    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_images_whose_names_differ_only_in_odd_characters_keep_their_own_labels(tmp_path):
    """Two names in a non-Latin script, or "x?y.png" beside "x_y.png", made one label file: the second
    image's review overwrote the first's, and the dataset gave both images the same masks."""
    from grounded.engine.labelstudio import brush_result, import_tasks
    from grounded.rle import decode_rle

    names = ["猫.png", "犬.png", "x?y.png", "x_y.png"]
    folder_of(tmp_path, names)
    init_project(tmp_path / "images", tmp_path / "proj", model="unused")
    masks = {name: disc(centre=(10 + 5 * k, 10 + 8 * k), radius=4 + k) for k, name in enumerate(names)}
    tasks = [{"id": k + 1, "data": {"grounded_file_name": name},
              "annotations": [{"id": k + 1, "result": [brush_result(masks[name], f"label{k}", 0)]}]}
             for k, name in enumerate(names)]
    (tmp_path / "reviewed.json").write_text(json.dumps(tasks))
    with Project.open(tmp_path / "proj") as project:
        path, count = import_tasks(project, tmp_path / "reviewed.json")
    assert count == 4
    coco = json.loads(path.read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    got = {}
    for a in coco["annotations"]:
        got.setdefault(files[a["image_id"]], []).append(decode_rle(a["segmentation"]))
    assert sorted(got) == sorted(names)
    for name in names:
        assert len(got[name]) == 1 and np.array_equal(got[name][0], masks[name]), name


def test_a_coco_file_that_does_not_fit_its_images_is_refused_naming_the_problem(tmp_path, capsys):
    """Sizes that disagree with the files went into dataset v000 as they were (masks of another size
    than their image); a malformed COCO file gave a KeyError or TypeError traceback; crowd regions
    became objects to train on; two entries of one file doubled its masks."""
    from grounded.eval.masks import encode

    folder_of(tmp_path, ["a.png", "b.png"])
    rle = encode(disc()[None])[0]
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]

    def init_with(name, images, annotations, *extra):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "blob"}]}))
        return ["engine", "init", tmp_path / "images", "--out", tmp_path / name, "--model", "unused", "--coco", path, *extra]

    a = {"id": 1, "file_name": "a.png", "height": 40, "width": 50}
    err = one_line_error(capsys, init_with("bigger", [dict(a, height=100, width=80)],
                                           [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square}]))
    assert "'a.png' is 80x100 there, but the file is 50x40" in err
    small = encode(np.zeros((1, 30, 30), bool))[0]
    err = one_line_error(capsys, init_with("small", [a], [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": small}]))
    assert "annotation 1 of a.png is a 30x30 mask on a 50x40 image" in err
    err = one_line_error(capsys, init_with("boxes", [a], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]))
    assert "annotation 1 of a.png has no segmentation" in err
    err = one_line_error(capsys, init_with("twice", [a, dict(a, id=2, file_name="val/a.png")], []))
    assert "images 'a.png' and 'val/a.png' are both a.png" in err
    path = tmp_path / "dict.json"
    path.write_text(json.dumps({"images": {"a.png": 1}, "annotations": []}))
    assert "not a COCO file" in one_line_error(capsys, ["engine", "init", tmp_path / "images", "--out", tmp_path / "d",
                                                        "--coco", path])

    # no height and width: the file's; a crowd region is no object (nor a held-out one)
    argv = init_with("crowd", [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                     [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 1},
                      {"id": 2, "image_id": 1, "category_id": 1, "segmentation": square, "iscrowd": 0},
                      {"id": 3, "image_id": 2, "category_id": 1, "segmentation": rle, "iscrowd": 1}])
    assert "b.png'] have none" in one_line_error(capsys, argv + ["--heldout", "b.png"])
    from grounded.cli import main

    assert main([str(x) for x in argv]) == 0
    v000 = json.loads((tmp_path / "crowd" / "datasets" / "v000.json").read_text())
    assert [(im["file_name"], im["height"], im["width"]) for im in v000["images"]] == [("a.png", 40, 50)]
    assert [a["area"] for a in v000["annotations"]] == [400]  # the square, not the crowd disc


def test_init_refuses_an_out_folder_that_cannot_hold_a_project(tmp_path, capsys):
    """--out equal to the data folder put report_*.png among the images; --out an existing file, --coco a
    folder, a --heldout-fraction above 1: tracebacks or numpy's message; below 0: silently none.
    --steps 0 or --points-per-side -2 were kept, and the first round stopped at them for good. An --out
    holding an earlier project's datasets/ had its newest version taken for the new project's."""
    folder = folder_of(tmp_path, ["a.png", "._a.png"])  # macOS's resource fork beside a copied image
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert "is the data folder itself" in one_line_error(capsys, ["engine", "init", folder, "--out", folder])
    assert "is a file" in one_line_error(capsys, ["engine", "init", folder, "--out", folder / "a.png"])
    assert "cannot be read as the --coco file" in one_line_error(
        capsys, ["engine", "init", folder, "--out", tmp_path / "p", "--coco", folder])
    for fraction in ("1.5", "-0.5"):
        assert "--heldout-fraction" in one_line_error(
            capsys, ["engine", "init", folder, "--out", tmp_path / "p", "--heldout-fraction", fraction])
    # settings a round could not go on with, once met at its training step or auto stage
    for option, value, said in [("--steps", "0", "at least 1, got 0"), ("--seeds", "0,0,1", "seeds must differ"),
                                ("--points-per-side", "-2", "at least 1, got -2")]:
        assert said in one_line_error(capsys, ["engine", "init", folder, "--out", tmp_path / "p", option, value])
    assert not (tmp_path / "p").exists() and not (folder / "project.json").exists()
    from grounded.cli import main

    with pytest.raises(SystemExit):  # before: "invalid literal for int() with base 10: 'a'", no option named
        main(["engine", "init", str(folder), "--out", str(tmp_path / "p"), "--seeds", "0,a,2"])
    assert "argument --seeds: comma-separated integers, e.g. 0,1,2; got '0,a,2'" in capsys.readouterr().err
    (tmp_path / "old" / "datasets").mkdir(parents=True)  # an earlier project's, its project.json deleted
    (tmp_path / "old" / "datasets" / "v004.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert "holds datasets of an earlier project" in one_line_error(capsys, ["engine", "init", folder, "--out", tmp_path / "old"])
    project = init_project(folder, folder / "proj", model="unused")  # a subfolder of the data will do
    assert list(project.state["image_ids"]) == ["a.png"]  # hidden files are no images
    with pytest.raises(ValueError, match="--take .* at least 1, got -1"):
        start_round(project, "auto", take=-1)  # took every image but the last
    with pytest.raises(ValueError, match="at least 1, got 0"):
        start_round(project, "auto", take=0)  # took them all
    assert Project.open(folder / "proj").rounds == []


def test_a_hand_edited_project_file_is_refused_naming_the_file(tmp_path, capsys):
    """A project.json of the right format and version but wrong shapes gave AttributeError, KeyError or
    TypeError tracebacks from `status`."""
    folder_of(tmp_path, ["a.png"])
    init_project(tmp_path / "images", tmp_path / "proj", model="unused")
    path = tmp_path / "proj" / "project.json"
    state = json.loads(path.read_text())
    entry = {"index": 1, "stage": "auto", "images": ["a.png"], "status": "done"}
    for edited, named in [(dict(state, image_ids=["a.png"]), "'image_ids'"), (dict(state, data=3), "'data'"),
                          (dict(state, model={}), "'model'"), (dict(state, rounds={}), "'rounds'"),
                          (dict(state, rounds=[dict(entry, status=None)]), "round entry 1's 'status'"),
                          (dict(state, rounds=[dict(entry, index="1")]), "round entry 1's 'index'")]:
        path.write_text(json.dumps(edited))
        err = one_line_error(capsys, ["engine", "status", tmp_path / "proj"])
        assert f"{path} is corrupted: {named} should be" in err, err
    path.write_text(json.dumps(dict(state, version="2")))
    assert "is a version '2' project" in one_line_error(capsys, ["engine", "status", tmp_path / "proj"])
    path.write_text(json.dumps(state))
    assert "name the project's folder" in one_line_error(capsys, ["engine", "status", path])
    assert "is a folder" in one_line_error(capsys, ["engine", "export-ls", tmp_path / "proj", "--out", tmp_path])


def test_a_review_that_does_not_fit_is_refused_before_its_round_begins(tmp_path, capsys):
    """A brush mask of another size than its image failed inside the import with numpy's "all input
    arrays must have the same shape", after the review round was recorded: every later import was
    refused ("round 2 is unfinished") and re-running the same file failed again."""
    from grounded.engine.labelstudio import brush_result

    folder_of(tmp_path, ["a.png", "b.png"])
    init_project(tmp_path / "images", tmp_path / "proj", model="unused")

    def review(name, *masks):
        return {"id": 7, "data": {"grounded_file_name": name},
                "annotations": [{"id": 1, "result": [brush_result(m, "blob", k) for k, m in enumerate(masks)]}]}

    def import_ls(name, tasks):
        (tmp_path / name).write_text(json.dumps(tasks))
        return ["engine", "import-ls", tmp_path / "proj", tmp_path / name]

    err = one_line_error(capsys, import_ls("resized.json", [review("a.png", disc()), review("b.png", disc((20, 25), (9, 9), 4))]))
    assert "the review of b.png has a 25x20 brush mask (mask 1), but the image is 50x40" in err
    broken = review("a.png", disc())
    del broken["annotations"][0]["result"][0]["original_height"]
    assert "task 7 (a.png): brush result 'grounded-0' lacks 'original_height'" in one_line_error(
        capsys, import_ls("broken.json", [broken]))
    (tmp_path / "images" / "b.png").rename(tmp_path / "b.png")
    assert "reviews b.png, which is gone from the data folder" in one_line_error(
        capsys, import_ls("gone.json", [review("b.png", disc())]))
    assert Project.open(tmp_path / "proj").rounds == []  # nothing was left half-begun
    from grounded.cli import main

    assert main([str(a) for a in import_ls("fixed.json", [review("a.png", disc())])]) == 0
    assert Project.open(tmp_path / "proj").rounds[-1]["status"] == "done"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from grounded.sam.build import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit"), tmp_path_factory.mktemp("tiny") / "sam"))


def test_a_broken_image_is_skipped_and_an_image_with_nothing_is_labelled_empty(tmp_path, tiny_model):
    """A truncated file among good ones stopped the round at it, and the resumed round stopped there
    again: the round could never finish. An image the --truth lists with no object (or only a crowd
    region) stopped the simulated annotator ("--truth has no masks")."""
    from grounded.engine.report import status_text
    from grounded.eval.masks import encode

    folder = folder_of(tmp_path, ["a.png", "b.png", "c.png"])
    good = (folder / "c.png").read_bytes()
    (folder / "c.png").write_bytes(good[: len(good) // 2])
    images = [{"id": k + 1, "file_name": n, "height": 40, "width": 50} for k, n in enumerate(["a.png", "b.png", "c.png"])]
    truth = {"images": images, "categories": [{"id": 1, "name": "blob"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode(disc()[None])[0]},
                             {"id": 2, "image_id": 2, "category_id": 1, "segmentation": encode(disc()[None])[0], "iscrowd": 1},
                             {"id": 3, "image_id": 3, "category_id": 1, "segmentation": encode(disc()[None])[0]}]}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    init_project(folder, tmp_path / "proj", model=tiny_model)
    lines = []
    with Project.open(tmp_path / "proj") as project:
        entry = start_round(project, "manual", finetune=False)
        run_round(project, entry, truth=str(tmp_path / "truth.json"), log=lines.append)
        assert entry["status"] == "done" and entry["labelled"] == ["a.png", "b.png"]
        assert list(entry["unreadable"]) == ["c.png"] and "truncated" in entry["unreadable"]["c.png"]
        assert entry["masks"] == 1
        assert "1 unreadable, skipped: c.png" in status_text(project)
    assert any("c.png: skipped, cannot be read" in line for line in lines)
    assert "could not be read and were skipped: c.png" in (tmp_path / "proj" / "report.md").read_text()
    (folder / "c.png").write_bytes(good)  # mended: the next round takes it
    with Project.open(tmp_path / "proj") as project:
        assert start_round(project, "manual", finetune=False)["images"] == ["c.png"]
    with pytest.raises(ProjectError, match="a.png.* has no height and width"):
        from grounded.engine.stages import truth_masks

        truth_masks(dict(truth, images=[{"id": 1, "file_name": "a.png"}]), Project.open(tmp_path / "proj"))


def test_an_image_replaced_by_another_size_is_not_trained_or_measured_on(tmp_path, monkeypatch, capsys):
    """A labelled image replaced by a file of another size was trained on with masks that no longer fit
    it; a held-out one replaced so made the evaluation fail after all the training with "No such file
    ... eval/records/points/current.jsonl"."""
    import shutil

    from grounded.engine import finetune
    from grounded.eval.masks import encode

    folder = folder_of(tmp_path, ["a.png", "b.png", "g.png"])
    images = [{"id": k + 1, "file_name": n, "height": 40, "width": 50} for k, n in enumerate(["a.png", "b.png", "g.png"])]
    given = {"images": images, "categories": [{"id": 1, "name": "blob"}],
             "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": 1, "segmentation": encode(disc()[None])[0]}
                             for k in range(3)]}
    (tmp_path / "given.json").write_text(json.dumps(given))
    project = init_project(folder, tmp_path / "proj", coco=str(tmp_path / "given.json"), heldout=["g.png"], model="unused")
    Image.fromarray(np.zeros((60, 70, 3), np.uint8)).save(folder / "a.png")
    items = finetune.training_items(project, project.dataset_path(0))
    assert [item.key for item in items] == ["engine-2"]
    assert "a.png: left out of training: the file is 70x60 now, its masks 50x40" in capsys.readouterr().out
    lines = []

    shutil.copy(folder / "a.png", folder / "g.png")
    shutil.copy(project.dataset_path(0), project.dataset_path(1))
    entry = {"index": 1, "stage": "manual", "images": [], "status": "training", "model": "unused", "finetune": True}
    project.rounds.append(entry)

    def trained(*args, **kwargs):
        raise AssertionError("trained before the held-out split was checked")

    monkeypatch.setattr(finetune, "train_seeds", trained)
    with pytest.raises(ProjectError, match=r"held-out image .*g\.png is 70x60 now, 50x40 in .*heldout\.json"):
        run_round(project, entry, log=lines.append)
    (folder / "g.png").unlink()  # gone: nothing left to measure on, so nothing is trained
    run_round(project, entry, log=lines.append)
    assert entry["status"] == "done" and "every held-out image is gone" in entry["decision"]["why"]


def test_odd_names_in_task_urls_held_out_reviews_and_an_image_named_twice(tmp_path):
    """A task's image URL cut at "&" or "#" in a file name; a Label Studio review of a held-out image went
    into the dataset (and so into training); `--images c.png c.png` labelled c.png twice over (its masks
    doubled)."""
    from urllib.parse import parse_qs, urlsplit

    from grounded.engine.labelstudio import brush_result, export_tasks, import_tasks
    from grounded.eval.masks import encode

    names = ["a&b #1.png", "c.png", "g.png"]
    folder = folder_of(tmp_path, names)
    given = {"images": [{"id": 1, "file_name": names[0], "height": 40, "width": 50},
                        {"id": 3, "file_name": "g.png", "height": 40, "width": 50}],
             "categories": [{"id": 1, "name": "blob"}],
             "annotations": [{"id": k, "image_id": k, "category_id": 1, "segmentation": encode(disc()[None])[0]} for k in (1, 3)]}
    (tmp_path / "given.json").write_text(json.dumps(given))
    project = init_project(folder, tmp_path / "proj", coco=str(tmp_path / "given.json"), heldout=["g.png"], model="unused")
    assert export_tasks(project, tmp_path / "tasks.json") == 1
    (task,) = json.loads((tmp_path / "tasks.json").read_text())
    assert parse_qs(urlsplit(task["data"]["image"]).query)["d"] == [str(folder / names[0])]
    export_tasks(project, tmp_path / "named.json", image_url="/data/local-files/?d=images/{name}")
    (task,) = json.loads((tmp_path / "named.json").read_text())
    assert parse_qs(urlsplit(task["data"]["image"]).query)["d"] == [f"images/{names[0]}"]

    review = {"id": 1, "data": {"grounded_file_name": "g.png"}, "annotations": [{"id": 1, "result": [brush_result(disc(), "blob", 0)]}]}
    (tmp_path / "reviewed.json").write_text(json.dumps([review]))
    with pytest.raises(ValueError, match=r"reviews held-out images \['g.png'\]"):
        import_tasks(project, tmp_path / "reviewed.json")
    assert project.rounds == []
    entry = start_round(project, "auto", images=["c.png", "c.png"])
    assert entry["images"] == ["c.png"]


def test_a_killed_import_resumes_however_its_file_is_named(tmp_path, monkeypatch):
    """The import kept its file's name as given: resumed as ./reviewed.json or by its absolute path (or
    from another folder) it was refused, "round 1 is unfinished: finish it before importing"."""
    from grounded.annotate.store import AnnotationStore
    from grounded.engine.labelstudio import brush_result, import_tasks

    folder_of(tmp_path, ["a.png", "b.png"])
    init_project(tmp_path / "images", tmp_path / "proj", model="unused")
    tasks = [{"id": k, "data": {"grounded_file_name": name}, "annotations": [{"id": k, "result": [brush_result(disc(), "blob", 0)]}]}
             for k, name in enumerate(["a.png", "b.png"])]
    (tmp_path / "reviewed.json").write_text(json.dumps(tasks))

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed during the import")

    add_many = AnnotationStore.add_many
    monkeypatch.setattr(AnnotationStore, "add_many", killed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt), Project.open(tmp_path / "proj") as project:
        import_tasks(project, "reviewed.json")
    monkeypatch.setattr(AnnotationStore, "add_many", add_many)
    monkeypatch.chdir(tmp_path / "images")
    (tmp_path / "other.json").write_text(json.dumps(tasks[:1]))
    with Project.open(tmp_path / "proj") as project:
        with pytest.raises(ValueError, match=r"round 1 is unfinished \(an import of .*reviewed\.json\): run grounded engine import-ls"):
            import_tasks(project, "../other.json")
        path, count = import_tasks(project, "../reviewed.json")
        assert count == 2 and len(project.rounds) == 1 and project.rounds[0]["status"] == "done"


def test_status_of_a_page_round_shows_the_work_saved_so_far(tmp_path):
    """Mid-round, a page round's status said "0 images labelled" whatever the person had saved: only the
    simulated annotator's and the auto stage's images were counted."""
    from grounded.annotate.store import AnnotationStore
    from grounded.engine.report import status_text
    from grounded.engine.stages import round_records

    folder_of(tmp_path, ["a.png", "b.png", "c.png"])
    project = init_project(tmp_path / "images", tmp_path / "proj", model="unused")
    entry = start_round(project, "manual")
    store = AnnotationStore(project.round_dir(entry) / "labels", round_records(project, entry["images"]))
    for record in store.images:
        record.height, record.width = 40, 50
    version = store.add("a.png", 0, disc(), "blob", 0.9, {})["version"]
    store.add("a.png", version, disc(radius=3), "blob", 0.9, {})
    store.add("b.png", 0, disc(), "blob", 0.9, {})
    assert "round 1 manual: labelling, 3 images, 2 images labelled (3 masks so far)" in status_text(Project.open(tmp_path / "proj"))


def test_export_leaves_out_images_gone_from_the_data_folder(tmp_path):
    """Before, a removed image got a task whose picture Label Studio could not load."""
    from grounded.engine.labelstudio import export_tasks
    from grounded.eval.masks import encode

    folder = folder_of(tmp_path, ["a.png", "b.png"])
    given = {"images": [{"id": k, "file_name": n, "height": 40, "width": 50} for k, n in ((1, "a.png"), (2, "b.png"))],
             "categories": [{"id": 1, "name": "blob"}],
             "annotations": [{"id": k, "image_id": k, "category_id": 1, "segmentation": encode(disc()[None])[0]}
                             for k in (1, 2)]}
    (tmp_path / "given.json").write_text(json.dumps(given))
    project = init_project(folder, tmp_path / "proj", coco=str(tmp_path / "given.json"), model="unused")
    (folder / "b.png").unlink()
    lines = []
    assert export_tasks(project, tmp_path / "tasks.json", log=lines.append) == 1
    assert [t["data"]["grounded_file_name"] for t in json.loads((tmp_path / "tasks.json").read_text())] == ["a.png"]
    assert len(json.loads((tmp_path / "tasks.json").read_text())[0]["predictions"][0]["result"]) == 1
    assert lines == [f"1 image(s) gone from {project.data} get no task: b.png"]
