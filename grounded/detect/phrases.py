"""Prompts and phrases: "dog. cat. red car." -> classes, the caption the model reads, each class's
token span; per-query token scores -> a phrase and the prompt class it belongs to.

Grounding DINO scores every query against every token of the caption. The reference
post-processing (groundingdino-py's `get_phrases_from_posmap`, transformers'
`post_process_grounded_object_detection`) joins the tokens above `text_threshold` into a phrase,
and Grounded-SAM's demos then look that phrase up in the class list, which fails whenever it is a
part of a class ("red" for "red car") or spans two. Here a query's class is the prompt class
whose tokens score highest for it; the phrase is kept beside it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np

# Characters that separate classes in a prompt (Grounding DINO's convention is ". ").
_SEPARATORS = re.compile(r"[.;\n]")


@dataclass(frozen=True)
class Prompt:
    """A detection prompt: its classes (lower-case, in order) and the caption given to the model."""

    classes: Tuple[str, ...]
    caption: str

    @property
    def spans(self) -> List[Tuple[int, int]]:
        """Character span of each class in `caption`."""
        spans, start = [], 0
        for name in self.classes:
            begin = self.caption.index(name, start)
            spans.append((begin, begin + len(name)))
            start = begin + len(name)
        return spans


def parse_prompt(text: Union[str, Sequence[str]]) -> Prompt:
    """"Dog. cat. red car." (or ["dog", "cat", "red car"]) -> classes ("dog", "cat", "red car") and
    caption "dog . cat . red car ." (lower case, classes separated and ended by " ."). An empty
    prompt, or one with no word in it, is a ValueError."""
    if text is None:
        raise ValueError("no detection prompt: give text such as 'dog. cat. red car.'")
    parts = list(text) if isinstance(text, (list, tuple)) else _SEPARATORS.split(str(text))
    classes = []
    for part in parts:
        name = " ".join(str(part).lower().split())
        if not name:
            continue
        if not re.search(r"\w", name):
            raise ValueError(f"detection prompt {text!r} has a class with no word in it ({part!r}); write classes "
                             "as words separated by '.', e.g. 'dog. cat. red car.'")
        classes.append(name)
    if not classes:
        raise ValueError(f"empty detection prompt {text!r}: give classes separated by '.', e.g. 'dog. cat. red car.'")
    return Prompt(tuple(classes), " . ".join(classes) + " .")


def token_classes(prompt: Prompt, offsets: Sequence[Tuple[int, int]]) -> np.ndarray:
    """For each token (by its character offsets in the caption, as a fast tokenizer's
    `offset_mapping` gives them) the index of the class it belongs to, -1 for special tokens and
    separators."""
    spans = prompt.spans
    out = np.full(len(offsets), -1, dtype=np.int64)
    for i, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for k, (begin, stop) in enumerate(spans):
            if begin <= start and end <= stop:
                out[i] = k
                break
    return out


def assign(probs: np.ndarray, token_class: np.ndarray, input_ids: Sequence[int], tokenizer,
           text_threshold: float) -> Tuple[np.ndarray, List[str]]:
    """Per query (rows of `probs`, sigmoid token scores over the caption's tokens): the prompt class
    whose tokens score highest, and the phrase of the class tokens above `text_threshold` (empty
    when none is)."""
    n_classes = int(token_class.max()) + 1 if len(token_class) else 0
    probs = np.asarray(probs, dtype=np.float32)[:, : len(token_class)]
    class_ids = np.zeros(len(probs), dtype=np.int64)
    phrases: List[str] = []
    if n_classes == 0:
        return class_ids, ["" for _ in probs]
    per_class = np.full((len(probs), n_classes), -np.inf, dtype=np.float32)
    for k in range(n_classes):
        cols = token_class == k
        if cols.any():
            per_class[:, k] = probs[:, cols].max(axis=1)
    class_ids = per_class.argmax(axis=1).astype(np.int64)
    ids = np.asarray(input_ids)
    for row in probs:
        chosen = (row > text_threshold) & (token_class >= 0)
        phrases.append(tokenizer.decode(ids[chosen].tolist()).strip() if chosen.any() else "")
    return class_ids, phrases
