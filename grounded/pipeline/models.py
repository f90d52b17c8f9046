"""ModelCache: every model a run needs, loaded once and shared by every node and pipeline that
names it, with an explicit lifetime.

    with ModelCache() as models:
        auto = load_pipeline("pipelines/auto_masks.yaml")
        boxes = Pipeline([...])                      # both name mobile_sam: it is loaded once
        auto.run(inputs, out, models=models)
        boxes.run(inputs, out2, models=models)
    # here the models are released

A model is named by kind ("sam", "blip", ...: each registered by the module that provides it,
`register_loader`), a name or path, a device and a dtype; a path is keyed by its resolved
location, so `./m` and `m` are one model. There is no module-level cache of models: a cache lives
exactly as long as the object the caller holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..device import resolve_device  # noqa: F401  (the one meaning of "auto", re-exported for nodes)

Loader = Callable[["ModelCache", str, str, Any], Any]

_DTYPES = {
    None: None, "auto": None, "fp32": None, "float32": None,
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}
DTYPE_CHOICES = ("fp32", "bf16", "fp16")


def parse_dtype(dtype: Any):
    """None / "fp32" -> None (the checkpoint's float32), "bf16" -> torch.bfloat16, "fp16" -> torch.float16;
    a torch.dtype is returned as is."""
    import torch

    if isinstance(dtype, torch.dtype):
        return None if dtype == torch.float32 else dtype
    key = dtype.lower() if isinstance(dtype, str) else dtype
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {list(DTYPE_CHOICES)}")
    name = _DTYPES[key]
    return None if name is None else getattr(torch, name)


_LOADERS: Dict[str, Loader] = {}


def register_loader(kind: str, loader: Loader) -> None:
    """Make `kind` loadable by every ModelCache: `loader(cache, name, device, dtype)` returns the
    model (`cache` lets a loader build on another kind, as a SAM predictor builds on its SAM).
    The module that provides a kind registers it; the nodes do, for the kinds they use."""
    _LOADERS[kind] = loader


def registered_kinds() -> List[str]:
    return sorted(_LOADERS)


class ModelCache:
    """Loads each (kind, name or path, device, dtype) once; `close()` (or leaving the `with`
    block) releases them all. `loaders` adds or replaces kinds for this cache only:
    fn(cache, name, device, dtype)."""

    def __init__(self, loaders: Optional[Mapping[str, Loader]] = None, log: Optional[Callable[[str], None]] = None):
        self._loaders: Dict[str, Loader] = dict(loaders or {})
        self._models: Dict[Tuple[str, str, str, str], Any] = {}
        self._closed = False
        self.log = log
        self.load_seconds: Dict[Tuple[str, str, str, str], float] = {}

    def get(self, kind: str, name_or_path: Any, device: Any = "auto", dtype: Any = None) -> Any:
        """The model, loaded now if this cache has not loaded it yet."""
        if self._closed:
            raise RuntimeError("this ModelCache is closed; make a new one")
        loader = self._loaders.get(kind) or _LOADERS.get(kind)
        if loader is None:
            raise ValueError(f"no loader for model kind {kind!r}; known kinds: {sorted(set(self._loaders) | set(_LOADERS))} "
                             "(a kind is registered by the module that provides it when that module is imported: "
                             "the node modules register the kinds their nodes load)")
        name = canonical_name(name_or_path)
        device = resolve_device(device)
        torch_dtype = parse_dtype(dtype)
        key = (kind, name, device, str(torch_dtype).replace("torch.", "") if torch_dtype else "float32")
        if key not in self._models:
            start = time.perf_counter()
            self._models[key] = loader(self, name, device, torch_dtype)
            self.load_seconds[key] = time.perf_counter() - start
            if self.log and not kind.endswith("_predictor"):
                self.log(f"loaded {kind} {name} on {device} ({key[3]}) in {self.load_seconds[key]:.1f} s")
        return self._models[key]

    def loaded(self) -> List[Tuple[str, str, str, str]]:
        """Keys (kind, name, device, dtype) of what is loaded, in load order."""
        return list(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def close(self) -> None:
        """Release every model (and the GPU memory they held)."""
        had_cuda = any(key[2].startswith("cuda") for key in self._models)
        self._models.clear()
        self._closed = True
        if had_cuda:
            import torch

            torch.cuda.empty_cache()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ModelCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._models)} loaded"
        return f"ModelCache({state})"


def canonical_name(name_or_path: Any) -> str:
    """A path that exists -> its resolved absolute path; anything else (a known name, a hub id) as given."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    return text
