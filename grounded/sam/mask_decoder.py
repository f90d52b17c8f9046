"""SAM's mask decoder: output tokens through the two-way transformer, then upscaled image
features times per-token hypernetwork weights give masks; an MLP on the IoU token scores them."""

from typing import List, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


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
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings: 1 x C x h x w (shared by every prompt) or N x C x h x w (one per prompt);
        sparse: N x T x C; dense: N x C x h x w. Returns low-res masks N x M x 4h x 4w and IoU
        predictions N x M, where M is 3 with multimask_output, else 1."""
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, mask_slice], iou_pred[:, mask_slice]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, src = self.attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, output_tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in_list: List[torch.Tensor] = [
            mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)
        ]
        hyper_in = torch.stack(hyper_in_list, dim=1)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if torch.is_autocast_enabled(src.device.type) and self.iou_token.weight.dtype == torch.float32:
            # The mask logits are per-pixel dot products whose sign is the mask: under autocast they
            # are computed in fp32, since bf16 flips pixels near the threshold.
            with torch.autocast(device_type=src.device.type, enabled=False):
                return self.mask_logits(src.float(), hyper_in.float()), iou_pred
        return self.mask_logits(src, hyper_in), iou_pred

    def attend(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
               dense_prompt_embeddings: torch.Tensor, output_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer on the output tokens followed by the N prompts' tokens, and on the
        image (1, shared, or N) plus the dense embeddings. Returns the tokens N x T x C and the image
        N x C x h x w."""
        n = sparse_prompt_embeddings.shape[0]
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
        return hs, src.transpose(1, 2).reshape(b, c, h, w)

    def mask_logits(self, src: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """Upscaled image features (B x C x h x w) times the hypernetwork weights (B x M x C/8)."""
        upscaled_embedding = self.output_upscaling(src)
        b, c, h, w = upscaled_embedding.shape
        return (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)


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
