"""The `parse_edits` node: an utterance (a transcript, or any text field) -> a list of edits, each
{"action": replace | recolor | remove, "target": ..., "value": ...} (see `grounded.instructions`
for the grammar), and the detector prompt naming every target ("dog . bicycle")."""

from __future__ import annotations

from typing import Any, Dict, List

from ..instructions import edits_as_dicts, parse_edits
from ..pipeline.node import Node, Param
from ..types import Sample


def detector_prompt(targets: List[str]) -> str:
    """Grounding DINO's prompt form: classes separated by " . ", each once, in order (the detect
    node's labels are these classes, which is how each edit finds its target's boxes)."""
    seen: List[str] = []
    for target in targets:
        if target not in seen:
            seen.append(target)
    return " . ".join(seen)


class ParseEdits(Node):
    """Edit instructions in words -> edits (action, target, value) and a detector prompt of the targets."""

    name = "parse_edits"
    reads = {"transcript": str}
    writes = {"edits": List[Dict[str, Any]], "instruction": str, "text": str}
    params = {
        "source": Param("transcript", str, "the field holding the utterance (transcript, instruction, text)"),
        "say": Param(None, str, "the instruction itself, for every item (instead of reading a field)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.reads = {} if self.say is not None else {self.source: str}

    def process(self, sample: Sample) -> Sample:
        utterance = self.say if self.say is not None else sample.get(self.source)
        if utterance is None:
            raise ValueError(f"parse_edits: the item has no {self.source!r} to read an instruction from")
        edits = parse_edits(utterance)
        sample.instruction = utterance
        sample.edits = edits_as_dicts(edits)
        sample.text = detector_prompt([e.target for e in edits])
        sample.note("edits: " + "; ".join(str(e) for e in edits))  # in a run's manifest: what was understood
        return sample
