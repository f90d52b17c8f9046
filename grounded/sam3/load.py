"""Loading SAM 3 from a hub id (`facebook/sam3`: the Hugging Face cache first, see `grounded.hub`)
or a folder, through transformers' `Sam3Model` and `Sam3Processor`.

`facebook/sam3` is a `Sam3VideoModel` checkpoint (model_type "sam3_video"): the concept model
(`detector_model.*`), the interactive tracker (`tracker_model.*`) and the tracker's own neck
(`tracker_neck.*`) over one vision backbone. The concept model loads with `Sam3Model.from_pretrained`.
The tracker is a `Sam3TrackerModel` whose backbone IS the concept model's (the 454M-parameter
encoder is loaded once and run once per image): it is built on the meta device, its backbone set to
the concept model's, and only its own weights read from the checkpoint, renamed as transformers'
conversion mapping for "sam3_tracker" does (`tracker_neck.` -> `vision_encoder.neck.`,
`tracker_model.X` -> `X`). A concept-only checkpoint (model_type "sam3") loads without a tracker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

SAM3_HUB_ID = "facebook/sam3"
# model_type in config.json -> what loads from it
SAM3_TYPES = {"sam3_video": "concept model and interactive tracker", "sam3": "concept model only"}


def gated_note(repo_id: str) -> str:
    return (f"The SAM 3 weights are gated on the Hugging Face hub: request access at https://huggingface.co/{repo_id} "
            "(accept the license there), log in (`hf auth login`, or set HF_TOKEN) and load it once online so it is "
            "cached, or give the path of a folder that holds it (config.json, model.safetensors, the processor files).")


def sam3_folder(name_or_path: Any, cache_dir=None, revision: Optional[str] = None) -> Path:
    """The local folder of SAM 3 `name_or_path` (a folder, or a hub id resolved cache-first); a
    FileNotFoundError naming every path and id tried, and how to get the gated weights."""
    from ..hub import is_hub_id, local_or_hub_folder

    name = str(name_or_path)
    try:
        return local_or_hub_folder(name, "SAM 3 model", cache_dir, revision)
    except FileNotFoundError as err:
        repo_id = name if is_hub_id(name) and "/" in name else SAM3_HUB_ID
        raise FileNotFoundError(f"{err}\n{gated_note(repo_id)}") from None


def checkpoint_type(folder: Path) -> str:
    """The model_type of the transformers checkpoint in `folder`; a ValueError naming what it is
    when that is not SAM 3."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a transformers SAM 3 folder: it has no config.json")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in SAM3_TYPES:
        architectures = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise ValueError(f"{folder} holds a {model_type!r} checkpoint ({architectures}), not SAM 3: SAM 3 is model_type "
                         + " or ".join(repr(t) for t in SAM3_TYPES) + f" (e.g. {SAM3_HUB_ID}). "
                         + ("Load SAM 1 / SAM 2 checkpoints with grounded.sam or the `sam` model kind."
                            if str(model_type).startswith("sam") else ""))
    return model_type


def load_sam3(name_or_path: Any = SAM3_HUB_ID, device: Any = "auto", dtype: Any = None, cache_dir=None,
              revision: Optional[str] = None, cache_size: int = 2):
    """A `Sam3` (`grounded.sam3.model`) from a hub id or folder: `device` "auto"/"cpu"/"cuda"...,
    `dtype` None/"fp32", "bf16" or "fp16" (the weights are cast), `cache_size` images whose encoder
    features are kept for reuse."""
    from transformers import Sam3Model, Sam3Processor

    from ..device import resolve_device
    from ..pipeline.models import parse_dtype
    from ..transformers_compat import load_checked
    from .model import Sam3

    device = resolve_device(device)
    torch_dtype = parse_dtype(dtype) or torch.float32
    folder = sam3_folder(name_or_path, cache_dir, revision)
    model_type = checkpoint_type(folder)
    what = f"SAM 3 {str(name_or_path)!r}"
    try:
        processor = Sam3Processor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(f"cannot load the processor (image processor and CLIP tokenizer) of {what} from "
                                f"{folder}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    detector = load_checked(Sam3Model, folder, what, dtype=torch_dtype).to(device).eval()
    tracker = shared_backbone_tracker(folder, detector, what) if model_type == "sam3_video" else None
    return Sam3(detector, processor, tracker, name=str(name_or_path), device=device, cache_size=cache_size,
                folder=str(folder))


def shared_backbone_tracker(folder: Path, detector, what: str = "SAM 3"):
    """The checkpoint's `Sam3TrackerModel`, its vision backbone the concept model's own module."""
    from transformers import AutoConfig, Sam3TrackerModel

    with torch.device("meta"):
        tracker = Sam3TrackerModel(AutoConfig.from_pretrained(folder))
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone
    wanted = {name for name in tracker.state_dict() if not name.startswith("vision_encoder.backbone.")}
    dtype = next(detector.parameters()).dtype
    state = {}
    for key, tensor in checkpoint_tensors(folder, lambda k: k.startswith(("tracker_model.", "tracker_neck."))).items():
        name = ("vision_encoder.neck." + key[len("tracker_neck."):] if key.startswith("tracker_neck.")
                else key[len("tracker_model."):])
        if name in wanted:
            state[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    missing = sorted(wanted - set(state))
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing) - 6} more)" if len(missing) > 6 else "")
        raise ValueError(f"the checkpoint of {what} in {folder} lacks {len(missing)} weights of its tracker "
                         f"(tracker_model.* / tracker_neck.*): {shown}")
    tracker.load_state_dict(state, strict=False, assign=True)
    left = [name for name, t in [*tracker.named_parameters(), *tracker.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the tracker of {what} has tensors no checkpoint entry filled: {', '.join(left[:6])}")
    return tracker.to(next(detector.parameters()).device).eval()


def checkpoint_tensors(folder: Path, wanted: Callable[[str], bool]) -> Dict[str, torch.Tensor]:
    """The tensors of the checkpoint in `folder` whose names pass `wanted`, read one by one
    (safetensors, single or sharded; else PyTorch .bin memory-mapped with weights_only)."""
    out: Dict[str, torch.Tensor] = {}
    for name, weight_map in (("model.safetensors", "model.safetensors.index.json"),
                             ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / weight_map).is_file():
            files = sorted(set(json.loads((folder / weight_map).read_text())["weight_map"].values()))
        elif (folder / name).is_file():
            files = [name]
        else:
            continue
        for file in files:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(folder / file), framework="pt") as handle:
                    out.update({k: handle.get_tensor(k) for k in handle.keys() if wanted(k)})
            else:
                state = torch.load(folder / file, map_location="cpu", weights_only=True, mmap=True)
                out.update({k: v for k, v in state.items() if wanted(k)})
        return out
    raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin (nor their sharded index)")
