"""SAM's mask decoder: output tokens through the two-way transformer, then upscaled image
features times per-token hypernetwork weights give masks; an MLP on the IoU token scores them."""

from typing import List, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, tracing


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: Type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        shared_products=None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings: 1 x C x h x w (shared by every prompt) or N x C x h x w (one per prompt);
        sparse: N x T x C; dense: N x C x h x w. Returns low-res masks N x M x 4h x 4w and IoU
        predictions N x M, where M is 3 with multimask_output, else 1.

        shared_products: a `low_rank_decoder.SharedProducts` kept from earlier calls (SamPredictor
        keeps one per image). It is used only while the image embedding, the dense embedding and
        image_pe equal those it was made with (a mask prompt's dense embedding gets products of its
        own); the caller renews it when the weights change."""
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        if self.use_fast_path and not torch.is_grad_enabled():
            return self.predict_masks_fast(
                image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, mask_slice, shared_products
            )
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    # Inference runs the regrouped evaluation (fast_decoder.py); set False for the reference structure.
    use_fast_path: bool = True
    # Prompts per chunk on the fast paths: the low-rank path's per-prompt working set is about 2 MB,
    # so 8 prompts stay in a 32 MB L3; on 2 cores 8 was 1.0-1.1x faster than 4 (bench/README.md).
    prompt_chunk_size: int = 8

    def predict_masks_fast(self, image_embeddings, image_pe, sparse, dense, mask_slice,
                           shared_products=None) -> Tuple[torch.Tensor, torch.Tensor]:
        from . import low_rank_decoder
        from .fast_decoder import run_transformer, share_first_layer, upscale_masks, upscaling_weights
        from .threads import map_chunks

        n = sparse.shape[0]
        if image_embeddings.shape[0] not in (1, n):
            raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {n} prompts: give 1 or {n}")
        _, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).to(sparse.dtype)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
        # A dense embedding that is one broadcast vector (no mask prompt) leaves the image tokens
        # shared by every prompt.
        shared = dense.shape[0] == 1 or dense.stride(0) == 0
        src = image_embeddings + (dense[:1] if shared else dense)
        image_tokens = src.flatten(2).transpose(1, 2)  # B x HW x C, B = 1 when shared
        pe = image_pe.flatten(2).transpose(1, 2)
        wanted = range(self.num_mask_tokens)[mask_slice]
        autocast = torch.is_autocast_enabled(image_tokens.device.type)
        # Shared tokens in float32: the low-rank evaluation (low_rank_decoder.py); otherwise the
        # regrouped one (fast_decoder.py), in fp32 for the mask products under autocast.
        low_rank = image_tokens.shape[0] == 1 and not autocast and image_tokens.dtype == torch.float32
        first_layer = None
        if low_rank:
            products = shared_products
            if products is None or not products.serves(image_embeddings, dense[:1], image_pe):
                products = low_rank_decoder.SharedProducts()
            w1, b1, _, _ = upscaling_weights(self)
        elif image_tokens.shape[0] == 1 and len(self.transformer.layers):
            first_layer = share_first_layer(self.transformer, image_tokens, pe)
        masks = tokens.new_empty(n, len(wanted), 4 * h, 4 * w)

        def decode(chunk: slice) -> torch.Tensor:  # one chunk of prompts: writes its masks, returns its IoUs
            if low_rank:
                hs, tokens_low_rank = low_rank_decoder.run_transformer(self.transformer, products, image_tokens, pe, tokens[chunk])
                first_product = tokens_low_rank.projector(products, w1, b1, "upscale")
                keys = None
            else:
                chunk_src = image_tokens if image_tokens.shape[0] == 1 else image_tokens[chunk]
                hs, keys = run_transformer(self.transformer, chunk_src, pe, tokens[chunk], first_layer)
                if keys.shape[0] != hs.shape[0]:  # a transformer of depth 0 never leaves the shared tokens
                    keys = keys.expand(hs.shape[0], -1, -1)
                first_product = None
            hyper_in = torch.stack([self.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in wanted], dim=1)
            if autocast and self.iou_token.weight.dtype == torch.float32:
                with torch.autocast(device_type=keys.device.type, enabled=False):
                    masks[chunk] = upscale_masks(self, keys.float(), hyper_in.float(), (h, w))
            else:
                upscale_masks(self, keys, hyper_in, (h, w), first_product, out=masks[chunk])
            return self.iou_prediction_head(hs[:, 0])[:, mask_slice]

        size = self.prompt_chunk_size
        if autocast or tracing():  # autocast and tracing belong to this thread
            ious = [decode(slice(start, start + size)) for start in range(0, n, size)]
        else:
            # One prompt first, on all of this thread's cores: it computes the products that every
            # chunk shares, which the chunks side by side would otherwise wait for.
            ious = [decode(slice(0, 1))] if low_rank and n > size and not products.filled else []
            chunks = [slice(start, min(start + size, n)) for start in range(len(ious), n, size)]
            ious += map_chunks(decode, chunks, image_tokens.device)
        return masks, torch.cat(ious)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        if image_embeddings.shape[0] not in (1, n):
            raise ValueError(f"{image_embeddings.shape[0]} image embeddings for {n} prompts: give 1 or {n}")
        src = image_embeddings + dense_prompt_embeddings  # broadcasts one image over every prompt
        if src.shape[0] != n:
            src = src.expand(n, -1, -1, -1)
        pos_src = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        if torch.is_autocast_enabled(src.device.type) and self.iou_token.weight.dtype == torch.float32:
            # The mask logits are per-pixel dot products whose sign is the mask: under autocast they
            # are computed in fp32, since bf16 flips pixels near the threshold.
            with torch.autocast(device_type=src.device.type, enabled=False):
                masks = self._mask_logits(src.float(), mask_tokens_out.float())
        else:
            masks = self._mask_logits(src, mask_tokens_out)
        return masks, self.iou_prediction_head(iou_token_out)

    def _mask_logits(self, src: torch.Tensor, mask_tokens_out: torch.Tensor) -> torch.Tensor:
        upscaled = self.output_upscaling(src)
        hyper_in: List[torch.Tensor] = [
            mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)
        ]
        b, c, h, w = upscaled.shape
        return (torch.stack(hyper_in, dim=1) @ upscaled.view(b, c, h * w)).view(b, -1, h, w)


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
