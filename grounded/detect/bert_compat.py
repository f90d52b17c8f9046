"""What groundingdino-py 0.4.0 needs of transformers' `BertModel` and transformers 5 removed.

Its text encoder wrapper (`groundingdino.models.GroundingDINO.bertwarper.BertModelWarper`) copies
three mask helpers off the BertModel it wraps: `get_extended_attention_mask`, `invert_attention_mask`
and `get_head_mask`. transformers 4.x had them on every model (`ModuleUtilsMixin`); 5.x builds masks
elsewhere and dropped them, so the official model fails at build. `restore_bert_mask_helpers`
puts them back on `BertModel` with 4.57's arithmetic, only where they are missing, and is called
only when the official backend builds a model (never at `import grounded`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

HELPERS = ("get_extended_attention_mask", "invert_attention_mask", "get_head_mask")


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 (attend) -> 0, 0 (ignore) -> the dtype's lowest value: a mask added to attention scores."""
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


def get_extended_attention_mask(self, attention_mask: torch.Tensor, input_shape: Sequence[int],
                                device: Optional[torch.device] = None,
                                dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """[B, T] or [B, T, T] mask of ones and zeros -> [B, 1, 1 or T, T] additive mask (encoder models)."""
    if self.config.is_decoder:
        raise NotImplementedError("the restored get_extended_attention_mask serves encoder BERTs only "
                                  "(groundingdino-py's text encoder)")
    if attention_mask.dim() == 3:
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"Wrong shape for input_ids (shape {tuple(input_shape)}) or attention_mask "
                         f"(shape {tuple(attention_mask.shape)})")
    return _additive(extended, dtype or self.dtype)


def invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] or [B, T, T] mask of ones and zeros -> [B, 1, 1 or T, T] additive mask."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    return _additive(extended, self.dtype)


def get_head_mask(self, head_mask: Optional[torch.Tensor], num_hidden_layers: int,
                  is_attention_chunked: bool = False) -> Union[torch.Tensor, List[None]]:
    """None -> one None per layer; a [heads] or [layers, heads] mask -> [layers, 1, heads, 1, 1]."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    if head_mask.dim() != 5:
        raise ValueError(f"head_mask must have 1, 2 or 5 dimensions, got {head_mask.dim()}")
    head_mask = head_mask.to(self.dtype)
    return head_mask.unsqueeze(-1) if is_attention_chunked else head_mask


def restore_bert_mask_helpers() -> List[str]:
    """Put the helpers transformers 5 dropped back on `BertModel`; returns the names restored
    (none under transformers 4, which has them)."""
    from transformers import BertModel

    restored = []
    for name in HELPERS:
        if not hasattr(BertModel, name):
            setattr(BertModel, name, globals()[name])
            restored.append(name)
    return restored
