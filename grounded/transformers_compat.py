"""The few places where transformers 4.x and 5.x differ for grounded's loaders, in one module, so
that the loaders read the same under both (the project pins 5.x; the goldens in tests/goldens were
made under 4.57.6 by the same loaders). Imported only by code that already loads transformers.

- Image processors: 5.x defaults to a torchvision backend whose resizing gives other pixels than
  4.x's PIL one; `pil_processor_kwargs` asks for PIL under either.
- `from_pretrained` reports: 5.x returns sets and (name, shape, shape) triples where 4.x returned
  lists of names; `load_checked` turns either into one error naming the weights.
- Checkpoint names: 5.x renames some modules inside the model (its Swin backbone) and maps the names
  back when saving; `checkpoint_state` gives the names a checkpoint file holds under either.
- CLIP's `get_text_features` / `get_image_features` return an output object in 5.x (`pooled`).
- 5.x keeps a checkpoint's saved dtype where 4.x loaded float32: loaders pass `dtype` explicitly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".", 1)[0])


def pil_processor_kwargs() -> dict:
    """`from_pretrained` arguments that load an image processor with its PIL backend."""
    return {"use_fast": False} if transformers_major() < 5 else {"backend": "pil"}


def pooled(features):
    """The projected embeddings of CLIP's `get_text_features` / `get_image_features`: a tensor in
    transformers 4, the `pooler_output` of the output object they return in 5."""
    return getattr(features, "pooler_output", features)


def _names(entries) -> List[str]:
    return sorted(str(e[0] if isinstance(e, tuple) else e) for e in entries)


def loading_problems(info: Mapping[str, Any]) -> List[str]:
    """Missing, unexpected and mismatched weights of a `from_pretrained(..., output_loading_info=True)`
    report, in words (empty when the weights fit the config)."""
    problems = []
    for key, words in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                       ("mismatched_keys", "of another shape than the config's")):
        names = _names(info.get(key) or ())
        if names:
            shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
            problems.append(f"{len(names)} {words} ({shown})")
    return problems


def load_checked(model_class, folder: Path, what: str, **kwargs):
    """`model_class.from_pretrained(folder, **kwargs)`, raising a ValueError naming the weights that
    do not fit the config (transformers itself only warns about missing ones, which stay random, and
    raises about shapes without naming them)."""
    model, info = model_class.from_pretrained(folder, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    problems = loading_problems(info)
    if problems:
        raise ValueError(f"the weights of {what} do not fit its config.json: " + "; ".join(problems))
    return model


def checkpoint_state(model) -> Dict[str, Any]:
    """`model`'s state dict under the names its checkpoint files hold (5.x maps some internal names
    back when saving; 4.x saves the state dict as it is). Works on a model built on the meta device."""
    state = model.state_dict()
    if transformers_major() < 5:
        return state
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, state)


def ignored_on_load(model, names: Sequence[str], kind: str) -> List[str]:
    """Which of `names` transformers skips when loading `model` (`kind` "missing": absent from a
    checkpoint, such as an unused final norm; "unexpected": in a checkpoint but rebuilt, such as
    Swin's relative_position_index)."""
    patterns = getattr(model, f"_keys_to_ignore_on_load_{kind}", None) or []
    return [n for n in names if any(re.search(p, n) for p in patterns)]
