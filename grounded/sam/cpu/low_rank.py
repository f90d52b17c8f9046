"""SAM's mask decoder for many prompts on one image, without ever forming a prompt's image tokens.

Without a mask prompt every prompt starts from the same image tokens K0 (HW x C, HW = 4096), and
each layer changes them only by a thin update, keys <- LayerNorm(keys + b + A^T U), where A
(K x HW) is the image tokens' attention to the prompt's K = heads x tokens entries and U (K x C)
their values. So the tokens of every layer keep the form

    keys = s * Z + B^T W + c

with Z (HW x C) the same for every prompt (computed once per image), s a per-token scale, B
(K' x HW) per-token weights of a few rows W (K' x C) and c a constant row. What the decoder does
with image tokens is linear in them (attention projections, the first upscaling product), or needs
their LayerNorm statistics, which follow from the same form:

    |x_j - mean(x_j)|^2 = s_j^2 |Zc_j|^2 + 2 s_j B_j . (Wc Zc_j) + B_j^T (Wc Wc^T) B_j   (c: centred)

and W's rows are per-head vectors times fixed matrices, so Wc Zc^T comes from a product shared by
all prompts too. Per prompt the work is products of the thin B with small matrices: with the
upscaling, about half the arithmetic of the regrouped evaluation (fast_decoder.py), which forms
the tokens of every layer (about 0.9 against 1.6 GFLOP per prompt for SAM's decoder).

Inference only, float32, for a shared dense embedding (no mask prompt): the wing's decoder
(decoder.py) runs it through the same layer loop as the explicit tokens. Equal to the reference up
to float rounding (tests/test_sam_paths.py).
"""

import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .regrouped import split_heads


class SharedProducts:
    """Prompt-independent products, computed on first use and kept for every chunk of one call, and
    for every call on one image (cache.py). Chunks may run on several threads (threads.py): a product
    is computed once, the others wait."""

    def __init__(self) -> None:
        self._values: Dict[tuple, torch.Tensor] = {}
        self._lock = threading.RLock()  # reentrant: a product's computation may get another

    @property
    def filled(self) -> bool:
        return bool(self._values)

    def get(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self._values.get(key)
        if value is None:
            with self._lock:
                value = self._values.get(key)
                if value is None:
                    value = self._values[key] = compute()
        return value


@dataclass
class Rows:
    """Rows of W: an attention's values through its output projection (row (h, t) =
    vectors[:, h, t] @ matrix[h]), or fixed rows: shared by every prompt (K x C) or one set per
    prompt (N x K x C)."""

    vectors: Optional[torch.Tensor]  # N x h x T x d; None for fixed rows
    matrix: torch.Tensor  # h x d x C, or K x C / N x K x C fixed rows
    key: str  # names `matrix` for shared products

    @property
    def per_prompt(self) -> bool:  # fixed rows of each prompt's own: nothing about them is shared
        return self.vectors is None and self.matrix.dim() == 3

    @property
    def count(self) -> int:  # K
        return self.matrix.shape[-2] if self.vectors is None else self.vectors.shape[1] * self.vectors.shape[2]

    def explicit(self, n: int) -> torch.Tensor:  # N x K x C
        if self.vectors is None:
            return self.matrix if self.per_prompt else self.matrix.expand(n, -1, -1)
        _, h, t, _ = self.vectors.shape
        return torch.einsum("nhtd,hdc->nhtc", self.vectors, self.matrix).reshape(n, h * t, -1)

    def times_shared(self, shared_t: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
        """rows @ S^T for a prompt-independent S^T given per head (h x d x HW) for vector rows, or as
        K x HW (N x K x HW per prompt) for fixed rows, written to out (N x K x HW)."""
        if self.vectors is None:
            return out.copy_(shared_t.expand(n, -1, -1))
        _, h, t, d = self.vectors.shape
        product = self.vectors.transpose(0, 1).reshape(h, n * t, d) @ shared_t  # h x NT x HW
        out.view(n, h, t, -1).copy_(product.view(h, n, t, -1).transpose(0, 1))
        return out


@dataclass
class LowRankTokens:
    """Image tokens of N prompts as scale * Z + B^T W + constant (module docstring)."""

    scale: Optional[torch.Tensor]  # N x 1 x HW; None means 1
    shared: torch.Tensor  # HW x C (Z)
    key: str  # names Z and constant for shared products
    rows: List[Rows]
    weights: Optional[torch.Tensor]  # N x K' x HW (B), the rows' in order; None without rows
    constant: torch.Tensor  # C
    _explicit: Optional[torch.Tensor] = field(default=None, repr=False)  # W, N x K' x C, on first use

    def _rows_times(self, weight: torch.Tensor) -> torch.Tensor:
        """W @ weight^T: N x K' x out (W built once per token set: scores, sums and projections reuse it)."""
        if self._explicit is None:
            n = self.weights.shape[0]
            self._explicit = torch.cat([r.explicit(n) for r in self.rows], dim=1)
        return self._explicit @ weight.T

    def scores(self, products: SharedProducts, proj: nn.Linear, pe: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """vectors (N x h x T x d) dotted with each head of proj(tokens + pe): N x h x T x HW."""
        n, h, t, d = vectors.shape
        hw = self.shared.shape[0]
        # Per head, d x HW: the products come out in that layout when the weight is the left factor.
        z = products.get((self.key, id(proj), "z"), lambda: (proj.weight @ self.shared.T).view(h, d, hw))
        e = products.get((self.key, id(proj), "e"),
                         lambda: torch.addmm(proj.bias[:, None], proj.weight, (pe + self.constant).T).view(h, d, hw))
        per_head = vectors.transpose(0, 1).reshape(h, n * t, d)
        # The head-major products land prompt-major in `out` in one pass each; the rows' term adds in place.
        out = vectors.new_empty(n, h, t, hw)
        if self.scale is None:
            both = products.get((self.key, id(proj), "z+e"), lambda: z + e)
            out.copy_((per_head @ both).view(h, n, t, hw).transpose(0, 1))
        else:
            torch.addcmul((per_head @ e).view(h, n, t, hw).transpose(0, 1), (per_head @ z).view(h, n, t, hw).transpose(0, 1),
                          self.scale[:, None], out=out)
        if self.weights is not None:
            rw = self._rows_times(proj.weight).view(n, -1, h, d)  # N x K' x h x d
            rq = torch.einsum("nkhd,nhtd->nhtk", rw, vectors).reshape(n, h * t, -1)
            out.view(n, h * t, hw).baddbmm_(rq, self.weights)
        return out

    def aggregate(self, products: SharedProducts, proj: nn.Linear, probs: torch.Tensor) -> torch.Tensor:
        """probs (N x h x T x HW, rows summing to one) times each head of proj(tokens): N x h x T x d."""
        n, h, t, hw = probs.shape
        d = proj.weight.shape[0] // h
        z = products.get((self.key, id(proj), "zv"), lambda: (self.shared @ proj.weight.T).view(hw, h, d).transpose(0, 1).contiguous())
        constant = F.linear(self.constant, proj.weight, proj.bias).view(1, h, 1, d)
        # Head-major for the shared product, the scale applied in the same pass.
        weighted = probs.new_empty(h, n, t, hw)
        if self.scale is None:
            weighted.copy_(probs.transpose(0, 1))
        else:
            torch.mul(probs.transpose(0, 1), self.scale[None], out=weighted)
        out = (weighted.view(h, n * t, hw) @ z).view(h, n, t, d).transpose(0, 1)
        if self.weights is not None:
            pb = probs.reshape(n, h * t, hw) @ self.weights.transpose(1, 2)  # N x hT x K'
            rw = self._rows_times(proj.weight).view(n, -1, h, d)
            out = out + torch.einsum("nhtk,nkhd->nhtd", pb.view(n, h, t, -1), rw)
        return out + constant

    def projector(self, products: SharedProducts, weight: torch.Tensor, bias: torch.Tensor, name: str):
        """A function (i, start, stop) -> (tokens @ weight^T + bias)[i, start:stop] for prompt i."""
        z = products.get((self.key, name), lambda: self.shared @ weight.T)
        base = self.constant @ weight.T + bias
        weights = self.weights
        rw = self._rows_times(weight) if weights is not None else None

        def rows(i: int, start: int, stop: int) -> torch.Tensor:
            if self.scale is None:
                out = z[start:stop] + base
            else:
                out = torch.addcmul(base, self.scale[i, 0, start:stop, None], z[start:stop])
            if weights is not None:
                out.addmm_(weights[i, :, start:stop].T, rw[i])
            return out

        return rows

    def normalized_update(self, products: SharedProducts, attn_map: torch.Tensor, values: torch.Tensor,
                          out_proj: nn.Linear, norm: nn.LayerNorm, name: str, buffer: torch.Tensor) -> "LowRankTokens":
        """LayerNorm(tokens + out_proj(attn_map^T @ values)): attn_map N x (h*T) x HW, values N x h x T x d.
        buffer (N x rows x HW) holds the weights B of every layer: this one's rows follow the present ones."""
        n, h, t, d = values.shape
        hw, c = self.shared.shape
        key = f"{self.key}/{name}"
        out_matrix = products.get((name, "out"), lambda: out_proj.weight.T.reshape(h, d, c))
        # Each head's attention over the T tokens sums to one, so the last token's weight is one minus
        # the others': sum_t a_t u_t = sum_{t<T} a_t (u_t - u_T) + u_T. The last tokens' rows join the
        # constant row, which becomes each prompt's own: h - 1 fewer rows per layer.
        last = torch.einsum("nhd,hdc->nc", values[:, :, -1], out_matrix)
        constant = (self.constant + out_proj.bias + last)[:, None]  # N x 1 x C
        rows = self.rows + [Rows(values[:, :, :-1] - values[:, :, -1:], out_matrix, f"{name}/U"),
                            Rows(None, constant, f"{key}/const")]
        present = 0 if self.weights is None else self.weights.shape[1]
        if present and self.weights.data_ptr() != buffer.data_ptr():
            buffer[:, :present] = self.weights
        added = h * (t - 1)
        weights = buffer[:, : present + added + 1]  # N x K'' x HW
        weights[:, present : present + added].view(n, h, t - 1, hw).copy_(attn_map.view(n, h, t, hw)[:, :, :-1])
        weights[:, -1] = 1.0

        def shared(r: Rows, tag: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
            return compute() if r.per_prompt else products.get((r.key, key, tag), compute)

        # Centre every part over the channels (linear), then the variance from the form.
        zc = products.get((key, "zc"), lambda: self.shared - self.shared.mean(1, keepdim=True))
        zc_sq = products.get((key, "zc2"), lambda: (zc * zc).sum(1))
        centred = [Rows(r.vectors, shared(r, "c", lambda r=r: r.matrix - r.matrix.mean(-1, keepdim=True)), r.key + "/c")
                   for r in rows]
        explicit = torch.cat([r.explicit(n) for r in centred], dim=1)  # N x K'' x C
        # cross = rows . Zc (Zc is centred, so the uncentred matrices give the same): shared per matrix.
        cross = weights.new_empty(weights.shape)
        start = 0
        for r in rows:
            r.times_shared(shared(r, "zc^T", lambda r=r: r.matrix @ zc.T), n, out=cross[:, start : start + r.count])
            start += r.count
        s = self.scale
        gram = explicit @ explicit.transpose(1, 2)  # N x K'' x K''
        # sum_k B_k (G B + 2 s cross)_k = B^T G B + 2 s B . cross, all in place in `cross`
        if s is None:
            cross.baddbmm_(gram, weights, beta=2.0)
        else:
            cross.mul_(2 * s).baddbmm_(gram, weights)
        sum_sq = cross.mul_(weights).sum(1, keepdim=True)  # N x 1 x HW
        sum_sq += zc_sq if s is None else s * s * zc_sq
        rstd = torch.rsqrt(sum_sq / c + norm.eps)  # N x 1 x HW
        gamma = norm.weight
        new_key = f"{key}/ln"
        return LowRankTokens(
            scale=rstd if s is None else rstd * s,
            shared=products.get((new_key, "z"), lambda: zc * gamma),
            key=new_key,
            rows=[Rows(r.vectors, shared(r, "g", lambda r=r: r.matrix * gamma), r.key + "/g") for r in centred],
            weights=weights.mul_(rstd),
            constant=norm.bias,
        )


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, h, t, d = x.shape
    return x.transpose(1, 2).reshape(n, t, h * d)


@dataclass
class LowRankImage:
    """The image tokens of N prompts in low-rank form with what evaluating them needs: one of the two
    forms the wing's layer loop runs on (decoder.py; the other is regrouped.ExplicitImage)."""

    tokens: LowRankTokens
    products: SharedProducts
    pe: torch.Tensor  # HW x C
    buffer: torch.Tensor  # N x rows x HW: the weights B of every layer, this layer's after the present ones

    @classmethod
    def start(cls, products: SharedProducts, image_tokens: torch.Tensor, image_pe: torch.Tensor, transformer,
              n: int, t: int) -> "LowRankImage":
        """image_tokens and image_pe 1 x HW x C (the dense embedding already added); N prompts of T tokens."""
        tokens = LowRankTokens(None, image_tokens[0], "k0", [], None, image_tokens.new_zeros(image_tokens.shape[2]))
        # Every layer adds h*(T-1) attention rows and a constant row to the weights B; one buffer holds them all.
        rows = sum(layer.cross_attn_image_to_token.num_heads * (t - 1) + 1 for layer in transformer.layers)
        return cls(tokens, products, image_pe[0], image_tokens.new_empty(n, rows, image_tokens.shape[1]))

    def attended_by(self, attn, q_in: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (N x T x C, with their positional encoding) attend to the image tokens."""
        return _tokens_to_image(attn, self.products, self.tokens, self.pe, q_in)

    def updated(self, attn, norm: nn.LayerNorm, k_in: torch.Tensor, v_in: torch.Tensor, name: str) -> "LowRankImage":
        """norm(tokens + attention of the image tokens to the prompt tokens (keys k_in, values v_in))."""
        h = attn.num_heads
        k = split_heads(attn.k_proj(k_in), h)
        v = split_heads(attn.v_proj(v_in), h)
        scores = self.tokens.scores(self.products, attn.q_proj, self.pe, k * k.shape[-1] ** -0.5)
        attn_map = torch.softmax(scores, dim=2).reshape(k.shape[0], -1, scores.shape[-1])  # over the T tokens
        tokens = self.tokens.normalized_update(self.products, attn_map, v, attn.out_proj, norm, name, self.buffer)
        return LowRankImage(tokens, self.products, self.pe, self.buffer)

    def projector(self, weight: torch.Tensor, bias: torch.Tensor, name: str):
        """(i, start, stop) -> (tokens @ weight^T + bias)[i, start:stop] for prompt i."""
        return self.tokens.projector(self.products, weight, bias, name)


def _tokens_to_image(attn, products: SharedProducts, keys: LowRankTokens, pe: torch.Tensor, q_in: torch.Tensor) -> torch.Tensor:
    q = split_heads(attn.q_proj(q_in), attn.num_heads)
    probs = torch.softmax(keys.scores(products, attn.k_proj, pe, q * q.shape[-1] ** -0.5), dim=-1)
    return attn.out_proj(_merge_heads(keys.aggregate(products, attn.v_proj, probs)))
