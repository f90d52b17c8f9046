"""The mask decoder's image-only products, kept between calls on one image.

The low-rank evaluation (low_rank.py) starts from products of the image tokens with the decoder's
weights that every prompt on that image shares: about 57 MB for SAM, and on 2 cores about 50 ms,
more than one prompt's own work. They are kept for the last image embedding the decoder saw.

The contract: the products are reused only for an image embedding, no-mask embedding vector and
positional encoding equal in value to those they were made from, and decoder parameters that are
the same tensors at the same memory (a `.to()`, an assigned parameter or a new state dict renews
them). They are dropped by `clear()` (`grounded.sam.cpu.clear_cache(model)`, which the trainer calls
after each optimiser step), by `train()`/`eval()`, by `load_state_dict`, by `accelerate()`, and when a
gradient reaches a decoder or prompt-encoder parameter that required one when `accelerate()` ran.
Weights written in place by hand (under no_grad, or through `.data`) need `clear_cache(model)`.
"""

import threading
from typing import List, Optional, Sequence, Tuple

import torch

from .low_rank import SharedProducts


class ProductsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: Optional[Tuple[Tuple[torch.Tensor, ...], List[Tuple[torch.Tensor, int]], SharedProducts]] = None
        self.handles: list = []  # hooks that clear it, removed by accelerate(paths="reference")

    def products(self, sources: Sequence[torch.Tensor], parameters: Sequence[torch.Tensor]) -> SharedProducts:
        """The products for these sources (image embedding, no-mask vector, positional encoding) and
        decoder parameters: kept ones if they were made from equal sources, else a new, empty set."""
        identity = [(p, p.data_ptr()) for p in parameters]
        with self._lock:
            entry = self._entry
            if entry is not None and _same(entry[1], identity) and len(entry[0]) == len(sources) and all(
                    a.shape == b.shape and torch.equal(a, b) for a, b in zip(entry[0], sources)):
                return entry[2]
            # Copies: a source changed in place afterwards must not match.
            entry = self._entry = (tuple(s.detach().clone() for s in sources), identity, SharedProducts())
            return entry[2]

    @property
    def held(self) -> Optional[SharedProducts]:
        """The products kept now, if any."""
        entry = self._entry
        return None if entry is None else entry[2]

    def clear(self, *args) -> None:
        """Drop the products (any arguments, from the hooks that call it, are ignored)."""
        with self._lock:
            self._entry = None

    def __getstate__(self):  # a pickled or deep-copied model starts with an empty cache
        return {"empty": True}  # (a false state would skip __setstate__)

    def __setstate__(self, state) -> None:
        self.__init__()


def _same(a: List[Tuple[torch.Tensor, int]], b: List[Tuple[torch.Tensor, int]]) -> bool:
    return len(a) == len(b) and all(p is q and pa == pb for (p, pa), (q, pb) in zip(a, b))
