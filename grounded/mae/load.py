"""Reading MAE (and plain ViT) weights from where they live, into the official MAE layout:

- the official checkpoints `mae_pretrain_vit_{base,large,huge}.pth` (encoder only) and
  `mae_visualize_vit_*.pth` (with the decoder): `{"model": state_dict}` in `models_mae.py`'s names;
  timm ViT checkpoints share those names;
- Hugging Face folders (or hub ids) of `ViTMAEForPreTraining` / `ViTMAEModel` (`facebook/vit-mae-*`)
  and of plain `ViTModel`: config.json + model.safetensors or pytorch_model.bin;
- grounded's own: a folder from `save_mae` (mae_config.json + model.safetensors) or a training
  checkpoint from `grounded pretrain`.

Pickles are read with weights_only=True. A checkpoint of another architecture is refused with what
it looks like."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from .model import MAEConfig, MaskedAutoencoder
from .modes import outside_inference_mode

StateDict = Dict[str, torch.Tensor]
CONFIG_FILE = "mae_config.json"
WEIGHTS_FILE = "model.safetensors"
# The official MAE models' head counts: ViT-H (1280 wide) has 16 heads of 80, not 20 of 64.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class MAECheckpointError(ValueError):
    """Weights that are not an MAE / ViT encoder in a layout grounded reads."""


@dataclass
class MAEWeights:
    state_dict: StateDict  # official MAE names
    config: MAEConfig
    has_decoder: bool
    source: str


def read_mae_weights(source: Union[str, Path], num_heads: Optional[int] = None,
                     cache_dir: Optional[Union[str, Path]] = None) -> MAEWeights:
    """The weights at `source` (file, folder or Hugging Face hub id) in the official MAE layout.
    `num_heads` overrides the head count, which a .pth file does not record (the official models'
    counts are known by width; otherwise width / 64 is assumed)."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return _read_folder(path, num_heads)
    if path.is_file():
        data = _read_file(path)
        if isinstance(data.get("mae_config"), Mapping):  # a grounded pretrain checkpoint
            return _checked(data["model"], MAEConfig.from_dict(dict(data["mae_config"])), str(path))
        state_dict = _unwrap(data, path)
        if _is_hf(state_dict):
            raise MAECheckpointError(f"{path} holds transformers ViT weights without their config.json; "
                                     "give the folder that has both")
        return _from_official(state_dict, str(path), num_heads)
    tried = [f"local path {path} (does not exist)"]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        from ..hub import hub_snapshot

        folder = hub_snapshot(str(source), ["*.json", "*.safetensors", "*.bin"], tried, cache_dir)
        if folder is not None:
            return _read_folder(folder, num_heads)
    raise FileNotFoundError(f"could not find MAE weights for {str(source)!r}. Tried:\n  - " + "\n  - ".join(tried))


def load_mae(source: Union[str, Path], device: Union[str, torch.device] = "cpu",
             dtype: Optional[torch.dtype] = None, num_heads: Optional[int] = None) -> MaskedAutoencoder:
    """A MaskedAutoencoder with the weights at `source`, which must include the decoder."""
    weights = read_mae_weights(source, num_heads)
    if not weights.has_decoder:
        raise MAECheckpointError(f"{weights.source} holds the encoder only (as mae_pretrain_vit_*.pth does); "
                                 "use it as `init:` of a pre-training run (a new decoder), or convert it to SAM")
    return mae_from_weights(weights).to(device=device, dtype=dtype).eval()


@outside_inference_mode()
def mae_from_weights(weights: MAEWeights) -> MaskedAutoencoder:
    """A MaskedAutoencoder of the weights' dimensions holding them; an encoder-only checkpoint keeps
    the freshly initialised decoder. Trainable parameters even when called under inference_mode."""
    model = MaskedAutoencoder(weights.config)
    missing, unexpected = model.load_state_dict(weights.state_dict, strict=False)
    missing = [k for k in missing if weights.has_decoder or not k.startswith(_DECODER_PREFIXES)]
    if missing or unexpected:
        raise MAECheckpointError(f"{weights.source} does not fit an MAE of its own dimensions: missing "
                                 f"{missing[:5]}, unexpected {unexpected[:5]}")
    return model


def save_mae(model: MaskedAutoencoder, folder: Union[str, Path]) -> Path:
    """Write model.safetensors and mae_config.json, which `load_mae` and the converter read."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "library": "grounded.mae"})
    (folder / CONFIG_FILE).write_text(model.config.to_json())
    return folder


# ---------------------------------------------------------------- files and folders

_DECODER_PREFIXES = ("decoder_", "mask_token")


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends
        raise MAECheckpointError(f"cannot read {path} as a weights-only checkpoint (grounded never unpickles "
                                 f"code; re-save its state_dict): {err.__class__.__name__}: "
                                 f"{str(err).splitlines()[0][:200]}") from None
    if not isinstance(data, Mapping):
        raise MAECheckpointError(f"{path} holds a {type(data).__name__}, not a state dict")
    return dict(data)


def _unwrap(data: Mapping, path: Path) -> StateDict:
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise MAECheckpointError(f"{path} holds no tensors")
    return tensors


def _read_folder(folder: Path, num_heads: Optional[int]) -> MAEWeights:
    if (folder / CONFIG_FILE).is_file():
        config = MAEConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        return _checked(_read_file(folder / WEIGHTS_FILE), config, str(folder))
    if (folder / "config.json").is_file():
        return _from_hf_folder(folder)
    raise MAECheckpointError(f"folder {folder} has neither {CONFIG_FILE} (grounded) nor config.json (transformers)")


def _checked(state_dict: Mapping, config: MAEConfig, source: str) -> MAEWeights:
    sd = dict(state_dict)
    return MAEWeights(sd, config, any(k.startswith("decoder_") for k in sd), source)


# ---------------------------------------------------------------- the official layout


def _from_official(sd: StateDict, source: str, num_heads: Optional[int]) -> MAEWeights:
    if "patch_embed.proj.weight" not in sd or "blocks.0.attn.qkv.weight" not in sd:
        raise MAECheckpointError(f"{source} is not an MAE or ViT encoder: it looks like {describe_architecture(sd)}")
    patch = sd["patch_embed.proj.weight"]
    width, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    grid, _ = pos_embed_grid(sd["pos_embed"], source)
    decoder = {}
    if "decoder_pred.weight" in sd:
        dec_width = sd["decoder_embed.weight"].shape[0]
        # The official decoder (512 wide) has 16 heads; other widths: heads of 32 channels.
        decoder = dict(decoder_embed_dim=dec_width, decoder_depth=_count(sd, r"decoder_blocks\.(\d+)\."),
                       decoder_num_heads=16 if dec_width == 512 else max(1, dec_width // 32))
    config = MAEConfig(
        image_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=width,
        depth=_count(sd, r"blocks\.(\d+)\."), num_heads=num_heads or _HEADS_BY_WIDTH.get(width, max(1, width // 64)),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width, **decoder)
    return MAEWeights(dict(sd), config, bool(decoder), source)


def pos_embed_grid(pos_embed: torch.Tensor, source: str = "checkpoint") -> Tuple[int, int]:
    """(grid side, prefix tokens) of a 1 x (prefix + grid^2) x D position embedding (square grids)."""
    n = pos_embed.shape[1]
    for prefix in (1, 0, *range(2, 9)):  # a cls token, none, or cls + registers
        side = int(round((n - prefix) ** 0.5))
        if n - prefix > 0 and side * side == n - prefix:
            return side, prefix
    raise MAECheckpointError(f"{source}: a position embedding of {n} tokens is no square grid of patches")


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ---------------------------------------------------------------- transformers' layout


def _is_hf(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(re.match(r"(vit\.)?embeddings\.patch_embeddings\.projection\.", k) for k in sd)


def _from_hf_folder(folder: Path) -> MAEWeights:
    cfg = json.loads((folder / "config.json").read_text())
    kind = cfg.get("model_type")
    if kind not in ("vit_mae", "vit"):
        raise MAECheckpointError(f"{folder} is a transformers '{kind}' model ({', '.join(cfg.get('architectures') or [])}), "
                                 f"not ViTMAE or ViT")
    files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    if not files:
        raise MAECheckpointError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")
    sd = _unwrap(_read_file(files[0]), files[0])
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise MAECheckpointError(f"{folder}: hidden_act {cfg['hidden_act']!r}; MAE uses exact GELU")
    width, heads = cfg.get("hidden_size", 768), cfg.get("num_attention_heads", 12)
    decoder_width = cfg.get("decoder_hidden_size", 512)
    config = MAEConfig(
        image_size=cfg.get("image_size", 224), patch_size=cfg.get("patch_size", 16), in_chans=cfg.get("num_channels", 3),
        embed_dim=width, depth=cfg.get("num_hidden_layers", 12), num_heads=heads,
        decoder_embed_dim=decoder_width, decoder_depth=cfg.get("decoder_num_hidden_layers", 8),
        decoder_num_heads=cfg.get("decoder_num_attention_heads", 16),
        mlp_ratio=cfg.get("intermediate_size", 4 * width) / width, norm_eps=cfg.get("layer_norm_eps", 1e-12))
    if kind == "vit_mae" and cfg.get("decoder_intermediate_size", 2048) != config.mlp_ratio * decoder_width:
        raise MAECheckpointError(f"{folder}: decoder_intermediate_size {cfg.get('decoder_intermediate_size')} is not "
                                 f"{config.mlp_ratio} x decoder_hidden_size as the encoder's ratio; not supported")
    converted = convert_hf_state_dict(sd, cfg.get("qkv_bias", True))
    return MAEWeights(converted, config, "decoder_pred.weight" in converted, str(folder))


# Block parts in the names of the hub files (transformers 4) and of transformers 5's modules.
_HF_BLOCK = {
    "layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {"query": "query", "key": "key", "value": "value", "q_proj": "query", "k_proj": "key", "v_proj": "value"}
# Encoder layers: `encoder.layer.N` (hub files) or `layers.N` (transformers 5's modules); decoder layers:
# `decoder.decoder_layers.N`, or `decoder.decoder_encoder.layer.N` as transformers 5.23's save_pretrained writes them.
_HF_LAYER = re.compile(r"(encoder\.layer|layers|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm",
    "decoder.decoder_embed": "decoder_embed", "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed", "decoder.decoder_norm": "decoder_norm",
    "decoder.decoder_pred": "decoder_pred",
}


def convert_hf_state_dict(sd: Mapping[str, torch.Tensor], qkv_bias: bool = True) -> StateDict:
    """transformers' ViTMAE / ViT names (hub files and transformers 5's own) -> the official MAE names; query, key and value fused into
    qkv (zero biases where the model has none). The pooler and classifier are dropped."""
    out: StateDict = {}
    qkv: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        name = key[4:] if key.startswith("vit.") else key
        m = _HF_LAYER.match(name)
        if m:
            blocks = "decoder_blocks" if m.group(1).startswith("decoder.") else "blocks"
            part, kind = m.group(3), m.group(4)
            q = re.fullmatch(r"attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)", part)
            if q:
                qkv.setdefault(f"{blocks}.{m.group(2)}.attn.qkv.{kind}", {})[_HF_QKV[q.group(1)]] = value
            elif part in _HF_BLOCK:
                out[f"{blocks}.{m.group(2)}.{_HF_BLOCK[part]}.{kind}"] = value
            continue
        stem, _, kind = name.rpartition(".")
        if name in _HF_TOP:
            out[_HF_TOP[name]] = value
        elif stem in _HF_TOP:
            out[f"{_HF_TOP[stem]}.{kind}"] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    if not qkv_bias:
        for key in [k for k in out if k.endswith("attn.qkv.weight")]:
            out[key[:-6] + "bias"] = out[key].new_zeros(out[key].shape[0])
    return out


# ---------------------------------------------------------------- what else it could be


_SIGNATURES: List[Tuple[str, str]] = [
    (r"image_encoder\.trunk\.", "SAM 2 (a Hiera image encoder)"),
    (r"image_encoder\.patch_embed\.seq\.", "MobileSAM (SAM with a TinyViT image encoder)"),
    (r"image_encoder\.blocks\.\d+\.attn\.rel_pos_h", "SAM (segment-anything ViT image encoder + decoder); "
                                                      "load it with grounded.sam.from_pretrained"),
    (r"(vision_encoder|image_encoder)\.", "a SAM model in another layout"),
    (r"patch_embed\.seq\.", "TinyViT"),
    (r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table", "a Swin Transformer"),
    (r"(downsample_layers|stages)\.\d+\.", "a ConvNeXt (or another staged CNN)"),
    (r"layer1\.0\.conv1\.weight", "a ResNet"),
    (r"(vision_model|visual)\.", "a CLIP image tower"),
    (r"(model\.)?(backbone|transformer)\.", "a detector (backbone + transformer)"),
    (r"(encoder|decoder)\.blocks\.\d+\.attn\.query\.", "a Whisper speech model"),
]


def describe_architecture(sd: Mapping[str, torch.Tensor]) -> str:
    """A guess at what a state dict is, from its key names, with a few keys as evidence."""
    keys = list(sd)
    for pattern, name in _SIGNATURES:
        if any(re.match(pattern, k) for k in keys):
            return f"{name} (keys such as {keys[:3]})"
    return f"no architecture grounded knows ({len(keys)} tensors, first keys {keys[:4]})"
