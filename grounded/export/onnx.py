"""`export_onnx`: the page's ONNX graphs of one SAM, written once per weights into a cache folder.

Files (opset 17; manifest.json lists them with the model's sizes):
- decoder.onnx: the standard prompt encoder + mask decoder (`PromptDecoder`),
- image_products.onnx, prompt.onnx, prompt_mask.onnx: the split form (`LowRankImageProducts` once
  per image; per prompt `LowRankPromptDecoder`, or `MaskPromptDecoder` for a prompt with a mask; the
  manifest's "products" lists the per-image graph's outputs, which the prompt graphs take by name),
- decoder_int8.onnx, prompt_int8.onnx: dynamically quantized (int8 weights of MatMul/Gemm) copies,
- encoder.onnx: the image encoder for in-page encoding (TinyViT, i.e. MobileSAM, by default: a ViT's
  encoder is too slow for a page), input 1x3xSxS normalised and padded as `Sam.preprocess` makes it.

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
from .decoder import MaskPromptDecoder, PromptDecoder
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
        "export_version": EXPORT_VERSION, "files": files, "image_size": sam.image_encoder.img_size,
        "embedding_shape": [1, c, h, w], "mask_input_size": list(mask_size), "mask_threshold": sam.mask_threshold,
        "pixel_mean": sam.pixel_mean.flatten().tolist(), "pixel_std": sam.pixel_std.flatten().tolist(),
        "num_mask_tokens": sam.mask_decoder.num_mask_tokens, "products": names,
    }


def export_onnx(sam: Sam, cache_dir: Optional[Union[str, Path]] = None, encoder: Optional[bool] = None) -> Path:
    """The folder holding `sam`'s page graphs (exported on first call for these weights, reused
    after). encoder: also export the image encoder (default: only for TinyViT, MobileSAM's)."""
    from ..sam.tiny_vit import TinyViT

    if encoder is None:
        encoder = isinstance(sam.image_encoder, TinyViT)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "page"
    root.mkdir(parents=True, exist_ok=True)
    sam = sam.float().cpu().eval() if sam.training or sam.device.type != "cpu" else sam
    folder = root / f"v{EXPORT_VERSION}-{_weights_digest(sam)}{'-enc' if encoder else ''}"
    with _folder_lock(root):
        if (folder / "manifest.json").exists():
            return folder
        tmp = root / f"{folder.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            manifest = write_graphs(sam, tmp, encoder)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
