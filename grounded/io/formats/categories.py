"""The one category table every labelled-data format shares (COCO ids are position + 1, YOLO
classes the position), and the one rule that names a detection's category:

- its label when it has one;
- else, with a class id, the given name at that index (or `class_<id>` without one);
- else `object` (automatic masks have neither).

Given names keep their order and come first; names a run finds beyond them are appended (and
reported), so nothing is lost. Without given names the table is the names found (labels, and the
images' tags), sorted, with `object` last.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence

OBJECT = "object"


def category_name(label: Optional[str], class_id: Optional[int], given: Optional[Sequence[str]] = None) -> str:
    """A detection's category name (see the module docstring)."""
    if label is not None:
        return str(label)
    if class_id is not None:
        class_id = int(class_id)
        if given and 0 <= class_id < len(given):
            return str(given[class_id])
        return f"class_{class_id}"
    return OBJECT


def _natural(name: str):
    # class_2 before class_10
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class CategoryTable:
    """Category names in id order. `add` returns a name's position, appending a new one."""

    def __init__(self, names: Iterable[str] = ()):
        self.names: List[str] = []
        self._position: Dict[str, int] = {}
        self.added: List[str] = []  # names appended after the table was built
        for name in names:
            self._append(str(name))

    @classmethod
    def build(cls, found: Iterable[str], given: Optional[Sequence[str]] = None) -> "CategoryTable":
        """The table for the category names `found` in a run: `given` first, in order, and the
        others after them; without `given`, the found names sorted (`object` last, and alone
        when nothing was found)."""
        found = list(dict.fromkeys(str(n) for n in found))
        if given:
            table = cls(given)
            for name in found:
                table.add(name)
            return table
        named = sorted((n for n in found if n != OBJECT), key=_natural)
        return cls(named + [OBJECT] if OBJECT in found or not named else named)

    def _append(self, name: str) -> int:
        if name not in self._position:
            self._position[name] = len(self.names)
            self.names.append(name)
        return self._position[name]

    def add(self, name: str) -> int:
        """The position of `name`, appended (and listed in `added`) if the table lacks it."""
        if name not in self._position:
            self.added.append(name)
        return self._append(name)

    def coco_id(self, name: str) -> int:
        return self.add(name) + 1

    def coco(self) -> List[Dict[str, object]]:
        """COCO's `categories` list."""
        return [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]

    def __len__(self) -> int:
        return len(self.names)
