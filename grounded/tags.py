"""Tags from captions: the nameable things a caption mentions, matched against a fixed list of
object and scene names kept in the repository (grounded/data/categories.json: LVIS v1's 1,203
categories with their synonyms and our own scene and stuff nouns; nothing is downloaded).

    >>> caption_tags("there are two dogs playing with a stick on the beach")
    ['dog', 'stick', 'beach']

Matching, word by word from the left:
- the longest name wins ("hot dog", "teddy bear", "traffic light" before "dog", "bear", "light");
- a plural in the caption finds its singular name (dogs, boxes, cherries, knives, children, mice,
  people), the last word of a multi-word name included ("hot dogs");
- synonyms give their category's tag (man, woman, child -> person), or, with `keep_words`, the
  word the caption used; the tag is the LVIS name normalised, or for a few rare LVIS names the
  common one (`tag` in the data file: fireplug -> fire hydrant, pop_(soda) -> soda);
- LVIS names are normalised: underscores to spaces, parenthesised disambiguators dropped
  ("bow_(weapon)" -> "bow", "car_(automobile)" -> "car");
- a few names that captions mostly use as other words are held to stricter rules (see
  AMBIGUOUS): "can" counts after a determiner ("a can of soda", not "a dog can jump"), "top",
  "front", "side" not before "of", a colour name not before a noun or another colour ("an
  orange on a plate", not "an orange cat").

`Vocabulary.restrict(words)` keeps only the categories a user names, `Vocabulary.from_words`
replaces the list with the user's own names.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

CATEGORIES_FILE = Path(__file__).parent / "data" / "categories.json"

# Plurals that no suffix rule undoes.
IRREGULAR_PLURALS = {
    "people": "person", "persons": "person", "children": "child", "men": "man", "women": "woman",
    "mice": "mouse", "geese": "goose", "teeth": "tooth", "feet": "foot", "oxen": "ox", "lice": "louse",
    "dice": "die", "cacti": "cactus", "fungi": "fungus", "octopi": "octopus", "phenomena": "phenomenon",
    "criteria": "criterion", "indices": "index", "matrices": "matrix", "vertices": "vertex",
    "sheep": "sheep", "deer": "deer", "fish": "fish", "moose": "moose", "aircraft": "aircraft",
    "gentlemen": "gentleman", "policemen": "policeman", "firemen": "fireman", "fishermen": "fisherman",
}

DETERMINERS = frozenset(
    "a an the this that these those some any his her their my your its our one two three four five six "
    "seven eight nine ten several many few various each every another other no".split())
COLOURS = frozenset(
    "red orange yellow green blue purple pink brown black white gray grey tan beige gold golden silver "
    "navy olive lime cream teal maroon violet khaki peach salmon lavender turquoise dark light bright pale "
    "colored coloured".split())

# Names that captions mostly use as other words, and the rule each must pass to count as a thing.
#   "determiner": only right after a determiner or number ("a can", "two cans"; not "a dog can jump")
#   "not_of": not followed by "of" ("a tank top", not "on top of a car")
#   "colour": not followed by a name, a colour word or "and" ("an orange on a plate", not "an orange cat")
AMBIGUOUS: Dict[str, str] = {
    "can": "determiner", "watch": "determiner", "set": "determiner", "stand": "determiner",
    "cover": "determiner", "fly": "determiner", "file": "determiner", "iron": "determiner",
    "date": "determiner", "match": "determiner", "pop": "determiner", "spread": "determiner",
    "rest": "determiner", "lift": "determiner", "toast": "determiner", "duck": "determiner",
    "top": "not_of", "front": "not_of", "back": "not_of", "side": "not_of", "bottom": "not_of",
    "middle": "not_of", "edge": "not_of", "end": "not_of", "center": "not_of", "corner": "not_of",
    "orange": "colour", "lime": "colour", "olive": "colour", "cream": "colour", "chocolate": "colour",
    "peach": "colour", "salmon": "colour", "gold": "colour", "silver": "colour", "light": "colour",
    "coffee": "colour", "wine": "colour", "cherry": "colour", "lavender": "colour", "mint": "colour",
}


def display_name(name: str) -> str:
    """An LVIS name as a tag: "bow_(weapon)" -> "bow", "Christmas_tree" -> "christmas tree"."""
    name = re.sub(r"\([^)]*\)", " ", name).replace("_", " ")
    return re.sub(r"\s+", " ", name).strip().lower()


def words(text: str) -> List[str]:
    """Lower-case words of a caption or a name: parenthesised parts dropped, "_", "-" and "/"
    split words, possessive "'s" removed ("t-shirt" -> t, shirt; "dog's" -> dog)."""
    text = re.sub(r"\([^)]*\)", " ", text.lower())
    text = re.sub(r"[_\-/]", " ", text)
    return [re.sub(r"'s?$", "", w) for w in re.findall(r"[a-z0-9]+(?:'[a-z]*)?", text)]


def normalise(text: str) -> str:
    return " ".join(words(text))


def singular_candidates(word: str) -> List[str]:
    """Possible singulars of a word, most likely first; the vocabulary decides which is real
    ("boxes" -> boxe, box; "cookies" -> cooky, cookie; "knives" -> knive, knif, knife)."""
    if word in IRREGULAR_PLURALS:
        return [IRREGULAR_PLURALS[word]]
    out: List[str] = []
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        if word.endswith("ies") and len(word) > 4:
            out.append(word[:-3] + "y")
        if word.endswith("ves"):
            out += [word[:-3] + "f", word[:-3] + "fe"]
        out.append(word[:-1])
        if word.endswith("es"):
            out.append(word[:-2])
    for men, man in (("men", "man"), ("women", "woman")):  # firemen, sportswomen
        if word.endswith(men) and len(word) > len(men):
            out.append(word[: -len(men)] + man)
    return out


Key = Tuple[str, ...]


class Vocabulary:
    """Names to match: each tag with the word sequences that mean it."""

    def __init__(self, entries: Iterable[Tuple[str, Sequence[str]]]):
        # Names before synonyms: when two categories share a word, the one it names wins
        # ("glass" is glass (drink container), not a synonym elsewhere).
        entries = [(tag, [tag, *[s for s in synonyms if normalise(s) != normalise(tag)]]) for tag, synonyms in entries]
        self.index: Dict[Key, str] = {}
        self.tags: List[str] = []
        for tag, _ in entries:
            if tag not in self.tags:
                self.tags.append(tag)
        depth = max((len(s) for _, s in entries), default=0)
        for rank in range(depth):
            for tag, surfaces in entries:
                if rank < len(surfaces):
                    key = tuple(words(surfaces[rank]))
                    if key and key not in self.index:
                        self.index[key] = tag
        self.longest = max((len(k) for k in self.index), default=0)
        self.allowed: List[str] = list(self.tags)  # the tags reported (restrict/without narrow this)

    # ---- construction

    @classmethod
    def builtin(cls) -> "Vocabulary":
        """The repository's list (LVIS v1 + hand-written scene nouns)."""
        return _builtin()

    @classmethod
    def from_words(cls, vocabulary: Union[Sequence[str], Mapping[str, Sequence[str]]]) -> "Vocabulary":
        """A vocabulary of the user's own: ["dog", "red car"] or {"person": ["man", "woman"], ...}."""
        if isinstance(vocabulary, Mapping):
            entries = [(normalise(tag), [normalise(s) for s in syns]) for tag, syns in vocabulary.items()]
        elif isinstance(vocabulary, (list, tuple)):
            entries = [(normalise(w), []) for w in vocabulary]
        else:
            raise ValueError(f"a vocabulary is a list of names or a mapping name -> synonyms, got {vocabulary!r}")
        empty = [tag for tag, _ in entries if not tag]
        if empty or not entries:
            raise ValueError(f"vocabulary {vocabulary!r} has an empty name (names need a letter or digit)")
        return cls(entries)

    def restrict(self, names: Iterable[str]) -> "Vocabulary":
        """Only the categories that `names` name, by their tag or any synonym, singular or plural
        ("dogs", "man" keeps person). Raises ValueError naming the names that match nothing."""
        keep, unknown = set(), []
        for name in names:
            tag = self.lookup(words(name))
            if tag is None:
                unknown.append(name)
            else:
                keep.add(tag)
        if unknown:
            raise ValueError(f"not in the tag vocabulary: {unknown}; use names from it or give your own "
                             "vocabulary (mode 'replace')")
        return self._subset(keep)

    def without(self, names: Iterable[str]) -> "Vocabulary":
        """All categories but those `names` name (by tag or synonym; names it lacks are ignored)."""
        drop = {self.lookup(words(name)) for name in names} - {None}
        return self._subset(set(self.allowed) - drop)

    def _subset(self, keep: set) -> "Vocabulary":
        # Matching still reads every name, so dropping "hot dog" does not turn "a hot dog" into "dog".
        subset = copy.copy(self)
        subset.allowed = [t for t in self.allowed if t in keep]
        return subset

    def __len__(self) -> int:
        return len(self.allowed)

    def __contains__(self, name: str) -> bool:
        return self.lookup(words(name)) in set(self.allowed)

    # ---- matching

    def lookup(self, span: Sequence[str], singular_first: bool = False) -> Optional[str]:
        """The tag of a word sequence, its last word as written or made singular (`singular_first`:
        the singular before the word as written)."""
        key = tuple(span)
        if not key:
            return None
        keys = [key[:-1] + (candidate,) for candidate in singular_candidates(key[-1])]
        for k in ([*keys, key] if singular_first else [key, *keys]):
            if k in self.index:
                return self.index[k]
        return None

    def find(self, text: str) -> List[Tuple[str, str, int]]:
        """(tag, words as written, position) for every name in `text`, left to right, longest first."""
        toks = words(text)
        found, i = [], 0
        while i < len(toks):
            for n in range(min(self.longest, len(toks) - i), 0, -1):
                # "glasses of wine", "boxes of": before "of" a plural is a quantity of containers,
                # so its singular's category wins over a plural-only name (glasses = spectacles).
                tag = self.lookup(toks[i:i + n], singular_first=i + n < len(toks) and toks[i + n] == "of")
                if tag is not None and (n > 1 or self._plausible(toks, i)):
                    found.append((tag, " ".join(toks[i:i + n]), i))
                    i += n
                    break
            else:
                i += 1
        return found

    def _plausible(self, toks: List[str], i: int) -> bool:
        word = toks[i]
        rule = AMBIGUOUS.get(word)
        if rule is None:
            return True
        before = toks[i - 1] if i > 0 else None
        after = toks[i + 1] if i + 1 < len(toks) else None
        if rule == "determiner":
            return before is not None and (before in DETERMINERS or before.isdigit())
        if rule == "not_of":
            return after != "of"
        # colour: a colour word describes the next word when there is a name or colour after it.
        if after is None:
            return True
        if after in COLOURS or after in ("and", "or", "with"):
            return False
        return self.lookup(toks[i + 1:i + 2]) is None and not any(
            self.lookup(toks[i + 1:i + 1 + n]) for n in range(2, self.longest + 1))

    def tags_of(self, text: str, keep_words: bool = False) -> List[str]:
        """The tags of a caption, each once, in the order the caption first mentions them."""
        out: List[str] = []
        allowed = set(self.allowed)
        for tag, written, _ in self.find(text or ""):
            if tag not in allowed:
                continue
            value = _singular_phrase(written, self) if keep_words else tag
            if value not in out:
                out.append(value)
        return out


def _singular_phrase(written: str, vocabulary: Vocabulary) -> str:
    toks = written.split(" ")
    if tuple(toks) in vocabulary.index:
        return written
    for candidate in singular_candidates(toks[-1]):
        if tuple(toks[:-1]) + (candidate,) in vocabulary.index:
            return " ".join(toks[:-1] + [candidate])
    return written


@functools.lru_cache(maxsize=1)
def _builtin() -> Vocabulary:
    return Vocabulary(category_entries())


def load_categories(path: Union[str, Path] = CATEGORIES_FILE) -> List[dict]:
    """The category records of the data file (id, name, synonyms, source, ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tag categories file {path} is missing (it ships with grounded: reinstall, or "
                                "rebuild it with grounded/data/build_categories.py)")
    return json.loads(path.read_text())["categories"]


def category_entries(path: Union[str, Path] = CATEGORIES_FILE) -> List[Tuple[str, List[str]]]:
    """(tag, synonyms) of every category, LVIS names normalised to tags."""
    return [(c.get("tag") or display_name(c["name"]), [c["name"], *c["synonyms"], *c.get("extra_synonyms", [])])
            for c in load_categories(path)]


def caption_tags(caption: str, vocabulary: Optional[Vocabulary] = None, keep_words: bool = False) -> List[str]:
    """The tags of one caption with the built-in vocabulary (or the one given)."""
    return (vocabulary or Vocabulary.builtin()).tags_of(caption, keep_words=keep_words)


def detection_prompt(tags: Sequence[str]) -> str:
    """Tags as a Grounding DINO prompt: "dog. stick. beach." ("" for none)."""
    return " ".join(f"{t}." for t in tags)
