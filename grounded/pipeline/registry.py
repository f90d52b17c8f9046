"""Node names for specs: a short name (`segment_auto`) or an import path
(`my_package.my_module:MyNode`, or `my_package.my_module.MyNode`). Any subclass of `Node`
importable from PYTHONPATH plugs in by its path, no registration needed.

Short names are registered (`register_nodes`) by the packages that hold the nodes, as
`name -> "module:Class"` (imported only when that node is looked up) or `name -> class`. The
framework knows none of them: the packages listed in `grounded.NODE_PACKAGES` (the built-in
`grounded.nodes`, and any of your own you append) are imported on the first lookup, and
register theirs then.
"""

from __future__ import annotations

import importlib
from typing import Dict, List, Mapping, Optional, Type, Union

from .node import Node, did_you_mean

_REGISTERED: Dict[str, Union[str, type]] = {}
_IMPORTED_PACKAGES: set = set()


class NodeNotFoundError(ValueError):
    """A node name that is neither registered nor an importable Node class; `fix` says what to do."""

    def __init__(self, message: str, fix: str):
        self.problem, self.fix = message, fix
        super().__init__(f"{message} ({fix})")


def register_nodes(nodes: Mapping[str, Union[str, type]]) -> None:
    """Short names for specs: name -> "package.module:Class" (imported when looked up) or a Node class."""
    _REGISTERED.update(nodes)


def registered_nodes() -> Dict[str, Union[str, type]]:
    import grounded

    for package in list(grounded.NODE_PACKAGES):
        if package not in _IMPORTED_PACKAGES:
            importlib.import_module(package)  # registers its nodes
            _IMPORTED_PACKAGES.add(package)
    return dict(_REGISTERED)


def node_names() -> List[str]:
    return sorted(registered_nodes())


def node_class(name: str, extra: Optional[Mapping[str, type]] = None) -> Type[Node]:
    """The Node class for a short name (registered, or in `extra`) or an import path."""
    if extra and name in extra:
        return _checked(extra[name], name)
    registered = registered_nodes()
    if name in registered:
        target = registered[name]
        return _import(target, name) if isinstance(target, str) else _checked(target, name)
    if ":" in name or "." in name:
        return _import(name, name)
    known = sorted(set(registered) | set(extra or {}))
    raise NodeNotFoundError(
        f"unknown node {name!r}",
        f"{did_you_mean(name, known)}built-in nodes: {', '.join(known)}; or name your own Node class "
        "by import path, e.g. my_package.my_module:MyNode",
    )


def _import(path: str, name: str) -> Type[Node]:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise NodeNotFoundError(f"node {name!r} is not a valid import path", "write it as package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise NodeNotFoundError(f"cannot import {module_name!r} for node {name!r} ({err})",
                                "check the module is on PYTHONPATH (or installed) and imports without errors") from None
    cls = getattr(module, attr, None)
    if cls is None:
        found = [a for a in dir(module) if isinstance(getattr(module, a), type) and issubclass(getattr(module, a), Node)
                 and getattr(module, a) is not Node]
        raise NodeNotFoundError(f"module {module_name!r} has no {attr!r} for node {name!r}",
                                f"{did_you_mean(attr, found)}Node classes there: {', '.join(found) or 'none'}")
    return _checked(cls, name)


def _checked(cls, name: str) -> Type[Node]:
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise NodeNotFoundError(f"{name!r} is {cls!r}, not a Node class",
                                "make it a subclass of grounded.pipeline.Node with reads, writes and params")
    return cls


def producers_of(field: str) -> List[str]:
    """Short names of the registered nodes that write `field` (for the wiring check's fixes)."""
    return [name for name in node_names() if field in node_class(name).writes]
