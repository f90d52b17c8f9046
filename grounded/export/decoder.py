"""SAM's prompt encoder and mask decoder as traceable modules for the page's ONNX graphs.

`PromptDecoder` is the standard graph: image embedding + prompt -> low-res logits and IoU scores of
all four mask outputs (the single-mask output first, then the three multimask candidates), exactly
what `SamPredictor.decode` computes with multimask_output False (output 0) or True (outputs 1-3).

The split form runs the same arithmetic in two graphs: products of the image tokens computed once per
image, and a small per-prompt graph (low_rank.py; `MaskPromptDecoder` for a prompt with a mask).

`Sam2PromptDecoder` is SAM 2's standard graph: the image embedding and the image's two projected
high-res maps + prompt -> the same four outputs, output 0 being what `SAM2ImagePredictor` returns
with multimask_output False (the stability fallback included), and the object-score logits.

Prompts (all graphs): point_coords 1xNx2 in the original image's pixels (x, y), point_labels 1xN
(1 foreground, 0 background, 2/3 a box's top-left/bottom-right corner, -1 padding: a prompt
without a box ends with one padding point, as SAM's prompt encoder does), image_size 2 (H, W);
the graph maps the points to the model's resized frame as `ResizeLongestSide.apply_coords` does
(SAM 2's graph: to its stretched square, (x / W, y / H) * S, as `Sam2Transform`; SAM 2's predictor pads
every prompt, so there a prompt always ends with the padding point, after the box corners and clicks).
"""


import torch
from torch import Tensor, nn

from ..sam.model import Sam
from ..sam.transformer import Attention


def stretched_coords(point_coords: Tensor, image_size: Tensor, target_length: int) -> Tensor:
    """Pixel coordinates (x, y) of an image of image_size (H, W) -> SAM 2's square frame."""
    return point_coords / image_size.to(torch.float32).flip(0) * target_length


def resized_coords(point_coords: Tensor, image_size: Tensor, target_length: int) -> Tensor:
    """Pixel coordinates (x, y) of an image of image_size (H, W) -> SAM's resized frame."""
    size = image_size.to(torch.float32)
    scale = target_length / torch.max(size)
    new_size = torch.floor(size * scale + 0.5)  # (new_h, new_w), as get_preprocess_shape rounds
    factor = (new_size / size).flip(0)  # (x, y) order
    return point_coords * factor


class PromptEmbedder(nn.Module):
    """Sparse and dense prompt embeddings, control flow replaced by arithmetic (one graph serves any
    number of points and boxes given as labelled corners)."""

    def __init__(self, model: Sam, to_model_frame=resized_coords) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.img_size = model.image_encoder.img_size
        self.to_model_frame = to_model_frame

    def sparse(self, point_coords: Tensor, point_labels: Tensor, image_size: Tensor) -> Tensor:
        encoder = self.prompt_encoder
        coords = self.to_model_frame(point_coords, image_size, self.img_size)
        embedding = encoder.pe_layer._pe_encoding((coords + 0.5) / self.img_size)  # 1 x N x C
        labels = point_labels.unsqueeze(-1).expand_as(embedding)
        embedding = embedding * (labels != -1) + encoder.not_a_point_embed.weight * (labels == -1)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def mask_delta(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """The dense embedding minus the no-mask embedding: zero without a mask prompt."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * (self.prompt_encoder.mask_downscaling(mask_input) - no_mask)

    def no_mask(self) -> Tensor:
        return self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)


class PromptDecoder(nn.Module):
    """The standard graph: (image_embeddings 1xCxhxw, point_coords, point_labels, mask_input
    1x1x256x256, has_mask_input 1, image_size 2) -> (low_res_logits 1x4x256x256, iou_predictions 1x4)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.embedder = PromptEmbedder(model)
        self.mask_decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, image_size):
        sparse = self.embedder.sparse(point_coords, point_labels, image_size)
        dense = self.embedder.no_mask() + self.embedder.mask_delta(mask_input, has_mask_input)
        return self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense)


class Sam2PromptDecoder(nn.Module):
    """SAM 2's standard graph: (image_embeddings 1xCxhxw, high_res_feats_0 1x(C/8)x4hx4w,
    high_res_feats_1 1x(C/4)x2hx2w, point_coords, point_labels, mask_input 1x1x4hx4w, has_mask_input 1,
    image_size 2) -> (low_res_logits 1x4x4hx4w, iou_predictions 1x4, object_score_logits 1x1).
    Output 0 is the single-mask output after SAM 2's stability fallback where the model uses it (what
    `SAM2ImagePredictor.predict` gives with multimask_output False), 1-3 the multimask outputs; the
    image predictor leaves the object score unused, and so does the page."""

    def __init__(self, model) -> None:
        super().__init__()
        self.embedder = PromptEmbedder(model, stretched_coords)
        self.mask_decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input, image_size):
        decoder = self.mask_decoder
        sparse = self.embedder.sparse(point_coords, point_labels, image_size)
        dense = self.embedder.no_mask() + self.embedder.mask_delta(mask_input, has_mask_input)
        masks, iou, object_score = decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense,
                                                         [high_res_feats_0, high_res_feats_1])
        single, single_iou = decoder.select_masks(masks, iou, multimask_output=False)
        return torch.cat([single, masks[:, 1:]], dim=1), torch.cat([single_iou, iou[:, 1:]], dim=1), object_score


def _heads(attention: Attention, x: Tensor) -> Tensor:
    return attention._separate_heads(x)


def _attend(attention: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """`Attention.forward` from already projected, head-separated q, k, v."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(attention._recombine_heads(out))


class MaskPromptDecoder(nn.Module):
    """The split form's graph for a prompt with a mask: (src 1xHWxC, key0, value0, query0 1 x heads x
    HW x d from the per-image products, point_coords, point_labels, image_size, mask_input,
    has_mask_input) -> (low_res_logits 1x4x256x256, iou_predictions 1x4), equal to `PromptDecoder`'s.
    A mask prompt changes every image token, so only the first block's projections are reused: the
    mask's share is added to them (they are linear)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.embedder = PromptEmbedder(model)
        self.mask_decoder = model.mask_decoder
        self.register_buffer("image_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(self, src, key0, value0, query0, point_coords, point_labels, image_size, mask_input, has_mask_input):
        decoder, transformer = self.mask_decoder, self.mask_decoder.transformer
        sparse = self.embedder.sparse(point_coords, point_labels, image_size)
        first = transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        delta = self.embedder.mask_delta(mask_input, has_mask_input).flatten(2).permute(0, 2, 1)
        src = src + delta
        key0 = key0.unsqueeze(0) + _heads(t2i, delta @ t2i.k_proj.weight.T)
        value0 = value0.unsqueeze(0) + _heads(t2i, delta @ t2i.v_proj.weight.T)
        query0 = query0.unsqueeze(0) + _heads(i2t, delta @ i2t.q_proj.weight.T)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0).unsqueeze(0)
        point_embedding = torch.cat((output_tokens, sparse), dim=1)
        image_pe = self.image_pe.flatten(2).permute(0, 2, 1)

        # The first block, its image-side projections taken from the per-image products.
        queries = first.token_self_attention(point_embedding, point_embedding)
        q = queries + point_embedding
        queries = first.norm2(queries + _attend(t2i, _heads(t2i, t2i.q_proj(q)), key0, value0))
        queries = first.norm3(queries + first.mlp(queries))
        q = queries + point_embedding
        attended = _attend(i2t, query0, _heads(i2t, i2t.k_proj(q)), _heads(i2t, i2t.v_proj(queries)))
        keys = first.norm4(src + attended)
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
        attn_out = transformer.final_attn_token_to_image(q=queries + point_embedding, k=keys + image_pe, v=keys)
        hs = transformer.norm_final_attn(queries + attn_out)

        b, c = keys.shape[0], keys.shape[2]
        h, w = self.image_pe.shape[-2:]
        tokens = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack([mlp(tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
        return decoder.mask_logits(keys.transpose(1, 2).reshape(b, c, h, w), hyper_in), iou_pred
