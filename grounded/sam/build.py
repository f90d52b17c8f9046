"""Building SAM models and loading their weights: official `.pth` checkpoints, MobileSAM's
`mobile_sam.pt`, safetensors files, grounded's own save folders and Hugging Face `SamModel`
folders or hub ids. Pickled checkpoints are read with `weights_only=True`, never executed."""

import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

import torch

from .checkpoint import CheckpointError, StateDict, infer_config, read_state_dict
from .config import OFFICIAL_CONFIGS, SamConfig
from .cpu import accelerate
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .model import Sam
from .onnx_encoder import BACKENDS, auto_backend, use_exported_encoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

CONFIG_FILE = "grounded_sam_config.json"
WEIGHTS_FILE = "model.safetensors"


def build_sam(config: SamConfig, paths: str = "auto") -> Sam:
    """A randomly initialised SAM of the given dimensions, in eval mode, with the CPU wing's paths
    (`grounded.sam.cpu.accelerate(model, paths)`; "reference" for the core modules only)."""
    emb = config.image_embedding_size
    if config.encoder == "vit":
        encoder = ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        )
    elif config.encoder == "tiny_vit":
        encoder = TinyViT(
            img_size=config.image_size,
            num_classes=config.tiny_num_classes,
            embed_dims=config.tiny_embed_dims,
            depths=config.tiny_depths,
            num_heads=config.tiny_num_heads,
            window_sizes=config.tiny_window_sizes,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
        )
    else:
        raise ValueError(f"unknown encoder {config.encoder!r}: expected 'vit' or 'tiny_vit'")
    model = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )
    model.config = config
    return accelerate(model.eval(), paths)


def variant_of(config: SamConfig) -> Optional[str]:
    """The official variant name whose dimensions equal config's, if any."""
    for name, official in OFFICIAL_CONFIGS.items():
        if official == config:
            return name
    return None


def load_state_dict_strict(model: Sam, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Sam:
    """Load with strict=True, turning a mismatch into an error that says which variant fits."""
    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        hint = ""
        try:
            fits = variant_of(infer_config(state_dict))
            hint = f" The checkpoint fits the '{fits}' variant." if fits else " Its dimensions match no official variant; use from_pretrained to build from its own shapes."
        except Exception:
            pass
        raise CheckpointError(f"{source} does not fit this model: {mismatch}.{hint}")
    model.load_state_dict(state_dict, strict=True)
    return model


def describe_mismatch(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> str:
    """The keys missing from state_dict, those it has in excess and those of other shapes ("" if none)."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if not (missing or unexpected or wrong_shape):
        return ""
    return (f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(wrong_shape)} with other shapes "
            f"{[(k, tuple(state_dict[k].shape), tuple(expected[k].shape)) for k in wrong_shape[:3]]}")


# ---------------------------------------------------------------- the segment_anything-style registry


def _build_variant(name: str, checkpoint: Optional[Union[str, Path]] = None) -> Sam:
    model = build_sam(OFFICIAL_CONFIGS[name])
    if checkpoint is not None:
        load_state_dict_strict(model, _official_state_dict(read_state_dict(checkpoint), str(checkpoint)), str(checkpoint))
    return model


class IsSam2Error(CheckpointError):
    """SAM 2 weights where SAM 1's were expected (grounded's model loader for nodes and the CLI,
    `grounded.nodes.segment`, hands them to grounded.sam2)."""


def _official_state_dict(sd: StateDict, source: str = "checkpoint") -> StateDict:
    from .checkpoint import checkpoint_family
    from .hf import convert_hf_state_dict, is_hf_state_dict

    if checkpoint_family(sd) in ("sam2", "sam2_hf"):
        raise IsSam2Error(f"{source} is a SAM 2 checkpoint: load it with grounded.sam2.from_pretrained or "
                          f"grounded.sam2.build_sam2 (grounded's nodes and CLI take either family)")
    if is_hf_state_dict(sd):
        sd, _ = convert_hf_state_dict(sd)
    return sd


build_sam_vit_h = partial(_build_variant, "vit_h")
build_sam_vit_l = partial(_build_variant, "vit_l")
build_sam_vit_b = partial(_build_variant, "vit_b")
build_sam_vit_t = partial(_build_variant, "vit_t")

sam_model_registry = {
    "default": build_sam_vit_h,
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "vit_t": build_sam_vit_t,
}


# ---------------------------------------------------------------- from_pretrained / save_pretrained


def save_pretrained(model: Sam, directory: Union[str, Path]) -> Path:
    """Write `model.safetensors` and its config to a folder that `from_pretrained` reads."""
    return write_folder(model, directory, CONFIG_FILE, getattr(model, "config", None) or infer_config(model.state_dict()))


def write_folder(model, directory: Union[str, Path], config_file: str, config) -> Path:
    """`model.safetensors` and the config's JSON as `config_file` (SAM's and SAM 2's save_pretrained)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "library": "grounded"})
    (directory / config_file).write_text(config.to_json())
    return directory


def from_pretrained(
    name_or_path: Union[str, Path],
    *,
    model_type: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    revision: Optional[str] = None,
    image_encoder_backend: str = "auto",
) -> Sam:
    """Load a SAM model from any of the places it can live:

    - a known checkpoint name (`mobile_sam`, `sam_vit_h`, ...; see `grounded weights`), fetched into
      the weights cache and verified by sha256;
    - a checkpoint file: official `.pth`, `mobile_sam.pt`, `.safetensors`, `.bin`;
    - a folder saved by `save_pretrained`, or a Hugging Face `SamModel` folder (config.json + weights);
    - a Hugging Face hub id such as `facebook/sam-vit-base` (read from the local HF cache when
      HF_HUB_OFFLINE=1).

    SAM 2 / 2.1 weights (a file, folder, hub id or known name) raise `IsSam2Error`, naming
    `grounded.sam2.from_pretrained` (grounded's nodes and CLI load either family).

    model_type ('vit_h', 'vit_l', 'vit_b', 'vit_t') checks the checkpoint is that variant; by default the
    dimensions come from the checkpoint itself. Raises FileNotFoundError naming every place tried.
    image_encoder_backend="onnxruntime" or "openvino" runs the image encoder's float32 CPU inference
    from its export in that runtime (see `onnx_encoder.py`), the rest in PyTorch; "auto" (the default)
    picks the fastest one installed for the model on its device, said once on stderr: OpenVINO for
    MobileSAM's TinyViT on a CPU, PyTorch for the ViTs, on GPUs and for dtypes other than float32.
    The CPU wing's paths are on (`grounded.sam.cpu.accelerate`).
    """
    if image_encoder_backend not in ("auto", "torch", *BACKENDS):
        raise ValueError(f"unknown image_encoder_backend {image_encoder_backend!r}; "
                         f"use one of auto, torch, {', '.join(BACKENDS)}")
    tried: List[str] = []
    state_dict, config = _resolve(str(name_or_path), tried, cache_dir, revision)
    if state_dict is None:
        raise FileNotFoundError(
            f"could not find SAM weights for {str(name_or_path)!r}. Tried:\n  - " + "\n  - ".join(tried)
        )
    if config is None:
        config = infer_config(state_dict)
    if model_type is not None:
        if model_type not in OFFICIAL_CONFIGS:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(OFFICIAL_CONFIGS)}")
        model = build_sam(OFFICIAL_CONFIGS[model_type])
    else:
        model = build_sam(config)
    load_state_dict_strict(model, state_dict, str(name_or_path))
    model = model.to(device=device, dtype=dtype).eval()
    if image_encoder_backend == "auto":
        image_encoder_backend, why = auto_backend(model)
        print(f"grounded.sam: image encoder on {image_encoder_backend} ({why}; image_encoder_backend=auto)",
              file=sys.stderr, flush=True)
    if image_encoder_backend != "torch":
        use_exported_encoder(model, image_encoder_backend)
    return model


def _resolve(
    name: str, tried: List[str], cache_dir, revision
) -> Tuple[Optional[StateDict], Optional[SamConfig]]:
    from .. import weights

    path = Path(name).expanduser()
    if path.is_file():
        return _official_state_dict(read_state_dict(path), str(path)), None
    if path.is_dir():
        return _read_folder(path, tried)
    tried.append(f"local path {path} (does not exist)")

    if name in weights.CHECKPOINTS and weights.CHECKPOINTS[name].model_type:
        try:
            return _official_state_dict(read_state_dict(weights.fetch(name, cache_dir=cache_dir)), name), None
        except FileNotFoundError as err:
            tried.append(f"known checkpoint {name!r}: {err}")
            return None, None

    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        from ..hub import hub_snapshot

        folder = hub_snapshot(name, ["*.json", "*.safetensors", "*.bin"], tried, cache_dir, revision)
        if folder is None:
            return None, None
        return _read_folder(folder, tried)
    else:
        tried.append(f"{name!r} is not a known checkpoint name "
                     f"({', '.join(sorted(n for n, c in weights.CHECKPOINTS.items() if c.model_type))}) "
                     f"nor a hub id of the form org/name")
    return None, None


def _read_folder(folder: Path, tried: List[str]) -> Tuple[Optional[StateDict], Optional[SamConfig]]:
    ours = folder / CONFIG_FILE
    if ours.is_file():
        config = SamConfig.from_dict(json.loads(ours.read_text()))
        return read_state_dict(folder / WEIGHTS_FILE), config
    if (folder / "grounded_sam2_config.json").is_file():
        raise IsSam2Error(f"{folder} is a grounded SAM 2 folder: load it with grounded.sam2.from_pretrained")
    hf_config = folder / "config.json"
    if hf_config.is_file():
        if json.loads(hf_config.read_text()).get("model_type", "").startswith("sam2"):
            raise IsSam2Error(f"{folder} is a Hugging Face SAM 2 model: load it with grounded.sam2.from_pretrained")
        from .hf import load_hf_folder

        return load_hf_folder(folder)
    tried.append(f"folder {folder}: has neither {CONFIG_FILE} nor a Hugging Face config.json")
    return None, None
