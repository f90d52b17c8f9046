"""What a pipeline's run hands around: the problems of a wiring check, an item's failure, and the
context nodes get at setup and finish. Kept apart from `core` so the runners, which `Pipeline.run`
calls, import these without importing `core` back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from .models import ModelCache

if TYPE_CHECKING:
    from .node import Node


@dataclass
class Problem:
    """One thing wrong with a pipeline: which node (position and id), what, and the fix."""

    index: Optional[int]
    node: str
    message: str
    fix: str = ""
    param: Optional[str] = None
    field: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.node}: {self.message}" + (f"\n    fix: {self.fix}" if self.fix else "")


class PipelineError(ValueError):
    """Every problem found in a pipeline's wiring, each naming its node."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("the pipeline does not fit together:\n  " + "\n  ".join(str(p) for p in self.problems))


@dataclass
class ItemFailure:
    """Why one item could not be processed: the stage ("load" or a node id) and the exception."""

    stage: str
    error: BaseException

    @property
    def reason(self) -> str:
        text = str(self.error).strip() or type(self.error).__name__
        # Errors the library raises on purpose read as sentences; others get their type for debugging.
        if isinstance(self.error, (ValueError, FileNotFoundError, PermissionError)):
            return text
        return f"{type(self.error).__name__}: {text}"


@dataclass
class RunContext:
    """What nodes get at setup and finish: the shared models, the run's output folder (None when
    run in memory), the finished items (journal entries, in input order) and a logger."""

    models: ModelCache
    out_dir: Optional[Path] = None
    finished: Callable[[], List[Dict[str, Any]]] = list
    log: Callable[[str], None] = lambda message: None

    def require_out_dir(self, node: Node) -> Path:
        if self.out_dir is None:
            raise RuntimeError(f"{node.id} writes files and needs an output folder: run the pipeline over data "
                               f"(pipeline.run(inputs, out_dir) or `grounded run SPEC INPUT --out DIR`)")
        return self.out_dir
