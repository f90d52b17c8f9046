"""ModelCache: every model a run needs, loaded once and shared by every node and pipeline that
names it, with an explicit lifetime.

    with ModelCache() as models:
        auto = load_pipeline("pipelines/auto_masks.yaml")
        boxes = Pipeline([...])                      # both name mobile_sam: it is loaded once
        auto.run(inputs, out, models=models)
        boxes.run(inputs, out2, models=models)
    # here the models are released

A model is named by kind ("sam", "sam_predictor", ... as loaders are added), a name or path, a
device and a dtype; a path is keyed by its resolved location, so `./m` and `m` are one model.
There is no module-level cache: a cache lives exactly as long as the object the caller holds.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

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


# "torch" and sam/onnx_encoder.py's BACKENDS, spelled out so this module does not import torch.
ENCODER_BACKENDS = ("torch", "onnxruntime", "openvino")


def resolve_device(device: Any) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _load_sam(cache: "ModelCache", name: str, device: str, dtype: Any, image_encoder_backend: str = "torch"):
    from ..sam import from_pretrained

    return from_pretrained(name, device=device, dtype=dtype, image_encoder_backend=image_encoder_backend)


def _load_sam_predictor(cache: "ModelCache", name: str, device: str, dtype: Any, model_kind: str = "sam"):
    # One predictor per model and precision, so its embedding cache (keyed by image content) is
    # shared by every node prompting that model: boxes and points on one image encode it once.
    # Reduced precision runs under autocast over the float32 weights (as `grounded segment
    # --dtype` does), which keeps the per-pixel mask logits in float32.
    from ..sam import SamPredictor

    return SamPredictor(cache.get(model_kind, name, device, None), autocast_dtype=dtype)


DEFAULT_LOADERS: Mapping[str, Any] = {
    "sam": _load_sam,
    "sam_predictor": _load_sam_predictor,
    # The same models with the image encoder run by onnxruntime or OpenVINO (CPU; sam/onnx_encoder.py).
    "sam_onnxruntime": partial(_load_sam, image_encoder_backend="onnxruntime"),
    "sam_predictor_onnxruntime": partial(_load_sam_predictor, model_kind="sam_onnxruntime"),
    "sam_openvino": partial(_load_sam, image_encoder_backend="openvino"),
    "sam_predictor_openvino": partial(_load_sam_predictor, model_kind="sam_openvino"),
    # Other kinds by import path ("module:function"), imported only when a model of that kind is loaded.
    "blip": "grounded.nodes.caption:_load_blip",
    "grounding_dino": "grounded.nodes.detect:_load_grounding_dino",
    "clip": "grounded.nodes.clip:_load_clip",
    "faster_whisper": "grounded.nodes.speech:_load_faster_whisper",
    "openai_whisper": "grounded.nodes.speech:_load_openai_whisper",
    "sd_inpaint": "grounded.edit.diffusion:_load_inpaint_pipeline",
}


def _resolve_loader(loader: Any) -> Loader:
    if isinstance(loader, str):
        import importlib

        module_name, _, attr = loader.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    return loader


class ModelCache:
    """Loads each (kind, name or path, device, dtype) once; `close()` (or leaving the `with`
    block) releases them all. `loaders` adds or replaces kinds: fn(cache, name, device, dtype)."""

    def __init__(self, loaders: Optional[Mapping[str, Loader]] = None, log: Optional[Callable[[str], None]] = None):
        self._loaders: Dict[str, Loader] = {**DEFAULT_LOADERS, **(loaders or {})}
        self._models: Dict[Tuple[str, str, str, str], Any] = {}
        self._closed = False
        self.log = log
        self.load_seconds: Dict[Tuple[str, str, str, str], float] = {}

    def get(self, kind: str, name_or_path: Any, device: Any = "auto", dtype: Any = None) -> Any:
        """The model, loaded now if this cache has not loaded it yet."""
        if self._closed:
            raise RuntimeError("this ModelCache is closed; make a new one")
        if kind not in self._loaders:
            raise ValueError(f"no loader for model kind {kind!r}; known kinds: {sorted(self._loaders)}")
        name = canonical_name(name_or_path)
        device = resolve_device(device)
        torch_dtype = parse_dtype(dtype)
        key = (kind, name, device, str(torch_dtype).replace("torch.", "") if torch_dtype else "float32")
        if key not in self._models:
            start = time.perf_counter()
            self._models[key] = _resolve_loader(self._loaders[kind])(self, name, device, torch_dtype)
            self.load_seconds[key] = time.perf_counter() - start
            if self.log and not kind.endswith("_predictor"):
                self.log(f"loaded {kind} {name} on {device} ({key[3]}) in {self.load_seconds[key]:.1f} s")
        return self._models[key]

    def sam(self, name_or_path: Any, device: Any = "auto", dtype: Any = None):
        return self.get("sam", name_or_path, device, dtype)

    def sam_predictor(self, name_or_path: Any, device: Any = "auto", dtype: Any = None, encoder_backend: str = "torch"):
        """The shared `SamPredictor` of that model (one embedding cache for every node using it);
        `dtype` bf16/fp16 runs it under autocast over the float32 model; `encoder_backend`
        "onnxruntime" or "openvino" runs its image encoder in that runtime (CPU)."""
        if encoder_backend not in ENCODER_BACKENDS:
            raise ValueError(f"unknown encoder_backend {encoder_backend!r}; use one of {list(ENCODER_BACKENDS)}")
        kind = "sam_predictor" if encoder_backend == "torch" else f"sam_predictor_{encoder_backend}"
        return self.get(kind, name_or_path, device, dtype)

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
