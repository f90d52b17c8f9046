"""SAM's text prompt (SAM paper, section 7.5 / appendix D.5): a CLIP embedding projected to one
sparse prompt token.

During training the prompt is the CLIP *image* embedding of the mask's crop (see
`grounded.sam.training.text`); at inference it is the CLIP *text* embedding of the same space, so a
projection trained without any captions answers to text. Both are L2-normalised first, as CLIP
compares them.

    projection = TextPromptProjection.from_pretrained("runs/text/projection")
    predictor.set_image(image)
    masks, scores, low_res = predict_from_text(predictor, projection, clip_text_embedding)

`save_pretrained(folder)` writes `text_prompt.safetensors` and `text_prompt.json` (clip_dim,
prompt_embed_dim, hidden_dim, clip_model), names that do not clash with a SAM folder's files.
"""

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "text_prompt.safetensors"
CONFIG_FILE = "text_prompt.json"


class TextPromptProjection(nn.Module):
    """CLIP embedding [B, clip_dim] -> sparse prompt tokens [B, 1, prompt_embed_dim]."""

    def __init__(self, clip_dim: int, prompt_embed_dim: int = 256, hidden_dim: Optional[int] = None,
                 clip_model: str = "") -> None:
        super().__init__()
        self.clip_dim = int(clip_dim)
        self.prompt_embed_dim = int(prompt_embed_dim)
        self.hidden_dim = int(hidden_dim or max(clip_dim, prompt_embed_dim))
        self.clip_model = clip_model  # which CLIP the embeddings come from (a name or path), for users
        self.mlp = nn.Sequential(
            nn.Linear(self.clip_dim, self.hidden_dim), nn.GELU(), nn.Linear(self.hidden_dim, self.prompt_embed_dim)
        )

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        if clip_embedding.ndim == 1:
            clip_embedding = clip_embedding[None]
        if clip_embedding.ndim != 2 or clip_embedding.shape[1] != self.clip_dim:
            raise ValueError(
                f"expected CLIP embeddings of shape [B, {self.clip_dim}], got {tuple(clip_embedding.shape)}"
                + (f" (this projection was trained with {self.clip_model})" if self.clip_model else "")
            )
        weight = self.mlp[0].weight
        x = F.normalize(clip_embedding.to(device=weight.device, dtype=weight.dtype), dim=-1)
        return self.mlp(x)[:, None, :]

    def config(self) -> dict:
        return {"clip_dim": self.clip_dim, "prompt_embed_dim": self.prompt_embed_dim, "hidden_dim": self.hidden_dim,
                "clip_model": self.clip_model}

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "library": "grounded"})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        dtype: Optional[torch.dtype] = None) -> "TextPromptProjection":
        from safetensors.torch import load_file

        folder = Path(path).expanduser()
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        missing = [str(p) for p in (config_path, weights_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"no text-prompt projection at {folder}: missing {', '.join(missing)} "
                f"(write one with TextPromptProjection.save_pretrained or `grounded train` with text_prompt: true)"
            )
        config = json.loads(config_path.read_text())
        model = cls(config["clip_dim"], config["prompt_embed_dim"], config.get("hidden_dim"), config.get("clip_model", ""))
        model.load_state_dict(load_file(str(weights_path)), strict=True)
        return model.to(device=device, dtype=dtype).eval()


def decode_with_tokens(sam, image_embeddings: torch.Tensor, extra_tokens: torch.Tensor,
                       points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                       multimask_output: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run SAM's prompt encoder and mask decoder with `extra_tokens` (B x T x C, e.g. a projected
    CLIP embedding) appended to the point tokens. Points are in the model's resized frame.
    Differentiable (used by training); returns low-res logits B x M x 256 x 256 and IoU B x M."""
    pe = sam.prompt_encoder
    b = extra_tokens.shape[0]
    if points is not None:
        # Points without a box get SAM's "not a point" pad token, exactly as for a plain point prompt.
        sparse = pe._embed_points(points[0], points[1], pad=True)
        sparse = torch.cat([sparse, extra_tokens.to(sparse.dtype)], dim=1)
    else:
        sparse = extra_tokens.to(pe.no_mask_embed.weight.dtype)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *pe.image_embedding_size)
    return sam.mask_decoder(
        image_embeddings=image_embeddings, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask_output,
    )


@torch.no_grad()
def predict_from_text(predictor, projection: TextPromptProjection, text_embedding,
                      point_coords=None, point_labels=None, multimask_output: bool = True
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks for a CLIP text embedding on the predictor's current image (set with `set_image`).

    text_embedding [D] (one prompt) gives what `predictor.predict` gives: masks C x H x W (bool),
    scores C, low-res logits C x 256 x 256. [N, D] (N prompts in one decoder call) gives
    N x C x H x W, N x C, N x C x 256 x 256, like `predict_many`. Optional points (in image pixels,
    K x 2 with K labels for one prompt, N x K x 2 for N) are added to the text token."""
    predictor._require_image()
    emb = torch.as_tensor(np.asarray(text_embedding) if not torch.is_tensor(text_embedding) else text_embedding)
    single = emb.ndim == 1
    if emb.ndim not in (1, 2):
        raise ValueError(f"text_embedding must be [D] or [N, D], got shape {tuple(emb.shape)}")
    emb = emb.reshape(-1, emb.shape[-1]).float()
    points = None
    if point_coords is not None or point_labels is not None:
        coords = np.asarray(point_coords) if point_coords is not None else None
        labels = np.asarray(point_labels) if point_labels is not None else None
        if single and coords is not None:
            coords, labels = coords[None], (labels[None] if labels is not None else None)
        coords_t, labels_t, _, _ = predictor._prompt_tensors(coords, labels, None, None)
        if coords_t.shape[0] != emb.shape[0]:
            raise ValueError(f"{coords_t.shape[0]} point prompts for {emb.shape[0]} text embeddings")
        points = (coords_t, labels_t)
    model = predictor.model
    with predictor._precision():
        tokens = projection(emb.to(predictor.device))
        low_res, iou = decode_with_tokens(model, predictor.features.to(model.dtype), tokens.to(model.dtype),
                                          points, multimask_output)
    low_res = low_res.float()
    masks = model.threshold_masks(low_res, predictor.input_size, predictor.original_size)
    masks, scores, low_res = masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.cpu().numpy()
    if single:
        return masks[0], scores[0], low_res[0]
    return masks, scores, low_res
