"""Hugging Face `transformers` SAM checkpoints (`SamModel`, model_type "sam") in grounded's model.

transformers renames almost every module of the official `segment_anything` model; this module maps
its state dict back to the official names (which grounded's modules use) and its `config.json` to a
grounded `SamConfig`. It is pure key mapping and JSON: transformers need not be installed.

The mapping (HF -> official), every other name being equal on both sides:

    vision_encoder.patch_embed.projection.*          image_encoder.patch_embed.proj.*
    vision_encoder.pos_embed                         image_encoder.pos_embed
    vision_encoder.layers.{i}.layer_norm1|2.*        image_encoder.blocks.{i}.norm1|2.*
    vision_encoder.layers.{i}.attn.{qkv,proj,rel_pos_h,rel_pos_w}, .mlp.lin1|lin2   (blocks.{i}.same)
    vision_encoder.neck.conv1 / layer_norm1 / conv2 / layer_norm2      image_encoder.neck.0 / 1 / 2 / 3
    shared_image_embedding.positional_embedding      prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    prompt_encoder.shared_embedding.positional_embedding    (dropped: transformers ties it to the one above)
    prompt_encoder.point_embed.{i}                   prompt_encoder.point_embeddings.{i}
    prompt_encoder.mask_embed.conv1 / layer_norm1 / conv2 / layer_norm2 / conv3
                                                     prompt_encoder.mask_downscaling.0 / 1 / 3 / 4 / 6
    mask_decoder.upscale_conv1 / upscale_layer_norm / upscale_conv2    mask_decoder.output_upscaling.0 / 1 / 3
    mask_decoder.{output_hypernetworks_mlps.{k},iou_prediction_head}.proj_in / layers.{j} / proj_out
                                                     ....layers.0 / layers.{j+1} / layers.{depth-1}
    mask_decoder.transformer.layers.{i}.layer_norm1..4              ....norm1..4
    mask_decoder.transformer.layer_norm_final_attn                  mask_decoder.transformer.norm_final_attn

One numerical difference is not in the weights: transformers' two-way attention blocks use
`mask_decoder_config.layer_norm_eps` (1e-6 in every published config) for their four LayerNorms, where
the official blocks use torch's default 1e-5 (as grounded does). The final LayerNorm is 1e-5 on both
sides. grounded follows the official model, so its masks can differ from transformers' in the last
digits; they equal transformers' exactly when that config's layer_norm_eps is 1e-5.
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .checkpoint import CheckpointError, infer_config, read_state_dict
from .config import SamConfig

StateDict = Dict[str, torch.Tensor]

# Files of a Hugging Face model folder, in the order transformers prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

_PE_KEY = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_PE_KEY = "shared_image_embedding.positional_embedding"
_HF_TIED_PE_KEY = "prompt_encoder.shared_embedding.positional_embedding"

_WB = r"(weight|bias)"
_NECK = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}
_MASK_EMBED = {"conv1": "0", "layer_norm1": "1", "conv2": "3", "layer_norm2": "4", "conv3": "6"}
_UPSCALING = {"upscale_conv1": "0", "upscale_layer_norm": "1", "upscale_conv2": "3"}

# (full-match pattern on the HF key, replacement template). Every HF key must match exactly one.
_RULES: List[Tuple[str, str]] = [
    (rf"vision_encoder\.patch_embed\.projection\.{_WB}", r"image_encoder.patch_embed.proj.\1"),
    (r"vision_encoder\.pos_embed", "image_encoder.pos_embed"),
    (rf"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.{_WB}", r"image_encoder.blocks.\1.norm\2.\3"),
    (rf"vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)\.{_WB}", r"image_encoder.blocks.\1.attn.\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)", r"image_encoder.blocks.\1.attn.\2"),
    (rf"vision_encoder\.layers\.(\d+)\.mlp\.(lin1|lin2)\.{_WB}", r"image_encoder.blocks.\1.mlp.\2.\3"),
    *[(rf"vision_encoder\.neck\.{hf}\.{_WB}", rf"image_encoder.neck.{ours}.\1") for hf, ours in _NECK.items()],
    (re.escape(_HF_PE_KEY), _PE_KEY),
    (r"prompt_encoder\.point_embed\.(\d+)\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    *[(rf"prompt_encoder\.mask_embed\.{hf}\.{_WB}", rf"prompt_encoder.mask_downscaling.{ours}.\1")
      for hf, ours in _MASK_EMBED.items()],
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    *[(rf"mask_decoder\.{hf}\.{_WB}", rf"mask_decoder.output_upscaling.{ours}.\1") for hf, ours in _UPSCALING.items()],
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
     rf"\.(q_proj|k_proj|v_proj|out_proj)\.{_WB}", r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.{_WB}", r"mask_decoder.transformer.layers.\1.norm\2.\3"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin1|lin2)\.{_WB}", r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
    (rf"mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)\.{_WB}",
     r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
    (rf"mask_decoder\.transformer\.layer_norm_final_attn\.{_WB}", r"mask_decoder.transformer.norm_final_attn.\1"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]
# transformers' SamFeedForward: proj_in, layers.0 .. layers.{depth-3}, proj_out; the official MLP: layers.0 .. layers.{depth-1}.
_FEED_FORWARD = re.compile(rf"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.(proj_in|proj_out|layers\.(\d+))\.{_WB}")


def is_hf_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether a state dict has transformers' SAM names (rather than the official ones)."""
    return any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in sd)


def convert_hf_state_dict(
    sd: Mapping[str, torch.Tensor], hf_config: Optional[Mapping[str, Any]] = None
) -> Tuple[StateDict, Optional[SamConfig]]:
    """Rename a transformers `SamModel` state dict to the official segment_anything names.

    Returns (state dict, config): the config is the grounded `SamConfig` of `hf_config` (the parsed
    `config.json`) checked against the shapes of the weights, or None when hf_config is not given.
    Raises CheckpointError for keys it does not know, listing them all; the only key dropped is
    `prompt_encoder.shared_embedding.positional_embedding`, a buffer that transformers overwrites
    with `shared_image_embedding.positional_embedding` when it loads a model.
    """
    feed_forward_depth = _feed_forward_depths(sd)
    out: StateDict = {}
    source: Dict[str, str] = {}
    unknown: List[str] = []
    for key, tensor in sd.items():
        if key == _HF_TIED_PE_KEY:
            continue
        new = _rename(key, feed_forward_depth)
        if new is None:
            unknown.append(key)
            continue
        if new in out:
            raise CheckpointError(f"Hugging Face keys {source[new]!r} and {key!r} both map to {new!r}")
        out[new], source[new] = tensor, key
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys of the Hugging Face SAM state dict have no counterpart in the official "
            f"SAM model (is this a SamModel checkpoint, model_type 'sam'?): {sorted(unknown)}"
        )
    if _PE_KEY not in out and _HF_TIED_PE_KEY in sd:
        # Only the tied copy was saved: it is the same tensor.
        out[_PE_KEY] = sd[_HF_TIED_PE_KEY]
    config = None
    if hf_config is not None:
        config = sam_config_from_hf(hf_config)
        _check_against_weights(config, out)
    return out, config


def _feed_forward_depths(sd: Mapping[str, Any]) -> Dict[str, int]:
    """Depth (number of linear layers) of each SamFeedForward in the state dict."""
    hidden: Dict[str, int] = {}
    for key in sd:
        m = _FEED_FORWARD.fullmatch(key)
        if m:
            prefix, index = m.group(1), m.group(3)
            count = hidden.setdefault(prefix, 0)
            if index is not None:
                hidden[prefix] = max(count, int(index) + 1)
    return {prefix: n + 2 for prefix, n in hidden.items()}


def _rename(key: str, feed_forward_depth: Dict[str, int]) -> Optional[str]:
    m = _FEED_FORWARD.fullmatch(key)
    if m:
        prefix, part, index, kind = m.groups()
        if part == "proj_in":
            layer = 0
        elif part == "proj_out":
            layer = feed_forward_depth[prefix] - 1
        else:
            layer = int(index) + 1
        return f"{prefix}.layers.{layer}.{kind}"
    for pattern, replacement in _COMPILED:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(replacement)
    return None


# ---------------------------------------------------------------- config.json


# transformers' defaults for fields a config.json may leave out (SamVisionConfig, SamPromptEncoderConfig,
# SamMaskDecoderConfig of transformers 4.x).
_VISION_DEFAULTS = dict(
    hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    image_size=1024, patch_size=16, hidden_act="gelu", qkv_bias=True, mlp_ratio=4.0, use_abs_pos=True,
    use_rel_pos=True, window_size=14, global_attn_indexes=[2, 5, 8, 11], num_pos_feats=128, mlp_dim=None,
)
_PROMPT_DEFAULTS = dict(hidden_size=256, image_size=1024, patch_size=16, mask_input_channels=16,
                        num_point_embeddings=4, hidden_act="gelu")
_DECODER_DEFAULTS = dict(
    hidden_size=256, hidden_act="relu", mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8,
    attention_downsample_rate=2, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
)


def sam_config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> SamConfig:
    """The grounded SamConfig of a transformers SamModel `config.json` (as a dict).

    Raises CheckpointError when the config is not a SAM config or describes a model grounded cannot
    build (no absolute or relative positions, no qkv bias, other activations, inconsistent widths)."""
    model_type = hf_config.get("model_type")
    if model_type != "sam":
        raise CheckpointError(
            f"{source}: model_type is {model_type!r}, not 'sam'; grounded reads Hugging Face SamModel "
            f"checkpoints only"
        )
    vision = _with_defaults(hf_config.get("vision_config"), _VISION_DEFAULTS)
    prompt = _with_defaults(hf_config.get("prompt_encoder_config"), _PROMPT_DEFAULTS)
    decoder = _with_defaults(hf_config.get("mask_decoder_config"), _DECODER_DEFAULTS)

    problems: List[str] = []

    def require(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    hidden = int(vision["hidden_size"])
    mlp_dim = vision["mlp_dim"] if vision["mlp_dim"] is not None else int(hidden * vision["mlp_ratio"])
    embed = int(vision["output_channels"])
    image_size = int(vision["image_size"])
    patch = int(vision["patch_size"])
    require(vision["use_abs_pos"] is True, "vision_config.use_abs_pos must be true")
    require(vision["use_rel_pos"] is True, "vision_config.use_rel_pos must be true")
    require(vision["qkv_bias"] is True, "vision_config.qkv_bias must be true")
    require(vision["hidden_act"] == "gelu", f"vision_config.hidden_act is {vision['hidden_act']!r}, not 'gelu'")
    require(vision["num_channels"] == 3, f"vision_config.num_channels is {vision['num_channels']}, not 3")
    require(image_size // patch == image_size // 16,
            f"vision_config image_size {image_size} / patch_size {patch} must give the grid image_size // 16")
    require(int(prompt["image_size"]) == image_size,
            f"prompt_encoder_config.image_size {prompt['image_size']} != vision_config.image_size {image_size}")
    require(int(prompt["image_size"]) // int(prompt["patch_size"]) == image_size // patch,
            "prompt_encoder_config's image embedding grid differs from the vision encoder's")
    require(int(prompt["hidden_size"]) == embed,
            f"prompt_encoder_config.hidden_size {prompt['hidden_size']} != vision_config.output_channels {embed}")
    require(int(decoder["hidden_size"]) == embed,
            f"mask_decoder_config.hidden_size {decoder['hidden_size']} != vision_config.output_channels {embed}")
    require(2 * int(vision["num_pos_feats"]) == embed,
            f"2 * vision_config.num_pos_feats ({2 * int(vision['num_pos_feats'])}) != output_channels {embed}")
    require(int(prompt["num_point_embeddings"]) == 4, "prompt_encoder_config.num_point_embeddings must be 4")
    require(prompt["hidden_act"] == "gelu", f"prompt_encoder_config.hidden_act is {prompt['hidden_act']!r}, not 'gelu'")
    require(decoder["hidden_act"] == "relu", f"mask_decoder_config.hidden_act is {decoder['hidden_act']!r}, not 'relu'")
    require(int(decoder["attention_downsample_rate"]) == 2, "mask_decoder_config.attention_downsample_rate must be 2")
    require(int(decoder["iou_head_depth"]) >= 2, "mask_decoder_config.iou_head_depth must be at least 2")
    require(hidden % int(vision["num_attention_heads"]) == 0, "vision_config.num_attention_heads must divide hidden_size")
    if problems:
        raise CheckpointError(f"{source} describes a SAM that grounded cannot build: " + "; ".join(problems))
    return SamConfig(
        encoder="vit",
        image_size=image_size,
        patch_size=patch,
        encoder_embed_dim=hidden,
        encoder_depth=int(vision["num_hidden_layers"]),
        encoder_num_heads=int(vision["num_attention_heads"]),
        encoder_global_attn_indexes=tuple(int(i) for i in vision["global_attn_indexes"]),
        window_size=int(vision["window_size"]),
        mlp_ratio=mlp_dim / hidden,
        prompt_embed_dim=embed,
        mask_in_chans=int(prompt["mask_input_channels"]),
        decoder_depth=int(decoder["num_hidden_layers"]),
        decoder_num_heads=int(decoder["num_attention_heads"]),
        decoder_mlp_dim=int(decoder["mlp_dim"]),
        num_multimask_outputs=int(decoder["num_multimask_outputs"]),
        iou_head_depth=int(decoder["iou_head_depth"]),
        iou_head_hidden_dim=int(decoder["iou_head_hidden_dim"]),
    )


def _with_defaults(section: Any, defaults: Dict[str, Any]) -> Dict[str, Any]:
    values = dict(defaults)
    if isinstance(section, Mapping):
        values.update({k: v for k, v in section.items() if k in defaults})
    return values


def _check_against_weights(config: SamConfig, sd: Mapping[str, torch.Tensor]) -> None:
    """config.json and the weight shapes must describe the same model (the decoder's head count, which
    no shape shows, and the window size when every block attends globally, are taken on trust)."""
    inferred = infer_config(sd)
    fields = ["image_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads", "mlp_ratio",
              "prompt_embed_dim", "mask_in_chans", "decoder_depth", "decoder_mlp_dim", "num_multimask_outputs",
              "iou_head_depth", "iou_head_hidden_dim"]
    diffs = [f"{f}: config.json says {getattr(config, f)}, the weights {getattr(inferred, f)}"
             for f in fields if getattr(config, f) != getattr(inferred, f)]
    if sorted(config.encoder_global_attn_indexes) != sorted(inferred.encoder_global_attn_indexes):
        diffs.append(f"encoder_global_attn_indexes: config.json says {list(config.encoder_global_attn_indexes)}, "
                     f"the weights {list(inferred.encoder_global_attn_indexes)}")
    if len(inferred.encoder_global_attn_indexes) < inferred.encoder_depth and config.window_size != inferred.window_size:
        diffs.append(f"window_size: config.json says {config.window_size}, the weights {inferred.window_size}")
    if diffs:
        raise CheckpointError("the Hugging Face config.json does not match its weights: " + "; ".join(diffs))


def _pixel_statistics(folder: Path) -> Dict[str, Tuple[float, float, float]]:
    """pixel_mean/pixel_std (0-255 scale) from preprocessor_config.json, when it has them."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        pre = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not pre.get("do_normalize", True) or not (isinstance(mean, list) and isinstance(std, list)):
        return {}
    if len(mean) != 3 or len(std) != 3:
        return {}
    scale = 1.0 / float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    return {"pixel_mean": tuple(round(float(m) * scale, 6) for m in mean),
            "pixel_std": tuple(round(float(s) * scale, 6) for s in std)}


# ---------------------------------------------------------------- folders


def load_hf_folder(folder: Union[str, Path]) -> Tuple[StateDict, SamConfig]:
    """Read a transformers SamModel folder (`save_pretrained` output or a hub snapshot): config.json
    plus model.safetensors, pytorch_model.bin or their sharded `*.index.json` forms. Returns the
    state dict under official names and its SamConfig (pixel statistics from preprocessor_config.json
    when present)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a Hugging Face model folder")
    try:
        hf_config = json.loads(config_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(hf_config, dict) or hf_config.get("model_type") != "sam":
        found = hf_config.get("model_type") if isinstance(hf_config, dict) else type(hf_config).__name__
        raise CheckpointError(
            f"{config_path} has model_type {found!r}: grounded loads Hugging Face SAM models "
            f"(model_type 'sam', transformers' SamModel) only"
        )
    state_dict = _read_weights(folder)
    state_dict, config = convert_hf_state_dict(state_dict, hf_config)
    stats = _pixel_statistics(folder)
    if stats:
        config = dataclasses.replace(config, **stats)
    return state_dict, config


def _read_weights(folder: Path) -> StateDict:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            return _read_sharded(path)
        return read_state_dict(path)
    raise FileNotFoundError(
        f"no weights in Hugging Face model folder {folder}: looked for {', '.join(WEIGHT_FILES)}"
    )


def _read_sharded(index_path: Path) -> StateDict:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a sharded-checkpoint index ({err!r})") from None
    shards = list(dict.fromkeys(weight_map.values()))
    missing = [s for s in shards if not (index_path.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} names shards that are not in {index_path.parent}: {missing}")
    sd: StateDict = {}
    for shard in shards:
        sd.update(read_state_dict(index_path.parent / shard))
    absent = sorted(set(weight_map) - set(sd))
    if absent:
        raise CheckpointError(f"{index_path}: {len(absent)} keys of its weight_map are in no shard: {absent[:10]}")
    return sd
