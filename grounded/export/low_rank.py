"""The split form's per-prompt graph without forming the image tokens of any block after the first.

Without a mask prompt, every prompt's image tokens start as the same `src` (embedding + no-mask
embedding). A block changes them by its image-to-token attention, whose output is P R: P (HW x hT),
each pixel's attention over the T tokens per head, and R (hT x C), the tokens' values through the
output projection; then a LayerNorm. So after any block the tokens keep the form

    keys = alpha * Z + B W + d

with Z (HW x C) the same for every prompt, alpha a per-pixel scale, B (HW x K) per-prompt weights
of a few rows W (K x C) and d a constant row (the grounded/sam/cpu/low_rank.py form). What the decoder
does with the tokens is linear (the attention projections, the first upscaling convolution, whose
2x2 stride-2 kernel sees one pixel), or needs their LayerNorm statistics, which follow from the same
form:

    |keys_j - mean|^2 = alpha_j^2 |Zc_j|^2 + 2 alpha_j B_j . (Wc Zc_j) + B_j (Wc Wc^T) B_j^T   (c: centred)

Every W row is a token's value vector times a fixed matrix (or a fixed row), so Wc Zc^T comes from
products of Z shared by all prompts. `Shared` names each product of Z: the per-image graph computes
them (the same code, run on a dummy prompt: `image_products`), the per-prompt graph takes them as inputs
(`LowRankPromptDecoder`). Per prompt the work is products of the thin B with small matrices: about a
third of the standard decoder's multiply-adds for SAM's two blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sam.model import Sam
from .decoder import PromptEmbedder


class Shared:
    """Prompt-independent tensors by name: computed (and recorded in order) when `inputs` is None,
    else read from `inputs` (the per-prompt graph's inputs)."""

    def __init__(self, inputs: Optional[Dict[str, Tensor]] = None) -> None:
        self.inputs = inputs
        self.values: Dict[str, Tensor] = {}

    def get(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        if self.inputs is not None:
            return self.inputs[name]
        if name not in self.values:
            self.values[name] = compute()
        return self.values[name]


def lazy(compute: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """A tensor computed on first use only (image tokens Z: never formed by the per-prompt graph)."""
    cache: List[Tensor] = []

    def value() -> Tensor:
        if not cache:
            cache.append(compute())
        return cache[0]

    return value


def centred(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


@dataclass
class RowBlock:
    """Rows of W: token value vectors V (h x T x d) times a fixed F (h*d x C), row (h, t) =
    V[h, t] @ F[h], or one fixed row (V None, F 1 x C)."""

    name: str
    values: Optional[Tensor]
    fixed: Tensor

    def explicit(self) -> Tensor:  # K x C
        if self.values is None:
            return self.fixed
        h, t, d = self.values.shape
        return torch.einsum("htd,hdc->htc", self.values, self.fixed.view(h, d, -1)).reshape(h * t, -1)

    def times_shared(self, shared: Tensor) -> Tensor:
        """rows @ Zc^T from shared F @ Zc^T (h*d x HW, or 1 x HW): K x HW."""
        if self.values is None:
            return shared
        h, t, d = self.values.shape
        return (self.values @ shared.view(h, d, -1)).reshape(h * t, -1)


@dataclass
class LowRankKeys:
    """keys = alpha * Z + B W + d (module docstring); Z lazy, named by `stage` for shared products."""

    stage: str
    z: Callable[[], Tensor]
    alpha: Tensor  # HW x 1
    weights: List[Tensor]  # B blocks, HW x K_i, in the order of rows
    rows: List[RowBlock]
    constant: Tensor  # C (weight-only)

    def linear(self, shared: Shared, name: str, weight: Tensor, bias: Optional[Tensor], pe: Optional[Tensor]) -> Tensor:
        """(keys [+ pe]) @ weight^T + bias: HW x out."""
        zw = shared.get(f"{self.stage}.{name}.z", lambda: self.z() @ weight.T)

        def constant() -> Tensor:
            c = self.constant @ weight.T + (0 if bias is None else bias)
            return c.unsqueeze(0) + (0 if pe is None else pe @ weight.T)

        out = self.alpha * zw + shared.get(f"{self.stage}.{name}.c", constant)
        if self.rows:
            b = torch.cat(self.weights, dim=1)
            w = torch.cat([r.explicit() for r in self.rows], dim=0)
            out = out + b @ (w @ weight.T)
        return out


def layer_norm(keys: LowRankKeys, shared: Shared, norm: nn.LayerNorm, stage: str) -> LowRankKeys:
    """LayerNorm(keys), in the same form (alpha, B and the rows' fixed parts rescaled)."""
    zc = lazy(lambda: centred(keys.z()))
    norms = shared.get(f"{keys.stage}.zc_norm", lambda: (zc() ** 2).sum(-1, keepdim=True))  # HW x 1
    rows = [RowBlock(r.name, r.values, centred(r.fixed)) for r in keys.rows]
    products = [shared.get(f"{keys.stage}.{r.name}.fz", lambda r=r: r.fixed @ zc().T) for r in rows]
    b = torch.cat(keys.weights, dim=1)  # HW x K
    wc = torch.cat([r.explicit() for r in rows], dim=0)  # K x C
    q = torch.cat([r.times_shared(p) for r, p in zip(rows, products)], dim=0)  # K x HW
    cross = (b * q.T).sum(-1, keepdim=True)
    quadratic = ((b @ (wc @ wc.T)) * b).sum(-1, keepdim=True)
    channels = wc.shape[-1]
    variance = (keys.alpha ** 2 * norms + 2 * keys.alpha * cross + quadratic) / channels
    scale = torch.rsqrt(variance + norm.eps)  # HW x 1
    g = norm.weight
    return LowRankKeys(
        stage=stage, z=lazy(lambda: zc() * g), alpha=scale * keys.alpha, weights=[scale * w for w in keys.weights],
        rows=[RowBlock(r.name, r.values, r.fixed * g) for r in rows], constant=norm.bias,
    )


def heads(x: Tensor, num_heads: int) -> Tensor:  # N x (h*d) -> h x N x d
    n, c = x.shape
    return x.view(n, num_heads, c // num_heads).transpose(0, 1)


class LowRankDecoder(nn.Module):
    """The decoder's arithmetic with the image tokens in low-rank form; `run(shared, prompt...)`
    serves both graphs of the split form (see the module docstring)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.embedder = PromptEmbedder(model)
        self.mask_decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def run(self, shared: Shared, embedding: Optional[Tensor], point_coords, point_labels, image_size):
        decoder, transformer = self.mask_decoder, self.mask_decoder.transformer
        pe = self.image_pe.flatten(2)[0].T  # HW x C
        first = transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        nh = t2i.num_heads
        src = lazy(lambda: (embedding + self.embedder.no_mask()).flatten(2)[0].T)  # HW x C
        shared.get("src", lambda: src().unsqueeze(0))  # for the mask-prompt graph (decoder.MaskPromptDecoder)
        key0 = shared.get("key0", lambda: heads(t2i.k_proj(src() + pe), nh))
        value0 = shared.get("value0", lambda: heads(t2i.v_proj(src()), nh))
        query0 = shared.get("query0", lambda: heads(i2t.q_proj(src() + pe), nh))

        sparse = self.embedder.sparse(point_coords, point_labels, image_size)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0).unsqueeze(0)
        point_embedding = torch.cat((output_tokens, sparse), dim=1)  # 1 x T x C
        queries = first.token_self_attention(point_embedding, point_embedding)
        queries = first.norm2(queries + self._tokens_attend(t2i, queries + point_embedding, key0, value0))
        queries = first.norm3(queries + first.mlp(queries))
        z0 = lazy(lambda: src() + i2t.out_proj.bias)  # the first update's bias joins the shared tokens
        keys = LowRankKeys("s0", z0, torch.ones(1, 1), [], [], torch.zeros_like(i2t.out_proj.bias))
        keys = self._image_update(keys, shared, first, queries, point_embedding, query0, 0)
        for index, layer in enumerate(transformer.layers[1:], start=1):
            queries = layer.token_self_attention(queries, point_embedding)
            t2i = layer.cross_attn_token_to_image
            k = heads(keys.linear(shared, f"t2i{index}.k", t2i.k_proj.weight, t2i.k_proj.bias, pe), nh)
            v = heads(keys.linear(shared, f"t2i{index}.v", t2i.v_proj.weight, t2i.v_proj.bias, None), nh)
            queries = layer.norm2(queries + self._tokens_attend(t2i, queries + point_embedding, k, v))
            queries = layer.norm3(queries + layer.mlp(queries))
            i2t = layer.cross_attn_image_to_token
            query = heads(keys.linear(shared, f"i2t{index}.q", i2t.q_proj.weight, i2t.q_proj.bias, pe), nh)
            keys = self._image_update(keys, shared, layer, queries, point_embedding, query, index)
        final = transformer.final_attn_token_to_image
        k = heads(keys.linear(shared, "final.k", final.k_proj.weight, final.k_proj.bias, pe), nh)
        v = heads(keys.linear(shared, "final.v", final.v_proj.weight, final.v_proj.bias, None), nh)
        hs = transformer.norm_final_attn(queries + self._tokens_attend(final, queries + point_embedding, k, v))
        return self._masks(keys, shared, hs)

    @staticmethod
    def _tokens_attend(attention, q_tokens: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Tokens (1 x T x C) attending over the image's projected keys and values (h x HW x d)."""
        q = attention._separate_heads(attention.q_proj(q_tokens))  # 1 x h x T x d
        out = F.scaled_dot_product_attention(q, k.unsqueeze(0), v.unsqueeze(0))
        return attention.out_proj(attention._recombine_heads(out))

    def _image_update(self, keys: LowRankKeys, shared: Shared, layer, queries: Tensor, point_embedding: Tensor,
                      query: Tensor, index: int) -> LowRankKeys:
        """norm4(keys + image-to-token attention): the attention adds the rows (P, V Wo^T)."""
        i2t = layer.cross_attn_image_to_token
        nh = i2t.num_heads
        k = heads(i2t.k_proj(queries + point_embedding)[0], nh)  # h x T x d
        v = heads(i2t.v_proj(queries)[0], nh)
        p = torch.softmax(query @ k.transpose(1, 2) / math.sqrt(k.shape[-1]), dim=-1)  # h x HW x T
        hw = p.shape[1]
        weights = keys.weights + [p.transpose(0, 1).reshape(hw, -1)]
        rows = keys.rows + [RowBlock(f"v{index}", v, i2t.out_proj.weight.T)]
        if index > 0:  # the constant row and the update's bias (the first block's bias is in Z)
            weights.append(torch.ones(hw, 1))
            rows.append(RowBlock(f"c{index}", None, (keys.constant + i2t.out_proj.bias).unsqueeze(0)))
        grown = LowRankKeys(keys.stage, keys.z, keys.alpha, weights, rows, keys.constant)
        return layer_norm(grown, shared, layer.norm4, f"s{index + 1}")

    def _masks(self, keys: LowRankKeys, shared: Shared, hs: Tensor):
        """The upscaling channels-last: both 2x2 stride-2 transposed convolutions as products per pixel
        (each output pixel sees one input pixel), the LayerNorm over the last axis; one reorder at the end."""
        decoder = self.mask_decoder
        conv1, norm, act1, conv2, act2 = decoder.output_upscaling
        c_in, c_mid = conv1.weight.shape[:2]
        c_out = conv2.weight.shape[1]
        weight1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * c_mid, c_in)  # rows (dy, dx, c)
        up = keys.linear(shared, "upscale", weight1, conv1.bias.repeat(4), None).reshape(-1, c_mid)  # (pixel, dy, dx) x c
        up = act1(F.layer_norm(up, (c_mid,), norm.weight, norm.bias, norm.eps))
        weight2 = conv2.weight.permute(0, 2, 3, 1).reshape(c_mid, 4 * c_out)  # c x (dy2, dx2, c')
        up = act2((up @ weight2 + conv2.bias.repeat(4)).reshape(-1, c_out))  # (pixel, dy, dx, dy2, dx2) x c'
        tokens = hs[0, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack([mlp(tokens[i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 0)  # M x c'
        masks = up @ hyper_in.T  # rows (y, x, dy, dx, dy2, dx2) x M
        h, w = self.image_pe.shape[-2:]
        masks = masks.view(h, w, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5).reshape(1, -1, 4 * h, 4 * w)
        return masks, decoder.iou_prediction_head(hs[:, 0, :])


DUMMY_PROMPT = (torch.tensor([[[10.0, 10.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]]), torch.tensor([64.0, 64.0]))


class LowRankImageProducts(nn.Module):
    """The per-image graph: image_embeddings -> the shared products, in `names` order."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.decoder = LowRankDecoder(model)

    def forward(self, image_embeddings: Tensor):
        shared = Shared()
        self.decoder.run(shared, image_embeddings, *DUMMY_PROMPT)
        return tuple(shared.values.values())

    def names(self, example: Tensor) -> List[str]:
        shared = Shared()
        with torch.no_grad():
            self.decoder.run(shared, example, *DUMMY_PROMPT)
        return list(shared.values)


class LowRankPromptDecoder(nn.Module):
    """The per-prompt graph: (point_coords, point_labels, image_size, *shared products in `names`
    order) -> (low_res_logits 1x4x256x256, iou_predictions 1x4)."""

    def __init__(self, model: Sam, names: List[str]) -> None:
        super().__init__()
        self.decoder = LowRankDecoder(model)
        self.names = [name for name in names if name != "src"]

    def forward(self, point_coords, point_labels, image_size, *products):
        shared = Shared(dict(zip(self.names, products), src=None))
        return self.decoder.run(shared, None, point_coords, point_labels, image_size)
