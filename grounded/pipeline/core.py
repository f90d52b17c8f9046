"""Pipeline: nodes in order, their wiring checked when the pipeline is built.

    from grounded.nodes import SegmentAuto, WriteCoco, WriteOverlays
    pipe = SegmentAuto(points_per_side=16) | WriteCoco() | WriteOverlays()
    pipe.run(["samples/"], "out/auto")                 # over data: batches, journal, resume
    sample = SegmentAuto()(image)                       # or on one image in memory (a Node | ... is a Pipeline)

The check, before any model loads: every field a node reads is written by an earlier node or
given by the inputs, with a type that fits what the node declares; every field written fits
`Sample`'s type for it; node ids are unique. Parameters were already checked when each node was made.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..types import Sample, type_fits, type_name, value_fits
from .context import ItemFailure, PipelineError, Problem, RunContext
from .models import ModelCache
from .node import Node, use_pipeline_class
from .registry import producers_of

IMAGE_INPUTS = ("image", "image_path", "image_id")


class Pipeline:
    """Nodes in order. `inputs` names the fields the inputs give (default: image, image_path,
    image_id) or maps them to types; `batch_size` is how many items go through the nodes together."""

    def __init__(self, nodes: Iterable[Union[Node, "Pipeline"]], *, inputs: Union[Iterable[str], Mapping[str, Any]] = IMAGE_INPUTS,
                 batch_size: int = 4, name: Optional[str] = None, description: str = ""):
        flat: List[Node] = []
        for item in nodes:
            if isinstance(item, Pipeline):
                flat.extend(item.nodes)
            elif isinstance(item, Node):
                flat.append(item)
            elif isinstance(item, type) and issubclass(item, Node):
                raise TypeError(f"give a node instance, e.g. {item.__name__}(), not the class {item.__name__}")
            else:
                raise TypeError(f"a pipeline is made of nodes (grounded.pipeline.Node), got {type(item).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.nodes = flat
        self.ids = _node_ids(flat)
        self.inputs = input_types(inputs)
        self.batch_size = int(batch_size)
        self.name = name or "pipeline"
        self.description = description
        self._ctx: Optional[RunContext] = None
        self._own_models: Optional[ModelCache] = None
        problems = self.check()
        if problems:
            raise PipelineError(problems)

    # ---- the wiring check -------------------------------------------------------------------

    def check(self, inputs: Union[None, Iterable[str], Mapping[str, Any]] = None) -> List[Problem]:
        """Problems with the wiring given these inputs (default: the pipeline's own); empty if it fits."""
        available = dict(self.inputs if inputs is None else input_types(inputs))
        producer = {name: "the inputs" for name in available}
        sample_types = Sample.field_types()
        problems: List[Problem] = []
        if not self.nodes:
            problems.append(Problem(None, "pipeline", "has no nodes", "add at least one node"))
        seen = set()
        for i, (node_id, node) in enumerate(zip(self.ids, self.nodes)):
            if node_id in seen:
                problems.append(Problem(i, node_id, f"node id {node_id!r} is used twice", "give each node its own id"))
            seen.add(node_id)
            for name, wanted in node.reads.items():
                if name not in available:
                    problems.append(Problem(i, node_id, f"reads {name!r}, which nothing before it writes",
                                            self._missing_fix(i, name, node_id), field=name))
                elif not type_fits(available[name], wanted):
                    problems.append(Problem(
                        i, node_id, f"reads {name!r} as {type_name(wanted)}, but {producer[name]} gives it as "
                        f"{type_name(available[name])}",
                        f"put a node between them that turns {type_name(available[name])} into {type_name(wanted)}, "
                        f"or read another field", field=name))
            for name, written in node.writes.items():
                if name in sample_types and not type_fits(written, sample_types[name]):
                    problems.append(Problem(
                        i, node_id, f"writes {name!r} as {type_name(written)}, but Sample.{name} is {type_name(sample_types[name])}",
                        f"write a {type_name(sample_types[name])}, or use a field name of your own (kept in sample.extra)",
                        field=name))
                available[name] = written
                producer[name] = repr(node_id)
        return problems

    def _missing_fix(self, index: int, name: str, node_id: str) -> str:
        later = [self.ids[j] for j in range(index + 1, len(self.nodes)) if name in self.nodes[j].writes]
        if later:
            return f"move {later[0]!r} before {node_id!r}"
        makers = [n for n in producers_of(name) if n != self.nodes[index].name]
        hint = f"add a node that writes {name!r} before {node_id!r}"
        if makers:
            hint += f" (e.g. {', '.join(makers)})"
        if name in Sample.field_types() and name not in IMAGE_INPUTS:
            hint += f", or give inputs that carry it (a JSONL manifest with a {name!r} key)"
        return hint

    # ---- composition ------------------------------------------------------------------------

    def __or__(self, other: Union[Node, "Pipeline"]) -> "Pipeline":
        more = other.nodes if isinstance(other, Pipeline) else [other]
        return Pipeline(self.nodes + list(more), inputs=self.inputs, batch_size=self.batch_size, name=self.name,
                        description=self.description)

    def node(self, node_id: str) -> Node:
        for i, node in zip(self.ids, self.nodes):
            if i == node_id:
                return node
        raise KeyError(f"no node {node_id!r}; nodes: {', '.join(self.ids)}")

    def describe(self) -> List[Dict[str, Any]]:
        """[{id, node, params}] - what the pipeline does, JSON-ready."""
        return [{"id": i, "node": n.name, "params": _jsonable(n.config)} for i, n in zip(self.ids, self.nodes)]

    def fingerprint(self) -> str:
        """A hash of what decides the results (nodes, order, parameters other than devices): a run
        may be resumed only with the same fingerprint."""
        parts = []
        for i, n in zip(self.ids, self.nodes):
            params = {k: v for k, v in n.config.items() if type(n).params[k].fingerprint}
            parts.append({"id": i, "node": f"{type(n).__module__}.{type(n).__qualname__}", "params": _jsonable(params)})
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Pipeline({' | '.join(repr(n) for n in self.nodes)})"

    def __len__(self) -> int:
        return len(self.nodes)

    # ---- running ----------------------------------------------------------------------------

    def open(self, models: Optional[ModelCache] = None, out_dir: Union[None, str, os.PathLike] = None,
             ctx: Optional[RunContext] = None) -> "Pipeline":
        """Set every node up (load models). Without `models`, the pipeline makes its own cache,
        released by `close()`."""
        if self._ctx is not None:
            self.close()
        if ctx is None:
            if models is None:
                models = self._own_models = ModelCache()
            ctx = RunContext(models=models, out_dir=None if out_dir is None else Path(out_dir))
        self._ctx = ctx
        try:
            for node in self.nodes:
                node.setup(ctx)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_models is not None:
            self._own_models.close()
            self._own_models = None
        self._ctx = None

    def __enter__(self) -> "Pipeline":
        if self._ctx is None:
            self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_batch(self, samples: List[Sample]) -> List[Tuple[Sample, Optional[ItemFailure]]]:
        """Every sample through every node, as a batch. An item that fails in a node is dropped
        from the later nodes and comes back with its failure; the others go on. (When a node's
        batch call raises, it is retried one item at a time to find which items fail.)"""
        if self._ctx is None:
            raise RuntimeError("open the pipeline first (pipeline.open(models) or `with pipeline:`)")
        samples = list(samples)
        failures: Dict[int, ItemFailure] = {}
        alive = list(range(len(samples)))
        for node_id, node in zip(self.ids, self.nodes):
            if not alive:
                break
            try:
                done = list(zip(alive, self._call(node, [samples[i] for i in alive])))
            except Exception as err:  # noqa: BLE001 - one bad item must not take its batch down
                if len(alive) == 1:
                    failures[alive[0]] = ItemFailure(node_id, err)
                    done = []
                else:
                    done = []
                    for i in alive:
                        try:
                            done.append((i, self._call(node, [samples[i]])[0]))
                        except Exception as one_err:  # noqa: BLE001
                            failures[i] = ItemFailure(node_id, one_err)
            for i, sample in done:
                samples[i] = sample
                wrong = _wrongly_typed(node, sample)
                if wrong:
                    failures[i] = ItemFailure(node_id, TypeError(wrong))
            alive = [i for i in alive if i not in failures]
        return [(samples[i], failures.get(i)) for i in range(len(samples))]

    @staticmethod
    def _call(node: Node, batch: List[Sample]) -> List[Sample]:
        out = node.process_batch(batch)
        if not isinstance(out, list) or len(out) != len(batch) or not all(isinstance(s, Sample) for s in out):
            raise TypeError(f"{node.id}.process_batch must return a list of {len(batch)} Samples")
        return out

    def __call__(self, item: Any, models: Optional[ModelCache] = None) -> Sample:
        """One item (a Sample, an HxWx3 image, or an image path) through the pipeline, in memory.
        Opens the pipeline on first use (close it, or use `with pipeline:`, to free its models)."""
        return self.process([item], models=models)[0]

    def process(self, items: Iterable[Any], models: Optional[ModelCache] = None) -> List[Sample]:
        """Items through the pipeline in batches, in memory; the first failure is raised."""
        if self._ctx is None:
            self.open(models)
        items = [as_sample(x) for x in items]
        out: List[Sample] = []
        for start in range(0, len(items), self.batch_size):
            for sample, failure in self.run_batch(items[start : start + self.batch_size]):
                if failure is not None:
                    err = failure.error
                    if hasattr(err, "add_note"):
                        err.add_note(f"(in pipeline node {failure.stage!r})")
                    raise err
                out.append(sample)
        return out

    def finish(self) -> None:
        if self._ctx is None:
            raise RuntimeError("the pipeline is not open")
        for node in self.nodes:
            node.finish(self._ctx)

    def run(self, inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], out_dir: Union[str, os.PathLike], **kwargs):
        """Run over images, folders, globs, lists or manifests into `out_dir`; see `grounded.pipeline.runner.run`."""
        from .runner import run

        return run(self, inputs, out_dir, **kwargs)


use_pipeline_class(Pipeline)  # what `node | node` makes


def as_sample(item: Any) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, np.ndarray):
        from ..io.image import load_image

        return Sample(image=load_image(item))
    if isinstance(item, (str, os.PathLike)):
        from ..io.image import load_image

        return Sample(image=load_image(item), image_path=str(item), image_id=Path(item).stem)
    raise TypeError(f"cannot make a Sample from {type(item).__name__}; give a Sample, an image array or a path")


def input_types(inputs: Union[Iterable[str], Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    known = Sample.field_types()
    return {name: known.get(name, Any) for name in inputs}


def _node_ids(nodes: Sequence[Node]) -> List[str]:
    """Explicit ids as given; others the node's name, then name_2, name_3 for repeats."""
    taken = {n.node_id for n in nodes if n.node_id}
    ids, counts = [], {}
    for n in nodes:
        if n.node_id:
            ids.append(n.node_id)
            continue
        counts[n.name] = counts.get(n.name, 0) + 1
        candidate = n.name if counts[n.name] == 1 else f"{n.name}_{counts[n.name]}"
        while candidate in taken:
            counts[n.name] += 1
            candidate = f"{n.name}_{counts[n.name]}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


def _wrongly_typed(node: Node, sample: Sample) -> str:
    for name, declared in node.writes.items():
        value = sample.get(name)
        if not value_fits(value, declared):
            return f"{node.id} declares it writes {name!r} as {type_name(declared)} but wrote a {type(value).__name__}"
    return ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
