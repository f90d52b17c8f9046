"""Finding a run's inputs (grounded.io.sources) and writing results safely (grounded.io.results)."""

import json
import os

import pytest

from grounded.io.results import Journal, RunLock, atomic_write_json, remove_stale_temporaries
from grounded.io.sources import InputError, discover, fields_of


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    for name in ["b.jpg", "a.PNG", "sub/c.JPEG", "sub/deeper/d.tif", "a.jpg", "notes.txt", ".hidden.jpg",
                 ".cache/e.jpg", "out/f.jpg"]:
        touch(root / name)
    (root / "dangling.jpg").symlink_to(root / "missing.jpg")
    (root / "loop").symlink_to(root)  # a link to a folder is not followed
    return root


def test_folder_is_walked_recursively_by_extension_in_sorted_order(tree):
    items = discover([tree], exclude=[tree / "out"])
    assert [i.source for i in items] == [str(tree / n) for n in
                                          ["a.PNG", "a.jpg", "b.jpg", "dangling.jpg", "sub/c.JPEG", "sub/deeper/d.tif"]]
    # a.PNG and a.jpg would share an id: both keep their extension; the rest drop it
    assert [i.id for i in items] == ["a.PNG", "a.jpg", "b", "dangling", "sub/c", "sub/deeper/d"]
    assert fields_of(items) == ["image", "image_path", "image_id"]


def test_glob_file_list_and_duplicates(tree, tmp_path):
    items = discover([str(tree / "**" / "*.jpg")])
    assert [i.id for i in items] == ["a", "b", "dangling", "out/f"]  # relative to the glob's base
    listing = touch(tmp_path / "list.txt", b"# images\ndata/b.jpg\n\ndata/sub/c.JPEG\nmissing.png\n")
    said = []
    items = discover([listing, tree / "b.jpg"], report=said.append)  # b.jpg is listed and given: once, and said
    assert [i.id for i in items] == ["data/b", "data/sub/c", "missing"]
    assert said == [f"left out {tree / 'b.jpg'} (as an input): the same image is already an input "
                    f"({tree / 'b.jpg'} at {listing}:2)"]
    assert items[2].path == tmp_path / "missing.png"  # missing files become items: the run reports them


def test_same_names_from_two_inputs_get_suffixes(tmp_path):
    one, two = touch(tmp_path / "one" / "x.jpg"), touch(tmp_path / "two" / "x.jpg")
    assert [i.id for i in discover([one.parent, two.parent])] == ["x", "x-2"]


def test_jsonl_manifest_carries_fields(tmp_path):
    touch(tmp_path / "img" / "a.jpg")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "img/a.jpg", "points": [[1, 2]], "text": "a cat"}\n\n'
                        '{"id": "second", "image_path": "img/b.jpg", "tags": ["x"]}\n'
                        '{"text": "no image at all"}\n')
    items = discover([manifest])
    assert [(i.id, i.fields) for i in items] == [("img/a", {"points": [[1, 2]], "text": "a cat"}),
                                                ("second", {"tags": ["x"]}), ("line4", {"text": "no image at all"})]
    assert items[2].path is None
    assert fields_of(items) == ["image", "image_path", "image_id", "points", "text", "tags"]


def test_manifest_paths_are_relative_to_its_folder_and_a_line_left_out_is_reported(tmp_path, monkeypatch):
    """Issue 28: a manifest line naming an image already named (with no fields of its own) was
    dropped silently; it is reported, with the line. Paths are relative to the manifest's folder,
    wherever the run starts."""
    touch(tmp_path / "sets" / "img" / "a.jpg")
    manifest = tmp_path / "sets" / "m.jsonl"
    manifest.write_text('{"image": "img/a.jpg"}\n{"image": "img/a.jpg"}\n{"image": "img/a.jpg", "text": "kept"}\n')
    monkeypatch.chdir(tmp_path)
    said = []
    items = discover(["sets/m.jsonl"], report=said.append)
    assert [(i.path.resolve(), i.fields) for i in items] == [(tmp_path / "sets" / "img" / "a.jpg", {}),
                                                             (tmp_path / "sets" / "img" / "a.jpg", {"text": "kept"})]
    assert said == ["left out sets/img/a.jpg (at sets/m.jsonl:2): the same image is already an input "
                    "(sets/img/a.jpg at sets/m.jsonl:1)"]
    with pytest.warns(UserWarning, match=r"left out .* \(at sets/m.jsonl:2\)"):
        discover(["sets/m.jsonl"])  # without a report function: a warning


@pytest.mark.parametrize("line, match", [
    ("{not json", r"m.jsonl:1: not valid JSON"),
    ("[1, 2]", r"m.jsonl:1: expected a JSON object"),
    ("{}", r"m.jsonl:1: the line gives neither an image nor any field"),
    ('{"image": "a.jpg", "id": "../up"}', r"must be a relative name"),
])
def test_bad_manifest_lines_name_file_and_line(tmp_path, line, match):
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(InputError, match=match):
        discover([tmp_path / "m.jsonl"])


def test_missing_inputs_are_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        discover([tmp_path / "nope"])
    with pytest.raises(InputError, match="no file matches"):
        discover([str(tmp_path / "*.jpg")])
    assert discover([tmp_path]) == []


def test_atomic_writes_leave_no_partial_files(tmp_path):
    target = atomic_write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert os.listdir(target.parent) == ["b.json"]
    touch(tmp_path / "a" / ".tmp-b.json.123")  # what a kill during a write leaves
    assert remove_stale_temporaries(tmp_path) == 1 and os.listdir(target.parent) == ["b.json"]


def test_journal_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.append({"id": "a", "status": "ok"})
        journal.append({"id": "b", "status": "error"})
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "sta')  # killed mid-write
    journal = Journal(path)
    assert list(journal.load()) == ["a", "b"]
    with journal:
        journal.append({"id": "c", "status": "ok"})
        journal.append({"id": "a", "status": "ok", "again": True})
    entries = journal.load()
    assert list(entries) == ["a", "b", "c"] and entries["a"]["again"]
    assert path.read_text().count("\n") == 4  # the torn line was cut, not glued to the next


def test_one_run_per_folder(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RuntimeError, match="another run is writing"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass
