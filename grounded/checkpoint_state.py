"""What a resumable training checkpoint keeps besides the weights: the global random states (torch,
Python, NumPy, CUDA) in a form torch.load(weights_only=True) reads back, and config values as plain
containers. Shared by grounded.sam.training and grounded.mae."""

import random

import numpy as np
import torch


def plain(value):
    """Tuples as lists, so what torch.load(weights_only=True) reads back compares equal to a fresh value."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def tuples(value):
    """Lists as tuples again (random.setstate wants its state as nested tuples)."""
    return tuple(tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": plain(random.getstate()),
            "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(saved: dict) -> None:
    """Set the global random states that `rng_state` captured."""
    torch.set_rng_state(saved["torch"])
    random.setstate(tuples(saved["python"]))
    n = saved["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    if saved.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
