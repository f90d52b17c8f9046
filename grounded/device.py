"""One meaning of a device name everywhere (nodes, specs, `ModelCache`, every command):
"auto" (or nothing) is the GPU when torch sees one, else the CPU; any other name is checked
before a model is loaded, so `cuda` on a machine without a GPU says so in words."""

from __future__ import annotations

from typing import Any

AUTO_HELP = "auto (a GPU when torch sees one, else the CPU), cpu, cuda, cuda:N"


def resolve_device(device: Any = "auto", *, what: str = "device") -> str:
    """"auto"/None -> "cuda" or "cpu"; "cpu", "cuda", "cuda:1", "mps", a torch.device -> itself,
    checked: a ValueError naming `what` when that device is not there."""
    import torch

    if device is None or str(device).strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what} {text!r} is not a device; use {AUTO_HELP}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {text!r}: torch sees no CUDA GPU on this machine (no GPU, no driver, or a "
                             f"CPU-only torch build); use {what} cpu, or auto to take a GPU only when there is one")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{what} {text!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{what} {text!r}: Apple's MPS is not available here; use {what} cpu or auto")
    return text
