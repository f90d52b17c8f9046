"""Tags node: the nameable things a caption mentions (see `grounded.tags`), optionally also written
as a Grounding DINO prompt ("dog. stick. beach.") so a detect node can follow it directly:

    caption (BLIP) -> tags (write_text: true) -> detect (Grounding DINO) -> segment_boxes
"""

from __future__ import annotations

from typing import Any, List

from ..pipeline.node import Node, Param
from ..types import Sample


class Tags(Node):
    """Tags from the caption: object and scene names it mentions (LVIS v1 + scene nouns, offline) -> tags."""

    name = "tags"
    reads = {"caption": str}
    writes = {"tags": List[str]}
    params = {
        "vocabulary": Param(None, (list, dict), "names to keep (mode filter), or your own names to match instead "
                                                "(mode replace: a list, or a mapping name -> synonyms)"),
        "vocabulary_mode": Param("filter", str, "filter: the built-in list narrowed to `vocabulary`; "
                                                "replace: `vocabulary` instead of the built-in list",
                                 choices=("filter", "replace")),
        "exclude": Param([], list, "names never to report (by name or synonym, e.g. [person, room])"),
        "keep_words": Param(False, bool, "report the caption's own (singular) words instead of category names "
                                         "(man, not person)"),
        "max_tags": Param(0, int, "report at most this many, in caption order (0: all)"),
        "write_text": Param(False, bool, "also write the tags to `text` as a Grounding DINO prompt: 'dog. stick. beach.'"),
    }

    def __init__(self, **params: Any) -> None:
        from ..tags import Vocabulary

        super().__init__(**params)
        if self.max_tags < 0:
            raise ValueError(f"{self.id}: max_tags must be 0 (all) or more, got {self.max_tags}")
        if self.vocabulary_mode == "replace":
            if not self.vocabulary:
                raise ValueError(f"{self.id}: vocabulary_mode 'replace' needs a vocabulary (a list of names)")
            vocab = Vocabulary.from_words(self.vocabulary)
        else:
            vocab = Vocabulary.builtin()
            if self.vocabulary is not None:
                names = list(self.vocabulary) if isinstance(self.vocabulary, dict) else self.vocabulary
                vocab = vocab.restrict(str(n) for n in names)
        self._vocab = vocab.without(str(n) for n in self.exclude) if self.exclude else vocab
        if self.write_text:
            self.writes = {**self.writes, "text": str}

    def process(self, sample: Sample) -> Sample:
        from ..tags import detection_prompt

        caption = sample.caption
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"{self.id}: caption must be text, got {type(caption).__name__}")
        tags = self._vocab.tags_of(caption or "", keep_words=self.keep_words)
        if self.max_tags:
            tags = tags[: self.max_tags]
        sample.tags = tags
        if self.write_text:
            sample.text = detection_prompt(tags)
        return sample
