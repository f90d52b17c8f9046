"""A saved model folder rewritten as if it had been saved in bfloat16 (every floating tensor of its
safetensors files cast, its config.json files saying so), to test that loaders give float32 unless
asked: transformers 5 keeps a checkpoint's saved dtype where 4.x loaded float32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Union


def bfloat16_copy(folder: Union[str, Path], out: Union[str, Path]) -> Path:
    """A copy of `folder` at `out` with its weights in bfloat16; returns `out`."""
    import torch
    from safetensors.torch import load_file, save_file

    out = Path(shutil.copytree(folder, out))
    for weights in out.rglob("*.safetensors"):
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(weights).items()}
        save_file(state, str(weights), metadata={"format": "pt"})
    for config_file in out.rglob("config.json"):
        config = json.loads(config_file.read_text())
        if "model_type" in config or "architectures" in config:
            config.update(dtype="bfloat16", torch_dtype="bfloat16")  # (5.x's and 4.x's names)
            config_file.write_text(json.dumps(config, indent=2))
    return out
