"""Official Grounding DINO checkpoints (groundingdino-py layout) -> transformers'
`GroundingDinoForObjectDetection` layout. The transformers wheel ships no converter; this one maps
every key by rule, splits fused q/k/v projections, and checks the result against the model the
config describes: nothing left over, nothing missing, every shape equal (else a ValueError naming
the keys).

    grounded convert grounding-dino groundingdino_swint_ogc.pth GroundingDINO_SwinT_OGC.py \\
        --text-encoder path/to/bert-base-uncased --out grounding-dino-tiny-converted/

The result is a folder `GroundingDinoForObjectDetection.from_pretrained` and `AutoProcessor` read
(config.json, model.safetensors, preprocessor_config.json, tokenizer files)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

from .checkpoint import load_official_state_dict, read_config

# Swin variants groundingdino-py builds by name (its build_swin_transformer table).
SWIN_VARIANTS = {
    "swin_T_224_1k": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
    "swin_B_224_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7, image_size=224),
    "swin_B_384_22k": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
    "swin_L_224_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=7, image_size=224),
    "swin_L_384_22k": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384),
}

# Official settings the transformers implementation has no switch for: they must have these values.
_FIXED = {"position_embedding": ("sine", "v2"), "pre_norm": (False,), "two_stage_type": ("standard",),
          "query_dim": (4,), "num_patterns": (0,), "use_text_enhancer": (True,), "use_fusion_layer": (True,),
          "use_text_cross_attention": (True,), "sub_sentence_present": (True,), "modelname": ("groundingdino",)}


def hf_config_from_official(cfg: Mapping[str, Any], text_config: Mapping[str, Any]):
    """The transformers `GroundingDinoConfig` for an official config (a dict of its .py settings)
    and the BERT text encoder's config dict."""
    from transformers import GroundingDinoConfig

    for key, allowed in _FIXED.items():
        if key in cfg and cfg[key] not in allowed:
            raise ValueError(f"official config has {key}={cfg[key]!r}; transformers' Grounding DINO supports only "
                             f"{' or '.join(map(repr, allowed))}")
    if cfg.get("backbone") not in SWIN_VARIANTS:
        raise ValueError(f"official config backbone {cfg.get('backbone')!r} is not one of {sorted(SWIN_VARIANTS)}")
    if cfg.get("pe_temperatureH", 20) != cfg.get("pe_temperatureW", 20):
        raise ValueError("pe_temperatureH and pe_temperatureW differ; transformers has one temperature")
    swin = dict(SWIN_VARIANTS[cfg["backbone"]])
    swin.update(model_type="swin", out_indices=[i + 1 for i in cfg.get("return_interm_indices", [1, 2, 3])])
    return GroundingDinoConfig(
        backbone_config=swin, text_config=dict(text_config), num_queries=cfg["num_queries"], d_model=cfg["hidden_dim"],
        encoder_layers=cfg["enc_layers"], decoder_layers=cfg["dec_layers"],
        encoder_ffn_dim=cfg["dim_feedforward"], decoder_ffn_dim=cfg["dim_feedforward"],
        encoder_attention_heads=cfg["nheads"], decoder_attention_heads=cfg["nheads"],
        num_feature_levels=cfg["num_feature_levels"], encoder_n_points=cfg["enc_n_points"],
        decoder_n_points=cfg["dec_n_points"], activation_function=cfg.get("transformer_activation", "relu"),
        two_stage=True, embedding_init_target=cfg.get("embed_init_tgt", True),
        decoder_bbox_embed_share=cfg.get("dec_pred_bbox_embed_share", True),
        two_stage_bbox_embed_share=cfg.get("two_stage_bbox_embed_share", False),
        positional_embedding_temperature=cfg.get("pe_temperatureH", 20),
        # groundingdino-py pads logits to 256 text positions whatever its config says.
        max_text_len=256, query_dim=4,
    )


# ---- key mapping ---------------------------------------------------------------------------------

_SWIN = "model.backbone.conv_encoder.model."
_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
          "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
          "attn.relative_position_index": "attention.self.relative_position_index",
          "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_ENCODER_DEFORMABLE = {"self_attn": "self_attn", "norm1": "self_attn_layer_norm", "linear1": "fc1",
                       "linear2": "fc2", "norm2": "final_layer_norm"}
_TEXT_ENHANCER = {"self_attn.out_proj": "self_attn.out_proj", "linear1": "fc1", "linear2": "fc2",
                  "norm1": "layer_norm_before", "norm2": "layer_norm_after"}
_FUSION = {"gamma_v": "vision_param", "gamma_l": "text_param", "layer_norm_v": "layer_norm_vision",
           "layer_norm_l": "layer_norm_text", "attn.v_proj": "attn.vision_proj", "attn.l_proj": "attn.text_proj",
           "attn.values_v_proj": "attn.values_vision_proj", "attn.values_l_proj": "attn.values_text_proj",
           "attn.out_v_proj": "attn.out_vision_proj", "attn.out_l_proj": "attn.out_text_proj"}
_DECODER = {"cross_attn": "encoder_attn", "norm1": "encoder_attn_layer_norm",
            "ca_text.out_proj": "encoder_attn_text.out_proj", "catext_norm": "encoder_attn_text_layer_norm",
            "self_attn.out_proj": "self_attn.out_proj", "norm2": "self_attn_layer_norm", "linear1": "fc1",
            "linear2": "fc2", "norm3": "final_layer_norm"}
# Fused q/k/v (torch MultiheadAttention's in_proj, timm's qkv) -> transformers' separate projections.
_FUSED = {"attn.qkv": "attention.self", "self_attn.in_proj": "self_attn", "ca_text.in_proj": "encoder_attn_text"}
_PREFIXES = [
    ("feat_map.", "model.text_projection."), ("input_proj.", "model.input_proj_vision."),
    ("transformer.level_embed", "model.level_embed"),
    ("transformer.tgt_embed.", "model.query_position_embeddings."),
    ("transformer.enc_output_norm.", "model.enc_output_norm."), ("transformer.enc_output.", "model.enc_output."),
    ("transformer.enc_out_bbox_embed.", "model.encoder_output_bbox_embed."),
    ("transformer.decoder.norm.", "model.decoder.layer_norm."),
    ("transformer.decoder.ref_point_head.", "model.decoder.reference_points_head."),
    ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."), ("bbox_embed.", "bbox_embed."),
    ("backbone.0.patch_embed.proj.", _SWIN + "embeddings.patch_embeddings.projection."),
    ("backbone.0.patch_embed.norm.", _SWIN + "embeddings.norm."), ("bert.", "model.text_backbone."),
]
# In released official checkpoints but in neither model: the denoising-training label embedding
# (`label_enc`) and the BERT position-id buffer older transformers versions saved (groundingdino-py's
# own `load_model` loads with strict=False and reports both as unexpected).
NOT_IN_MODEL = ("label_enc.", "bert.embeddings.position_ids")
# ... and BERT's pooler, which the official model has (unused for detection) and transformers' has not.
DROPPED = NOT_IN_MODEL + ("bert.pooler.",)


def _sub(rest: str, table: Mapping[str, str]) -> Union[str, None]:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


_FUSED_KEY = re.compile(r"(.*)\.(attn\.qkv|self_attn\.in_proj|ca_text\.in_proj)[._](weight|bias)")


def _layer(prefix: str) -> Union[Tuple[str, Mapping[str, str]], None]:
    """(transformers prefix, name table) of an official layer prefix."""
    if m := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)", prefix):
        return f"{_SWIN}encoder.layers.{m[1]}.blocks.{m[2]}", _BLOCK
    if m := re.fullmatch(r"transformer\.encoder\.layers\.(\d+)", prefix):
        return f"model.encoder.layers.{m[1]}.deformable_layer", _ENCODER_DEFORMABLE
    if m := re.fullmatch(r"transformer\.encoder\.text_layers\.(\d+)", prefix):
        return f"model.encoder.layers.{m[1]}.text_enhancer_layer", _TEXT_ENHANCER
    if m := re.fullmatch(r"transformer\.encoder\.fusion_layers\.(\d+)", prefix):
        return f"model.encoder.layers.{m[1]}.fusion_layer", _FUSION
    if m := re.fullmatch(r"transformer\.decoder\.layers\.(\d+)", prefix):
        return f"model.decoder.layers.{m[1]}", _DECODER
    return None


def map_key(key: str) -> Union[str, Tuple[str, str, str], None]:
    """The transformers name of an official key; for a fused q/k/v tensor a (query, key, value)
    triple of names; None for a key that is dropped. Raises KeyError for an unknown key."""
    if key.startswith(DROPPED):
        return None
    if fused := _FUSED_KEY.fullmatch(key):
        layer = _layer(fused[1])
        if layer is not None:
            return tuple(f"{layer[0]}.{_FUSED[fused[2]]}.{part}.{fused[3]}" for part in ("query", "key", "value"))
    if m := re.fullmatch(r"(backbone\.0\.layers\.\d+\.blocks\.\d+|transformer\.(?:encoder|decoder)\.\w+\.\d+)\.(.+)", key):
        layer = _layer(m[1])
        if layer is not None:
            new = _sub(m[2], layer[1])
            if new is None:
                raise KeyError(key)
            return f"{layer[0]}.{new}"
    if m := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.downsample\.(.+)", key):
        return f"{_SWIN}encoder.layers.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"backbone\.0\.norm(\d+)\.(weight|bias)", key):
        return f"{_SWIN}hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}"
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(key)


def convert_state_dict(official: Mapping[str, Any]) -> Dict[str, Any]:
    """Official state dict (with or without `module.` prefixes) -> transformers names. Unknown keys
    are refused by name."""
    out: Dict[str, Any] = {}
    unknown: List[str] = []
    for key, tensor in official.items():
        key = key[len("module."):] if key.startswith("module.") else key
        try:
            new = map_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            continue
        if isinstance(new, tuple):
            for name, part in zip(new, tensor.chunk(3, dim=0)):
                out[name] = part.clone()
        else:
            out[new] = tensor
    if unknown:
        raise ValueError(f"{len(unknown)} checkpoint keys have no transformers counterpart: {list_some(unknown)}")
    return out


def check_state_dict(expected: Mapping[str, Any], state: Mapping[str, Any], what: str = "checkpoint") -> None:
    """Raise a ValueError naming missing, unexpected and mis-shaped keys of `state` against the
    tensors (or shapes) of `expected`, a model's state dict."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} in the {what}, {tuple(expected[k].shape)} in the model"
              for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shapes differ ({list_some(shapes)})")
    if missing:
        problems.append(f"{len(missing)} weights missing ({list_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights ({list_some(unexpected)})")
    if problems:
        raise ValueError(f"the {what} does not match the model its config describes: " + "; ".join(problems)
                         + ". Check that the config file is the one this checkpoint was trained with.")


def list_some(items: List[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_converted(state: Mapping[str, Any], hf_config, what: str = "checkpoint") -> Dict[str, Any]:
    """`state` (converted names) checked against the checkpoint a transformers Grounding DINO for
    `hf_config` holds, names as in its files (`transformers_compat.checkpoint_state`); returns it
    without what transformers rebuilds itself (Swin's relative_position_index in 5.x). A weight it
    never uses (5.x's final Swin norm) may be absent."""
    import torch
    from transformers import GroundingDinoForObjectDetection

    from ..transformers_compat import checkpoint_state, ignored_on_load

    with torch.device("meta"):
        skeleton = GroundingDinoForObjectDetection(hf_config)
    expected = checkpoint_state(skeleton)
    state = {k: v for k, v in state.items() if k in expected or not ignored_on_load(skeleton, [k], "unexpected")}
    expected = {k: v for k, v in expected.items() if k in state or not ignored_on_load(skeleton, [k], "missing")}
    check_state_dict(expected, state, what=what)
    return state


def convert_checkpoint(checkpoint: Union[str, Path], config: Union[str, Path], text_encoder: Union[str, Path],
                       out_dir: Union[str, Path], log: Callable[[str], None] = lambda _: None):
    """Convert an official checkpoint + its .py config to a transformers folder in `out_dir`
    (model weights, config, processor with the text encoder's tokenizer). Returns the model, read
    back from `out_dir`."""
    import torch
    from safetensors.torch import save_file
    from transformers import (AutoTokenizer, BertConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor)

    from ..transformers_compat import load_checked

    cfg = read_config(config)
    text_encoder = Path(text_encoder)
    if not (text_encoder / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {text_encoder} has no config.json (a BERT folder, e.g. "
                                "bert-base-uncased saved with save_pretrained)")
    hf_config = hf_config_from_official(cfg, BertConfig.from_pretrained(text_encoder).to_dict())
    state = check_converted(convert_state_dict(load_official_state_dict(checkpoint)), hf_config,
                            what=f"checkpoint {Path(checkpoint).name}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(out_dir)
    # Every tensor its own copy (the official model shares its box heads), then read back by transformers
    # and saved its own way (tied weights once, 5.x's names).
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    model = load_checked(GroundingDinoForObjectDetection, out_dir, f"the converted {Path(checkpoint).name}",
                         dtype=torch.float32).eval()
    model.save_pretrained(out_dir)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                           tokenizer=AutoTokenizer.from_pretrained(text_encoder)).save_pretrained(out_dir)
    log(f"converted {len(state)} tensors to {out_dir}")
    return model
