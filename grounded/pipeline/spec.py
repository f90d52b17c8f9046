"""Pipeline spec files (YAML), validated by a schema, with errors that give the file, the line
and the fix.

    # pipelines/auto_masks.yaml
    version: 1
    description: automatic SAM masks -> COCO JSON (RLE) + overlay PNGs
    vars:                          # values --set NAME=VALUE can change; used as ${NAME}
      model: mobile_sam
    batch_size: 4                  # images per encoder batch
    nodes:
      - node: segment_auto         # a built-in short name, or package.module:Class
        id: auto                   # optional; defaults to the node's name (name_2, ... for repeats)
        params:
          model: ${model}
          points_per_side: 32
      - node: write_coco

Everything is checked before a model loads: the file's structure against `SCHEMA`, every node
name, every parameter (name, type, choices), every `${var}`, every `--set`, and the wiring of
the pipeline. All problems are reported together.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .core import IMAGE_INPUTS, Pipeline, PipelineError, _node_ids
from .node import ParamError, did_you_mean, resolve_params

NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"
SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "grounded pipeline spec",
    "type": "object",
    "required": ["nodes"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1, "description": "spec format version"},
        "name": {"type": "string", "description": "shown in progress and run.json (default: the file name)"},
        "description": {"type": "string"},
        "vars": {"type": "object", "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                 "description": "values `--set NAME=VALUE` can change, used in params as ${NAME}"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "items per batch through the nodes"},
        "inputs": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                   "description": "the Sample fields the inputs give (default: image, image_path, image_id)"},
        "nodes": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "required": ["node"], "additionalProperties": False,
                "properties": {
                    "node": {"type": "string", "minLength": 1, "description": "short name or package.module:Class"},
                    "id": {"type": "string", "pattern": NAME, "description": "how --set and messages name this node"},
                    "params": {"type": ["object", "null"], "description": "the node's parameters"},
                },
            },
        },
    },
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class SpecProblem:
    location: str  # "file:line", "file" or "--set KEY=VALUE"
    where: str  # what in the spec, e.g. "nodes[0].params.points_per_side"
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.location}:{where} {self.message}" + (f"\n    fix: {self.fix}" if self.fix else "")


class SpecError(ValueError):
    """Every problem found in a spec, each with its file and line (or --set) and a fix."""

    def __init__(self, problems: Sequence[SpecProblem]):
        self.problems = list(problems)
        super().__init__("invalid pipeline spec:\n" + "\n".join(str(p) for p in self.problems))


def find_spec(name: str) -> Path:
    """A spec path as given, else `pipelines/NAME[.yaml]` beside the package (for `grounded run auto_masks`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parents[2] / "pipelines"
    for candidate in (shipped / name, shipped / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in shipped.glob("*.yaml")) if shipped.is_dir() else []
    raise FileNotFoundError(f"no pipeline spec {name!r}" + (f"; shipped specs in {shipped}: {', '.join(known)}" if known else ""))


def load_pipeline(path, overrides: Sequence[str] = (), *, extra_nodes: Optional[Mapping[str, type]] = None) -> Pipeline:
    """The Pipeline a spec file describes, with `overrides` ("NODE.PARAM=VALUE" or "VAR=VALUE")
    applied. Raises SpecError listing every problem."""
    path = find_spec(str(path))
    text = path.read_text(encoding="utf-8")
    return parse_pipeline(text, str(path), overrides, extra_nodes=extra_nodes)


def _apply_overrides(overrides: Sequence[str], filename: str, ids: List[str], classes: List[type],
                     params: List[Dict[str, Any]], variables: Dict[str, Any], batch_size: int,
                     problems: List[SpecProblem], set_by: Dict[Tuple[int, str], str]) -> int:
    """--set overrides: NODE.PARAM=VALUE sets a parameter, NAME=VALUE a var (or batch_size). Fills `params`,
    `variables` and `set_by` in place, adds to `problems`, and returns the batch size."""
    for raw in overrides:
        key, sep, text_value = raw.partition("=")
        key = key.strip()
        where = f"--set {raw}"
        if not sep or not key:
            problems.append(SpecProblem(where, "", "expected KEY=VALUE", "write NODE.PARAM=VALUE or VAR=VALUE"))
            continue
        if "." in key:
            node_id, _, pname = key.partition(".")
            if node_id not in ids:
                problems.append(SpecProblem(where, "", f"no node {node_id!r} in {filename}",
                                            f"{did_you_mean(node_id, ids)}nodes: {', '.join(ids)}"))
                continue
            i = ids.index(node_id)
            declared = classes[i].params.get(pname)
            params[i][pname] = _typed(text_value, str if declared is not None and str in declared.kinds() else None)
            set_by[(i, pname)] = where
        elif key == "batch_size":
            value = _typed(text_value)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(SpecProblem(where, "", f"batch_size must be a whole number >= 1, got {text_value!r}",
                                            "e.g. --set batch_size=8"))
            else:
                batch_size = value
        elif key in variables:
            variables[key] = _typed(text_value, str if isinstance(variables[key], str) else None)
        else:
            vars_text = ", ".join(variables) or "none"
            problems.append(SpecProblem(where, "", f"{key!r} is neither a var of {filename} nor NODE.PARAM",
                                        f"{did_you_mean(key, list(variables))}vars: {vars_text}; nodes: {', '.join(ids)} "
                                        f"(set a node parameter as NODE.PARAM=VALUE, e.g. {ids[0]}.{next(iter(classes[0].params), 'param')}=...)"))
    return batch_size


def _build_nodes(entries: List[Dict[str, Any]], classes: List[type], ids: List[str], params: List[Dict[str, Any]],
                 variables: Dict[str, Any], set_by: Dict[Tuple[int, str], str], lines: "_Lines",
                 problems: List[SpecProblem]) -> list:
    """${var} substitution, then the nodes themselves (parameter names, types, choices); every bad
    parameter is added to `problems`."""
    nodes = []
    for i, (entry, cls) in enumerate(zip(entries, classes)):
        values = {}
        for pname, value in params[i].items():
            try:
                values[pname] = _substitute(value, variables)
            except KeyError as err:
                location = set_by.get((i, pname)) or lines.at(("nodes", i, "params", pname))
                problems.append(SpecProblem(location, f"nodes[{i}].params.{pname}", f"unknown var ${{{err.args[0]}}}",
                                            f"{did_you_mean(err.args[0], list(variables))}declare it under `vars:` "
                                            f"(vars: {', '.join(variables) or 'none'})"))
        # Each parameter on its own first, so every bad one is reported, not only the first.
        errors = []
        for pname, value in values.items():
            try:
                resolve_params(cls, {pname: value}, ids[i], defaults=False)
            except ParamError as err:
                errors.append(err)
        if not errors:
            try:
                nodes.append(cls(node_id=entry.get("id"), **values))
            except ParamError as err:
                errors.append(err)
        for err in errors:
            path = ("nodes", i, "params", err.param) if err.param in params[i] else ("nodes", i)
            location = set_by.get((i, err.param)) or lines.at(path)
            problems.append(SpecProblem(location, f"nodes[{i}] ({ids[i]})", err.problem, err.fix))
    return nodes


def parse_pipeline(text: str, filename: str = "<spec>", overrides: Sequence[str] = (), *,
                   extra_nodes: Optional[Mapping[str, type]] = None) -> Pipeline:
    import yaml

    from .registry import NodeNotFoundError, node_class

    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        location = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([SpecProblem(location, "", f"YAML syntax error: {problem}",
                                     "check the indentation (spaces, not tabs) and quote values that contain ': ' or ' #'")]) from None
    lines = _Lines(tree, filename)
    if data is None:
        raise SpecError([SpecProblem(filename, "", "the spec is empty",
                                     "write at least:\n      nodes:\n        - node: segment_auto")])
    problems = _duplicate_keys(tree, filename) + _schema_problems(data, lines)
    if problems:
        raise SpecError(sorted(problems, key=_order))

    entries = data["nodes"]
    variables = dict(data.get("vars") or {})
    batch_size = data.get("batch_size", 4)

    # Node classes first: their names give the default ids that --set uses.
    classes: List[Optional[type]] = []
    for i, entry in enumerate(entries):
        try:
            classes.append(node_class(entry["node"], extra_nodes))
        except NodeNotFoundError as err:
            problems.append(SpecProblem(lines.at(("nodes", i, "node")), f"nodes[{i}]", err.problem, err.fix))
            classes.append(None)
    if problems:
        raise SpecError(problems)
    ids = _node_ids([_Named(e.get("id"), c.name) for e, c in zip(entries, classes)])

    params: List[Dict[str, Any]] = [dict(e.get("params") or {}) for e in entries]
    set_by: Dict[Tuple[int, str], str] = {}
    batch_size = _apply_overrides(overrides, filename, ids, classes, params, variables, batch_size, problems, set_by)
    nodes = _build_nodes(entries, classes, ids, params, variables, set_by, lines, problems)
    if problems:
        raise SpecError(sorted(problems, key=_order))

    try:
        pipeline = Pipeline(nodes, inputs=data.get("inputs", IMAGE_INPUTS), batch_size=batch_size,
                            name=data.get("name") or Path(filename).stem, description=data.get("description", ""))
    except PipelineError as err:
        raise SpecError([
            SpecProblem(lines.at(("nodes", p.index, "node")) if p.index is not None else lines.at(("nodes",)),
                        f"nodes[{p.index}] ({p.node})" if p.index is not None else "", p.message, p.fix)
            for p in err.problems
        ]) from None
    pipeline.spec = {"file": filename, "sha256": hashlib.sha256(text.encode()).hexdigest(),
                     "overrides": list(overrides), "vars": variables}
    return pipeline


# ---- helpers ----------------------------------------------------------------------------------

@dataclass
class _Named:
    node_id: Optional[str]
    name: str


def _order(problem: SpecProblem):
    m = re.search(r":(\d+)$", problem.location)
    return (0 if m else 1, int(m.group(1)) if m else 0)


def _typed(text: str, prefer=None) -> Any:
    """A --set value as YAML reads it (8 -> int, true -> bool, [1, 2] -> list), or the text as is
    where that is what the target takes (a model named "no" stays "no")."""
    import yaml

    if prefer is str:
        return text
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:  # "${n}" alone keeps the var's type
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


class _Lines:
    """Line numbers (1-based) of places in the YAML, found by walking the composed node tree."""

    def __init__(self, tree, filename: str):
        self.tree, self.filename = tree, filename

    def at(self, path: Sequence[Any]) -> str:
        line = self.line(path)
        return f"{self.filename}:{line}" if line else self.filename

    def line(self, path: Sequence[Any]) -> Optional[int]:
        import yaml

        node, line = self.tree, None
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    return line
                node, line = match[1], match[0].start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _duplicate_keys(tree, filename: str) -> List[SpecProblem]:
    import yaml

    problems = []
    stack = [tree] if tree is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if key.value in seen:
                    problems.append(SpecProblem(f"{filename}:{key.start_mark.line + 1}", "",
                                                f"key {key.value!r} appears twice in one mapping (YAML would keep only the last)",
                                                "merge the two into one"))
                seen.add(key.value)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return problems


def _schema_problems(data: Any, lines: _Lines) -> List[SpecProblem]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for err in validator.iter_errors(data):
        path = list(err.absolute_path)
        message, fix, at = _explain(err, path)
        problems.append(SpecProblem(lines.at(at), _where(at) or "(top level)", message, fix))
    return problems


_TYPE_WORDS = {"object": "a mapping (key: value lines)", "array": "a list (lines starting with '- ')",
               "string": "text", "integer": "a whole number", "number": "a number", "boolean": "true or false",
               "null": "empty"}


def _explain(err, path: List[Any]) -> Tuple[str, str, List[Any]]:
    """A message, a fix and the path to point at for one jsonschema error."""
    if err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        key = extra[0]
        fix = did_you_mean(str(key), allowed)
        if path and path[0] == "nodes" and len(path) == 2:
            node = err.instance.get("node", "NAME")
            fix += ("a node's parameters go under `params:`, e.g.\n"
                    f"      - node: {node}\n        params:\n          {key}: {err.instance[key]!r}")
        else:
            fix += f"allowed keys here: {', '.join(allowed)}"
        return f"unknown key {key!r}", fix, path + [key]
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        if missing == "nodes":
            return "no `nodes:` list", "add the steps, e.g.\n      nodes:\n        - node: segment_auto\n        - node: write_coco", path
        return f"no {missing!r}", f"add `{missing}: ...` (the node's short name, e.g. segment_auto)", path
    if err.validator == "type":
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        words = " or ".join(_TYPE_WORDS.get(w, w) for w in wanted)
        return f"must be {words}, not {err.instance!r}", f"write it as {words}", path
    if err.validator == "const":
        return f"is {err.instance!r}", f"set it to {err.validator_value!r}", path
    if err.validator == "minItems":
        return "is empty", f"give at least {err.validator_value} entry", path
    if err.validator == "minimum":
        return f"is {err.instance!r}, below {err.validator_value}", f"use a value >= {err.validator_value}", path
    if err.validator == "minLength":
        return "is empty", "write a node name, e.g. segment_auto", path
    if err.validator == "pattern":
        return (f"{err.instance!r} is not a valid name",
                "use letters, digits, _ and -, starting with a letter or _", path)
    if err.validator == "propertyNames":
        return "has a key that is not a valid var name", "use letters, digits and _, starting with a letter or _", path
    return err.message, "see the spec format in grounded/pipeline/spec.py", path
