"""SAM's text prompt (SAM paper, section 7.5 / appendix D.5): a CLIP embedding projected to one
sparse prompt token.

During training the prompt is the CLIP *image* embedding of the mask's crop (see
`grounded.sam.training.text`); at inference it is the CLIP *text* embedding of the same space, so a
projection trained without any captions answers to text. Both are L2-normalised first, as CLIP
compares them.

    projection = TextPromptProjection.from_pretrained("runs/text/projection")
    predictor.set_image(image)
    masks, scores, low_res = predict_from_text(predictor, projection, clip_text_embedding)

The locator (`locator=True`, what `grounded train` with text_prompt trains by default): the token
alone does not make SAM choose between objects. Trained on coloured-shape scenes, three outputs with
the lowest-loss objective cover the scene's different shapes whatever the prompt, and the IoU head
does not learn which one was named (the top-scoring output is the named shape for 0.21-0.23 of
held-out prompts, chance 0.33, with or without a ranking loss on the IoU head; measurements in
tests/test_training_text.py's slow test).
So the projection also maps the CLIP embedding to a query over SAM's image embedding: its dot
product with each cell's (channel-standardised) embedding is a heat map of where the named object
is, and the map's peak becomes a positive point prompt next to the text token. A point is what
SAM's decoder already answers to; the map is one bilinear layer, trained per cell against the mask
(`training.losses.locator_loss`).

`save_pretrained(folder)` writes `text_prompt.safetensors` and `text_prompt.json` (clip_dim,
prompt_embed_dim, hidden_dim, clip_model, locator), names that do not clash with a SAM folder's files.
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


LOCATOR_SMOOTHING = 3  # cells of the box filter before the heat map's peak is taken: one hot cell is noise


class TextPromptProjection(nn.Module):
    """CLIP embedding [B, clip_dim] -> sparse prompt tokens [B, 1, prompt_embed_dim]; with `locator`,
    also a heat map over SAM's image embedding (`heat_map`) whose peak is a positive point prompt."""

    def __init__(self, clip_dim: int, prompt_embed_dim: int = 256, hidden_dim: Optional[int] = None,
                 clip_model: str = "", locator: bool = False) -> None:
        super().__init__()
        self.clip_dim = int(clip_dim)
        self.prompt_embed_dim = int(prompt_embed_dim)
        self.hidden_dim = int(hidden_dim or max(clip_dim, prompt_embed_dim))
        self.clip_model = clip_model  # which CLIP the embeddings come from (a name or path), for users
        self.mlp = nn.Sequential(
            nn.Linear(self.clip_dim, self.hidden_dim), nn.GELU(), nn.Linear(self.hidden_dim, self.prompt_embed_dim)
        )
        self.locator = bool(locator)
        if self.locator:
            self.locator_query = nn.Linear(self.clip_dim, self.prompt_embed_dim)
            # objects cover a few percent of the grid: start the map low rather than at "half everywhere"
            self.locator_bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        return self.mlp(self._normalised(clip_embedding))[:, None, :]

    def heat_map(self, clip_embedding: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Locator logits [B, h, w] for clip_embedding [B, clip_dim] (or [clip_dim]) over SAM image
        embeddings [1 or B, C, h, w]: the query's dot product with each cell's embedding,
        standardised over channels so that the map compares what is there, not how loud it is."""
        if not self.locator:
            raise ValueError("this projection has no locator (TextPromptProjection(..., locator=True))")
        query = self.locator_query(self._normalised(clip_embedding))  # B x C
        e = image_embeddings.to(query.dtype)
        e = (e - e.mean(1, keepdim=True)) / (e.std(1, keepdim=True) + 1e-5)
        return torch.einsum("bc,bchw->bhw", query, e.expand(query.shape[0], -1, -1, -1)) + self.locator_bias

    def _normalised(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        if clip_embedding.ndim == 1:
            clip_embedding = clip_embedding[None]
        if clip_embedding.ndim != 2 or clip_embedding.shape[1] != self.clip_dim:
            raise ValueError(
                f"expected CLIP embeddings of shape [B, {self.clip_dim}], got {tuple(clip_embedding.shape)}"
                + (f" (this projection was trained with {self.clip_model})" if self.clip_model else "")
            )
        weight = self.mlp[0].weight
        return F.normalize(clip_embedding.to(device=weight.device, dtype=weight.dtype), dim=-1)

    def config(self) -> dict:
        return {"clip_dim": self.clip_dim, "prompt_embed_dim": self.prompt_embed_dim, "hidden_dim": self.hidden_dim,
                "clip_model": self.clip_model, "locator": self.locator}

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
        model = cls(config["clip_dim"], config["prompt_embed_dim"], config.get("hidden_dim"), config.get("clip_model", ""),
                    config.get("locator", False))
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


def heat_peaks(heat: torch.Tensor, img_size: int, input_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The peak of each heat map [B, h, w] (box-filtered over LOCATOR_SMOOTHING cells) as a point
    [B, 2] (x, y) in the model's resized frame (img_size square, the grid covering it); with
    input_size (h, w of the resized image), cells over the padding are never the peak."""
    b, h, w = heat.shape
    k = LOCATOR_SMOOTHING
    smooth = F.avg_pool2d(heat.detach().float()[:, None], k, 1, k // 2, count_include_pad=False)[:, 0]
    cell_y, cell_x = img_size / h, img_size / w
    if input_size is not None:
        ys = (torch.arange(h, device=heat.device) + 0.5) * cell_y < input_size[0]
        xs = (torch.arange(w, device=heat.device) + 0.5) * cell_x < input_size[1]
        smooth = smooth.masked_fill(~(ys[:, None] & xs[None, :]), float("-inf"))
    flat = smooth.flatten(1).argmax(1)
    return torch.stack([(flat % w + 0.5) * cell_x, (flat // w + 0.5) * cell_y], dim=-1)


def decode_text(sam, projection: TextPromptProjection, image_embeddings: torch.Tensor, clip_embeddings: torch.Tensor,
                points: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, multimask_output: bool = True,
                input_size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The decoder prompted by CLIP embeddings [B, D]: the projected token, after the locator's peak
    (a positive point, first) and any given points (model frame) when the projection has a locator.
    Returns low-res logits B x M x 256 x 256 and IoU B x M."""
    tokens = projection(clip_embeddings)
    if projection.locator:
        heat = projection.heat_map(clip_embeddings, image_embeddings)
        peak = heat_peaks(heat, sam.image_encoder.img_size, input_size)[:, None].to(tokens.device)
        ones = torch.ones(peak.shape[0], 1, dtype=torch.int, device=peak.device)
        if points is None:
            points = (peak, ones)
        else:
            points = (torch.cat([peak, points[0].to(peak.dtype)], 1), torch.cat([ones, points[1].to(ones.dtype)], 1))
    return decode_with_tokens(sam, image_embeddings, tokens, points, multimask_output)


@torch.no_grad()
def predict_from_text(predictor, projection: TextPromptProjection, text_embedding,
                      point_coords=None, point_labels=None, multimask_output: bool = True
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks for a CLIP text embedding on the predictor's current image (set with `set_image`).

    text_embedding [D] (one prompt) gives what `predictor.predict` gives: masks C x H x W (bool),
    scores C, low-res logits C x 256 x 256. [N, D] (N prompts in one decoder call) gives
    N x C x H x W, N x C, N x C x 256 x 256, like `predict_many`. Optional points (in image pixels,
    K x 2 with K labels for one prompt, N x K x 2 for N) are added to the text token (and to the
    locator's peak, when the projection has a locator: `decode_text`)."""
    features = predictor.get_image_embedding()  # (raises when no image is set)
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
        coords_t, labels_t, _, _ = predictor.transform_prompts(coords, labels)
        if coords_t.shape[0] != emb.shape[0]:
            raise ValueError(f"{coords_t.shape[0]} point prompts for {emb.shape[0]} text embeddings")
        points = (coords_t, labels_t)
    model = predictor.model
    with predictor.autocast():
        low_res, iou = decode_text(model, projection, features.to(model.dtype), emb.to(predictor.device),
                                   points, multimask_output, tuple(predictor.input_size))
    low_res = low_res.float()
    masks = model.threshold_masks(low_res, predictor.input_size, predictor.original_size)
    masks, scores, low_res = masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.cpu().numpy()
    if single:
        return masks[0], scores[0], low_res[0]
    return masks, scores, low_res
