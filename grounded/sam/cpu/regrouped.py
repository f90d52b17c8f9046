"""The decoder's attentions between a prompt's few tokens and the 4096 image tokens, regrouped
through the few tokens: a projection of the image tokens followed by a product with T tokens becomes
a product with T projected tokens. Softmax rows sum to one, so value and output biases pass through
unchanged, and a key bias adds a constant to each softmax row, which cancels. Same function as the
reference's `Attention`, up to float rounding.

`ExplicitImage` keeps the image tokens as they are (1 shared, or one set per prompt): the form the
wing's layer loop (decoder.py) runs on for mask prompts and for training; prompts without a mask
prompt in float32 inference take the low-rank form (low_rank.py).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    n, t, c = x.shape
    return x.view(n, t, h, c // h).transpose(1, 2)  # n x h x t x d


def tokens_to_image(attn, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N x T x C) attend to image tokens (1 or N x HW x C)."""
    h = attn.num_heads
    n, t, c = q_in.shape
    q = split_heads(attn.q_proj(q_in), h)  # N x h x T x d
    d = q.shape[-1]
    if k_in.shape[0] == 1 or t * h >= attn.internal_dim:
        k = split_heads(attn.k_proj(k_in), h)
        v = split_heads(attn.v_proj(v_in), h)
        out = torch.softmax((q @ k.transpose(-1, -2)) * d**-0.5, dim=-1) @ v
    else:
        w_k = attn.k_proj.weight.view(h, d, c)
        w_v = attn.v_proj.weight.view(h, d, c)
        a = torch.einsum("nhtd,hdc->nhtc", q, w_k).reshape(n, h * t, c)
        g = torch.softmax((a * d**-0.5) @ k_in.transpose(1, 2), dim=-1) @ v_in  # N x hT x C
        out = torch.einsum("nhtc,hdc->nhtd", g.view(n, h, t, c), w_v) + attn.v_proj.bias.view(1, h, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(n, t, h * d))


def image_to_tokens(attn, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                    residual: torch.Tensor) -> torch.Tensor:
    """residual + attention of image tokens (q_in: 1 or N x HW x C) to prompt tokens (N x T x C);
    returns N x HW x C."""
    h = attn.num_heads
    n, t, c = k_in.shape
    k = split_heads(attn.k_proj(k_in), h)  # N x h x T x d
    v = split_heads(attn.v_proj(v_in), h)
    d = k.shape[-1]
    # The output projection folded into the values: N x (h*T) x C.
    u = torch.einsum("nhtd,chd->nhtc", v, attn.out_proj.weight.view(c, h, d)).reshape(n, h * t, c)
    if q_in.shape[0] == 1:  # shared image tokens: their queries once, for every prompt
        shared_q = split_heads(attn.q_proj(q_in), h)[0].transpose(1, 2)  # h x d x HW
        scores = k.transpose(0, 1).reshape(h, n * t, d) @ shared_q  # h x NT x HW
        scores = scores.view(h, n, t, -1).transpose(0, 1)  # N x h x T x HW
    else:
        w_q = attn.q_proj.weight.view(h, d, c)
        b = torch.einsum("hdc,nhtd->nhtc", w_q, k).reshape(n, h * t, c)
        bias = torch.einsum("hd,nhtd->nht", attn.q_proj.bias.view(h, d), k).reshape(n, h * t, 1)
        scores = torch.baddbmm(bias, b, q_in.transpose(1, 2)).view(n, h, t, -1)
    # Softmax over the T prompt tokens of each head; the HW axis stays contiguous (vectorised).
    attn_map = torch.softmax(scores * d**-0.5, dim=2).reshape(n, h * t, -1)
    return torch.baddbmm((residual + attn.out_proj.bias).expand(n, -1, -1), attn_map.transpose(1, 2), u)


@dataclass
class ExplicitImage:
    """Image tokens as they are, 1 (shared by every prompt) or N x HW x C, and their positional
    encoding 1 x HW x C."""

    tokens: torch.Tensor
    pe: torch.Tensor
    _with_pe: Optional[torch.Tensor] = field(default=None, repr=False)  # tokens + pe, on first use

    def with_pe(self) -> torch.Tensor:
        if self._with_pe is None:
            self._with_pe = self.tokens + self.pe
        return self._with_pe

    def attended_by(self, attn, q_in: torch.Tensor) -> torch.Tensor:
        """Prompt tokens (N x T x C, with their positional encoding) attend to the image tokens."""
        return tokens_to_image(attn, q_in, self.with_pe(), self.tokens)

    def updated(self, attn, norm, k_in: torch.Tensor, v_in: torch.Tensor, name: Optional[str] = None) -> "ExplicitImage":
        """norm(tokens + attention of the image tokens to the prompt tokens (keys k_in, values v_in))."""
        tokens = image_to_tokens(attn, self.with_pe(), k_in, v_in, residual=self.tokens)
        return ExplicitImage(norm(tokens), self.pe)

    def projector(self, weight: torch.Tensor, bias: torch.Tensor, name: Optional[str] = None):
        """(i, start, stop) -> (tokens @ weight^T + bias)[i, start:stop] for prompt i."""
        tokens = self.tokens
        return lambda i, start, stop: F.linear(tokens[min(i, len(tokens) - 1), start:stop], weight, bias)
