"""`export_onnx`: the page's ONNX graphs of one SAM, written once per weights into a cache folder.

Files (opset 17; manifest.json lists them with the model's sizes):
- decoder.onnx: the standard prompt encoder + mask decoder (`PromptDecoder`),
- image_products.onnx, prompt.onnx, prompt_mask.onnx: the split form (`LowRankImageProducts` once
  per image; per prompt `LowRankPromptDecoder`, or `MaskPromptDecoder` for a prompt with a mask; the
  manifest's "products" lists the per-image graph's outputs, which the prompt graphs take by name),
- decoder_int8.onnx, prompt_int8.onnx: dynamically quantized (int8 weights of MatMul/Gemm) copies,
- encoder.onnx: the image encoder for in-page encoding (TinyViT, i.e. MobileSAM, by default: a ViT's
  encoder is too slow for a page), input 1x3xSxS normalised and padded as `Sam.preprocess` makes it.

A SAM 2 / 2.1 model (`grounded.sam2.Sam2`) gets decoder.onnx (`Sam2PromptDecoder`: its inputs are the
image embedding and the two high-res maps, named with their shapes in the manifest's "image_inputs")
and decoder_int8.onnx only: the split form's algebra is SAM 1's decoder (its upscaling has no
high-res maps), and Hiera is too slow to encode in a page, so the server computes the embeddings.
The manifest's "family" ("sam" or "sam2") and "graphs" say which graphs a folder holds.

The folder is named after the sha256 of the weights and EXPORT_VERSION, and is written under a
temporary name, then renamed, so a half-written export is never reused.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from ..sam.model import Sam
from ..sam.onnx_encoder import _folder_lock, _weights_digest, default_cache_dir, export_encoder
from .decoder import MaskPromptDecoder, PromptDecoder, Sam2PromptDecoder
from .low_rank import LowRankImageProducts, LowRankPromptDecoder

# Bump whenever a graph's inputs, outputs or arithmetic change, so an older cache is not reused.
EXPORT_VERSION = 3
OPSET = 17
PROMPT_AXES = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}


def example_prompt(num_points: int = 2) -> dict:
    return {
        "point_coords": torch.tensor([[[10.0, 20.0]] * num_points]),
        "point_labels": torch.tensor([[1.0] * (num_points - 1) + [-1.0]]),
        "image_size": torch.tensor([100.0, 120.0]),
    }


def _export(module: torch.nn.Module, inputs: dict, outputs: list, path: Path, axes: Optional[dict] = None) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=outputs,
                          dynamic_axes=axes or {}, opset_version=OPSET, dynamo=False)


def _quantize(source: Path, target: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process a model for static quantization does not apply
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def write_graphs(sam: Sam, folder: Path, encoder: bool) -> dict:
    """Every graph of the module docstring into `folder`; returns the manifest."""
    c = sam.prompt_encoder.embed_dim
    h, w = sam.prompt_encoder.image_embedding_size
    mask_size = tuple(sam.prompt_encoder.mask_input_size)
    embedding = torch.randn(1, c, h, w)
    mask = {"mask_input": torch.randn(1, 1, *mask_size), "has_mask_input": torch.tensor([1.0])}
    outputs = ["low_res_logits", "iou_predictions"]
    standard = {"image_embeddings": embedding, **example_prompt(), **mask}
    standard["image_size"] = standard.pop("image_size")  # the standard graph's input order
    _export(PromptDecoder(sam), standard, outputs, folder / "decoder.onnx", PROMPT_AXES)
    products = LowRankImageProducts(sam)
    names = products.names(embedding)
    _export(products, {"image_embeddings": embedding}, names, folder / "image_products.onnx")
    with torch.no_grad():
        values = dict(zip(names, products(embedding)))
    prompt = LowRankPromptDecoder(sam, names)
    _export(prompt, {**example_prompt(), **{n: values[n] for n in prompt.names}}, outputs, folder / "prompt.onnx",
            PROMPT_AXES)
    split = {n: values[n] for n in ("src", "key0", "value0", "query0")}
    _export(MaskPromptDecoder(sam), {**split, **example_prompt(), **mask}, outputs, folder / "prompt_mask.onnx",
            PROMPT_AXES)
    _quantize(folder / "decoder.onnx", folder / "decoder_int8.onnx")
    _quantize(folder / "prompt.onnx", folder / "prompt_int8.onnx")
    files = ["decoder.onnx", "decoder_int8.onnx", "image_products.onnx", "prompt.onnx", "prompt_mask.onnx", "prompt_int8.onnx"]
    if encoder:
        export_encoder(sam.image_encoder, folder / "encoder.onnx")
        files.append("encoder.onnx")
    return {
        "export_version": EXPORT_VERSION, "family": "sam", "files": files, "graphs": ["standard", "split", "int8"],
        "image_size": sam.image_encoder.img_size,
        "embedding_shape": [1, c, h, w], "mask_input_size": list(mask_size), "mask_threshold": sam.mask_threshold,
        "pixel_mean": sam.pixel_mean.flatten().tolist(), "pixel_std": sam.pixel_std.flatten().tolist(),
        "num_mask_tokens": sam.mask_decoder.num_mask_tokens, "products": names,
    }


def sam2_image_inputs(sam2) -> list:
    """SAM 2's per-image graph inputs, in the order of the server's embedding blob (float32, C order,
    one after another): the image embedding, then the projected high-res maps at stride 4 and 8."""
    c = sam2.prompt_encoder.embed_dim
    h, w = sam2.prompt_encoder.image_embedding_size
    decoder = sam2.mask_decoder
    return [
        {"name": "image_embeddings", "shape": [1, c, h, w]},
        {"name": "high_res_feats_0", "shape": [1, decoder.conv_s0.out_channels, 4 * h, 4 * w]},
        {"name": "high_res_feats_1", "shape": [1, decoder.conv_s1.out_channels, 2 * h, 2 * w]},
    ]


def write_sam2_graphs(sam2, folder: Path) -> dict:
    """SAM 2's standard graph and its int8 copy into `folder`; returns the manifest."""
    image_inputs = sam2_image_inputs(sam2)
    mask_size = tuple(sam2.prompt_encoder.mask_input_size)
    prompt = example_prompt()
    inputs = {i["name"]: torch.randn(*i["shape"]) for i in image_inputs}
    inputs.update(point_coords=prompt["point_coords"], point_labels=prompt["point_labels"],
                  mask_input=torch.randn(1, 1, *mask_size), has_mask_input=torch.tensor([1.0]),
                  image_size=prompt["image_size"])
    outputs = ["low_res_logits", "iou_predictions", "object_score_logits"]
    _export(Sam2PromptDecoder(sam2), inputs, outputs, folder / "decoder.onnx", PROMPT_AXES)
    _quantize(folder / "decoder.onnx", folder / "decoder_int8.onnx")
    decoder = sam2.mask_decoder
    return {
        "export_version": EXPORT_VERSION, "family": "sam2", "files": ["decoder.onnx", "decoder_int8.onnx"],
        "graphs": ["standard", "int8"], "image_size": sam2.image_size,
        "embedding_shape": image_inputs[0]["shape"], "image_inputs": image_inputs, "outputs": outputs,
        "mask_input_size": list(mask_size), "mask_threshold": sam2.mask_threshold,
        "pixel_mean": sam2.pixel_mean.flatten().tolist(), "pixel_std": sam2.pixel_std.flatten().tolist(),
        "num_mask_tokens": decoder.num_mask_tokens, "coordinates": "stretched", "pad_every_prompt": True,
        "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
    }


def _sam2_settings(sam2) -> str:
    """The decoder's settings that its weights do not carry, for the folder name."""
    import hashlib

    d = sam2.mask_decoder
    text = f"{d.dynamic_multimask_via_stability}/{d.dynamic_multimask_stability_delta}/{d.dynamic_multimask_stability_thresh}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def export_onnx(sam: Sam, cache_dir: Optional[Union[str, Path]] = None, encoder: Optional[bool] = None) -> Path:
    """The folder holding `sam`'s page graphs (exported on first call for these weights, reused
    after); `sam` is a SAM (grounded.sam) or a SAM 2 / 2.1 model (grounded.sam2). encoder: also export
    the image encoder (default: only for TinyViT, MobileSAM's; never for SAM 2)."""
    from ..sam.tiny_vit import TinyViT
    from ..sam2.model import Sam2

    is_sam2 = isinstance(sam, Sam2)
    if not is_sam2 and not isinstance(sam, Sam):
        raise TypeError(f"export_onnx takes a SAM (grounded.sam.Sam) or SAM 2 model (grounded.sam2.Sam2), "
                        f"not {type(sam).__name__}")
    if is_sam2 and encoder:
        raise ValueError("in-page encoding is for SAM 1 models (MobileSAM's TinyViT): SAM 2's Hiera encoder is too "
                         "slow for a page, so the server computes a SAM 2 model's embeddings; export without the encoder")
    if encoder is None:
        encoder = isinstance(sam.image_encoder, TinyViT)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "page"
    root.mkdir(parents=True, exist_ok=True)
    sam = sam.float().cpu().eval() if sam.training or sam.device.type != "cpu" else sam
    kind = f"sam2-{_sam2_settings(sam)}-" if is_sam2 else ""
    folder = root / f"v{EXPORT_VERSION}-{kind}{_weights_digest(sam)}{'-enc' if encoder else ''}"
    with _folder_lock(root):
        if (folder / "manifest.json").exists():
            return folder
        tmp = root / f"{folder.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            manifest = write_sam2_graphs(sam, tmp) if is_sam2 else write_graphs(sam, tmp, encoder)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
