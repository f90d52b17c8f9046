"""The files of an official Grounding DINO release, read safely: the `.py` config parsed (never
run) and the checkpoint read with `weights_only=True`. Both the groundingdino-py backend
(`official`) and the converter to transformers (`convert`) start here."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Dict, Union


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """An official config file's settings, without executing it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Grounding DINO config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix != ".py":
        raise ValueError(f"Grounding DINO config {path} must be a .py (like GroundingDINO_SwinT_OGC.py) or .json file")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise ValueError(f"config {path} is not valid Python: {err}") from None
    cfg: Dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"config {path} line {node.lineno}: only `name = value` assignments are read "
                             "(the file is parsed, not run)")
        try:
            cfg[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"config {path} line {node.lineno}: the value of {node.targets[0].id!r} is not a literal "
                             "(numbers, strings, lists, dicts, True/False/None)") from None
    if "_base_" in cfg:
        raise ValueError(f"config {path} inherits from {cfg['_base_']!r}; give the complete config file")
    return cfg


def load_official_state_dict(checkpoint: Union[str, Path]) -> Dict[str, Any]:
    """The state dict of an official checkpoint ({"model": ...} or a bare state dict), `module.`
    prefixes removed; read with weights_only=True (a pickle carrying code is refused)."""
    import pickle

    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"Grounding DINO checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path} is not a plain weights file (refused to unpickle code): {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
