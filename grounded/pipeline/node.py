"""The Node protocol: a step of a pipeline that declares the `Sample` fields it reads and writes,
and its parameters, so a `Pipeline` can check the wiring before anything runs.

A node:

    class Blur(Node):
        \"\"\"Blur the image (one line: what `grounded nodes` shows).\"\"\"
        name = "blur"                                   # the short name a spec uses
        reads = {"image": np.ndarray}
        writes = {"edited_image": np.ndarray}
        params = {"radius": Param(2.0, float, "blur radius in pixels")}

        def process(self, sample):
            sample.edited_image = blur(sample.image, self.radius)   # params are attributes

`setup(ctx)` loads models once (from `ctx.models`, a shared `ModelCache`); `process_batch(samples)`
defaults to `process` on each sample, and nodes that batch (image encoders) override it;
`finish(ctx)` runs at the end of a run over data (writers assemble their files there). A node
keeps no per-item state between calls.

A node whose call takes long says how far it is with `self.report_progress(done, total)` (work
units of the current call: images, crops, decoder batches), and the run's progress bar moves with
it, within an image too. Automatic masks report per decoder batch of every image:

        def process_batch(self, samples):
            for i, sample in enumerate(samples):
                sample.detections = segment(sample.image, progress=lambda done, total, i=i:
                                            self.report_progress(i + done / total, len(samples)))
            return samples
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence

from ..types import Sample, type_name

if TYPE_CHECKING:
    from .core import Pipeline, RunContext


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """A node parameter: its default (REQUIRED for none), type (int, float, bool, str, list, dict,
    or a tuple of them; by default the default's type), a line of help, and allowed `choices`.

    `fingerprint=False` marks a parameter that does not change results (a device), so changing
    it does not stop a run from being resumed."""

    default: Any = REQUIRED
    type: Any = None
    help: str = ""
    choices: Optional[Sequence[Any]] = None
    fingerprint: bool = True

    SIGNATURE = "Param(default=REQUIRED, type=None, help='', choices=None, fingerprint=True)"

    def problem(self) -> str:
        """What is wrong with this declaration, in words ("" when nothing): a type that is no type
        (`Param(3, "help")` leaves the type out, so the help took its place), help that is no
        text, choices that are no list, a default that is not of the type or not a choice."""
        kinds = self.type if isinstance(self.type, tuple) else (self.type,)
        if self.type is not None and not all(isinstance(kind, type) for kind in kinds):
            example = ""
            if isinstance(self.type, str) and self.default is not REQUIRED and self.default is not None:
                example = f"; e.g. Param({self.default!r}, {type(self.default).__name__}, {self.type!r})"
            return f"its type is {self.type!r}, which is no type (the arguments are {self.SIGNATURE}){example}"
        if not isinstance(self.help, str):
            return f"its help is {self.help!r}, not text (the arguments are {self.SIGNATURE})"
        if self.choices is not None and (isinstance(self.choices, (str, bytes)) or not isinstance(self.choices, Iterable)):
            return f"its choices are {self.choices!r}; give a list of the allowed values"
        if self.default is REQUIRED or self.default is None:
            return ""
        try:
            value = check_param("", "default", Param(self.default, self.type), self.default)
        except ParamError:
            return f"its default {self.default!r} is no {' or '.join(type_name(k) for k in self.kinds())}"
        if self.choices is not None and value not in self.choices:
            return f"its default {self.default!r} is not one of its choices {list(self.choices)}"
        return ""

    def kinds(self) -> tuple:
        if self.type is not None:
            return self.type if isinstance(self.type, tuple) else (self.type,)
        if self.default is REQUIRED or self.default is None:
            return ()
        return (type(self.default),)


class ParamError(ValueError):
    """A parameter that does not exist, has the wrong type or is missing; says which node and the fix."""

    def __init__(self, node: str, param: str, message: str, fix: str = ""):
        self.node, self.param, self.problem, self.fix = node, param, message, fix
        super().__init__(f"{node}: {message}" + (f" ({fix})" if fix else ""))


class NodeDeclarationError(TypeError, ValueError):
    """A Node class declared wrongly (reads/writes/params not dicts, a parameter that is no
    `Param(...)` or a `Param` written wrongly), raised when the class is defined: names the node,
    the parameter and the fix. A ValueError too, so the command line shows it as one line."""


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


# `node | node` makes a Pipeline. pipeline.core builds on this module, so it hands its class over
# when it is imported (always before any node exists: grounded.pipeline imports core first).
_pipeline_class: Any = None


def use_pipeline_class(cls: type) -> None:
    global _pipeline_class
    _pipeline_class = cls


_NODE_ATTRIBUTES = {"name", "reads", "writes", "params", "node_id", "config", "setup", "process",
                    "process_batch", "finish", "close", "describe", "report_progress", "id"}


class Node:
    """Base class of pipeline steps; see the module docstring."""

    name: ClassVar[str] = ""
    reads: Dict[str, Any] = {}
    writes: Dict[str, Any] = {}
    params: ClassVar[Dict[str, Param]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.name:
            cls.name = cls.__name__
        for attr in ("reads", "writes", "params"):
            if not isinstance(getattr(cls, attr), dict):
                what = "parameter names to Param(...)" if attr == "params" else "Sample field names to types"
                raise NodeDeclarationError(f"node {cls.__name__}: {attr} must be a dict of {what}")
        for pname, param in cls.params.items():
            if not isinstance(param, Param):
                raise NodeDeclarationError(f"node {cls.__name__} ({cls.__module__}), parameter {pname!r}: "
                                           f"must be a {Param.SIGNATURE}, got {param!r}")
            if pname in _NODE_ATTRIBUTES or pname.startswith("_"):
                raise NodeDeclarationError(f"node {cls.__name__}: parameter name {pname!r} is reserved (a Node "
                                           "attribute or private); choose another name")
            problem = param.problem()
            if problem:
                raise NodeDeclarationError(f"node {cls.__name__} ({cls.__module__}), parameter {pname!r}: {problem}")

    def __init__(self, *, node_id: Optional[str] = None, **params: Any) -> None:
        self.node_id = node_id
        # Copies, so a node may change what it reads depending on its parameters.
        self.reads = dict(type(self).reads)
        self.writes = dict(type(self).writes)
        self.config: Dict[str, Any] = resolve_params(type(self), params, node_id or self.name)
        for pname, value in self.config.items():
            setattr(self, pname, value)

    # ---- the protocol -----------------------------------------------------------------------

    def setup(self, ctx: "RunContext") -> None:
        """Load what the node needs (models from ctx.models). Called once before processing."""

    def process(self, sample: Sample) -> Optional[Sample]:
        """Process one sample: read its fields, write the declared ones (return it, or None for in place)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_batch")

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        """Process several samples; by default one at a time through `process`."""
        out = []
        for sample in samples:
            result = self.process(sample)
            out.append(sample if result is None else result)
        return out

    def finish(self, ctx: "RunContext") -> None:
        """Called after a run over data has processed every item (writers assemble files here)."""

    def close(self) -> None:
        """Drop references to models and other resources."""

    def report_progress(self, done: float, total: float) -> None:
        """How far the current `process`/`process_batch` call is: `done` of `total` work units, in
        any unit (SegmentAuto: images of the batch, each in decoder batches). The run's progress
        bar moves with it; outside a run that shows progress it does nothing."""
        reporter = self.__dict__.get("_progress_reporter")
        if reporter is not None and total > 0:
            reporter(min(max(float(done) / float(total), 0.0), 1.0))

    # ---- composition and display ------------------------------------------------------------

    def __or__(self, other) -> "Pipeline":
        return _pipeline_class([self, other])

    @property
    def id(self) -> str:
        return self.node_id or self.name

    @classmethod
    def describe(cls) -> str:
        """A few lines: the node's one-line summary, fields and parameters."""
        doc = (cls.__doc__ or "").strip().splitlines()
        lines = [f"{cls.name}: {doc[0] if doc else cls.__name__}"]
        if cls.reads:
            lines.append("  reads:  " + ", ".join(f"{k} ({type_name(t)})" for k, t in cls.reads.items()))
        if cls.writes:
            lines.append("  writes: " + ", ".join(f"{k} ({type_name(t)})" for k, t in cls.writes.items()))
        for pname, p in cls.params.items():
            default = "required" if p.default is REQUIRED else f"default {p.default!r}"
            choices = f"; one of {list(p.choices)}" if p.choices else ""
            lines.append(f"  {pname}: {p.help or ''} ({default}{choices})".replace(":  (", ": ("))
        return "\n".join(lines)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.config.items() if v != type(self).params[k].default}
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({args})"


def report_progress_to(nodes: Iterable[Node], reporter: Optional[Callable[[float], None]]) -> None:
    """Send the nodes' `report_progress` (as the fraction of the current call done) to `reporter`,
    or nowhere (None). The runners call this; a node only reports."""
    for node in nodes:
        node.__dict__["_progress_reporter"] = reporter


def resolve_params(cls: type, given: Dict[str, Any], where: str, defaults: bool = True) -> Dict[str, Any]:
    """The node's parameter values: the given ones checked against the declarations, defaults for
    the rest (unless `defaults` is False: then only the given ones are checked)."""
    declared = cls.params
    values: Dict[str, Any] = {}
    for pname, value in given.items():
        if pname not in declared:
            known = ", ".join(declared) or "no parameters"
            raise ParamError(where, pname, f"unknown parameter {pname!r}",
                             f"{did_you_mean(pname, list(declared))}{cls.name} takes: {known}")
        values[pname] = check_param(where, pname, declared[pname], value)
    for pname, param in declared.items():
        if defaults and pname not in values:
            if param.default is REQUIRED:
                raise ParamError(where, pname, f"parameter {pname!r} is required", f"set {pname}: <{param.help or 'value'}>")
            values[pname] = param.default
    return values


def check_param(where: str, pname: str, param: Param, value: Any) -> Any:
    """The value, converted where that is lossless (int -> float, tuple -> list), or a ParamError."""
    kinds = param.kinds()
    if value is None and (param.default is None or not kinds):
        return value
    if kinds:
        ok = False
        for kind in kinds:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            elif kind is list and isinstance(value, tuple):
                value, ok = list(value), True
            elif kind is int and isinstance(value, bool):
                continue  # True is an int to Python, not to a person
            elif isinstance(value, kind):
                ok = True
            if ok:
                break
        if not ok:
            wanted = " or ".join(type_name(k) for k in kinds) + (" or null" if param.default is None else "")
            raise ParamError(where, pname, f"parameter {pname!r} must be {wanted}, got {type(value).__name__} {value!r}",
                             f"e.g. {pname}: {_example(kinds[0])}")
    if param.choices is not None and value not in param.choices:
        raise ParamError(where, pname, f"parameter {pname!r} is {value!r}, not one of {list(param.choices)}",
                         f"{did_you_mean(str(value), [str(c) for c in param.choices])}use one of {list(param.choices)}")
    return value


def _example(kind) -> str:
    return {int: "8", float: "0.5", bool: "true", str: "text", list: "[...]", dict: "{...}"}.get(kind, "...")
