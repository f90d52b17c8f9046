"""Tiny random Grounding DINO for both backends, built from configs and saved where the real
loading code reads them:

- `tiny_text_encoder(dir)`: a BERT WordPiece tokenizer holding the test prompts' words whole,
  laid out so [CLS], [SEP], "." and "?" have bert-base-uncased's ids (101, 102, 1012, 1029:
  transformers' Grounding DINO hard-codes those ids to find phrase boundaries), and a tiny random
  `BertModel`; the folder groundingdino-py's `text_encoder_type` points at.
- `tiny_official(dir)`: groundingdino-py's model built by its own builder from a small `.py` config
  (the real Swin-T backbone, which that builder only knows by name, and a narrow transformer),
  random weights, saved as an official checkpoint `{"model": state_dict}`.
- `tiny_hf(dir)`: transformers' `GroundingDinoForObjectDetection` from the matching
  `GroundingDinoConfig`, random weights, saved with its processor (`from_pretrained`-ready).

The two configs describe the same architecture, so an official checkpoint converted by
`grounded.detect.convert` loads into the transformers model (the parity tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch

from . import randomize_

# Words of every prompt the detection tests use (the tokenizer holds each of them whole).
PROMPT_CORPUS = [
    "dog . cat . red car .",
    "a dog . a cat . a person . a red car . a bicycle . a tree . the sky .",
    "two dogs playing with a stick on the beach ? green apple . blue ball . zebra",
]

# bert-base-uncased's ids of the tokens transformers' GroundingDinoModel treats as phrase delimiters.
BERT_BASE_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}

# groundingdino-py hard-codes 256 text position features, so its hidden size must be 256.
TINY_DIMS = dict(hidden_dim=256, nheads=8, dim_feedforward=128, enc_layers=1, dec_layers=2, num_queries=30)
# Random weights give class logits of tens; the decoder's last norm is scaled down so scores spread over (0, 1).
LOGIT_SCALE = 0.15


def tiny_text_encoder(out_dir: Union[str, Path], corpus: Iterable[str] = PROMPT_CORPUS, seed: int = 0,
                      hidden_size: int = 32):
    """A BERT tokenizer (bert-base-uncased's special-token ids) + tiny random BertModel in `out_dir`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from .tokenizers import wordpiece_vocabulary

    out_dir = Path(out_dir)
    pieces = [t for t in wordpiece_vocabulary(corpus) if t not in BERT_BASE_IDS]
    size = max(max(BERT_BASE_IDS.values()) + 1, len(pieces) + len(BERT_BASE_IDS)) + 8
    vocab = [None] * size
    for token, idx in BERT_BASE_IDS.items():
        vocab[idx] = token
    free = (i for i in range(size) if vocab[i] is None)
    for token in pieces:
        vocab[next(free)] = token
    vocab = [t if t is not None else f"[unused{i}]" for i, t in enumerate(vocab)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(out_dir, do_lower_case=True)  # (5.x: no vocab_file argument)
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=2 * hidden_size,
                                max_position_embeddings=256))
    bert.save_pretrained(out_dir)
    return tokenizer


def tiny_official_config(text_encoder_dir: Union[str, Path], **overrides: Any) -> Dict[str, Any]:
    """groundingdino-py's GroundingDINO_SwinT_OGC.py settings with a narrow transformer."""
    cfg = dict(
        batch_size=1, modelname="groundingdino", backbone="swin_T_224_1k", position_embedding="sine",
        pe_temperatureH=20, pe_temperatureW=20, return_interm_indices=[1, 2, 3], backbone_freeze_keywords=None,
        enc_layers=6, dec_layers=6, pre_norm=False, dim_feedforward=2048, hidden_dim=256, dropout=0.0, nheads=8,
        num_queries=900, query_dim=4, num_patterns=0, num_feature_levels=4, enc_n_points=4, dec_n_points=4,
        two_stage_type="standard", two_stage_bbox_embed_share=False, two_stage_class_embed_share=False,
        transformer_activation="relu", dec_pred_bbox_embed_share=True, dn_box_noise_scale=1.0,
        dn_label_noise_ratio=0.5, dn_label_coef=1.0, dn_bbox_coef=1.0, embed_init_tgt=True, dn_labelbook_size=2000,
        max_text_len=256, text_encoder_type=str(text_encoder_dir), use_text_enhancer=True, use_fusion_layer=True,
        use_checkpoint=False, use_transformer_ckpt=False, use_text_cross_attention=True, text_dropout=0.0,
        fusion_dropout=0.0, fusion_droppath=0.1, sub_sentence_present=True,
    )
    cfg.update(TINY_DIMS)
    cfg.update(overrides)
    return cfg


def write_official_config(path: Union[str, Path], cfg: Dict[str, Any]) -> Path:
    """Write a config dict as an official-style `.py` file of plain assignments."""
    path = Path(path)
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in cfg.items()))
    return path


def build_official(cfg: Dict[str, Any]) -> torch.nn.Module:
    """groundingdino-py's model from a config dict, by the library's own builder (as the official
    backend builds it)."""
    from ..detect.official import build_official_model

    return build_official_model(cfg).eval()


def tiny_official(folder: Union[str, Path], seed: int = 0, std: float = 0.02,
                  text_encoder_dir: Optional[Union[str, Path]] = None, **overrides: Any) -> Tuple[Path, Path, Path]:
    """Random tiny official checkpoint in `folder`: returns (checkpoint .pth, config .py, text encoder dir)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if text_encoder_dir is None:
        text_encoder_dir = folder / "bert"
        tiny_text_encoder(text_encoder_dir, seed=seed)
    cfg = tiny_official_config(Path(text_encoder_dir).resolve(), **overrides)
    model = build_official(cfg)
    randomize_weights_(model, seed, std)
    with torch.no_grad():  # logits of a few units, so the thresholds separate queries
        model.transformer.decoder.norm.weight.mul_(LOGIT_SCALE)
    checkpoint = folder / "groundingdino_tiny.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    config = write_official_config(folder / "GroundingDINO_tiny.py", cfg)
    return checkpoint, config, Path(text_encoder_dir)


def tiny_hf_config(text_encoder_dir: Union[str, Path], **overrides: Any):
    """The transformers GroundingDinoConfig equivalent to `tiny_official_config`."""
    from transformers import BertConfig, GroundingDinoConfig

    text_config = BertConfig.from_pretrained(text_encoder_dir).to_dict()
    d = TINY_DIMS
    kwargs = dict(
        backbone_config=dict(model_type="swin", window_size=7, image_size=224, embed_dim=96, depths=[2, 2, 6, 2],
                             num_heads=[3, 6, 12, 24], out_indices=[2, 3, 4]),
        text_config=text_config, num_queries=d["num_queries"], d_model=d["hidden_dim"],
        encoder_layers=d["enc_layers"], decoder_layers=d["dec_layers"],
        encoder_ffn_dim=d["dim_feedforward"], decoder_ffn_dim=d["dim_feedforward"],
        encoder_attention_heads=d["nheads"], decoder_attention_heads=d["nheads"],
    )
    kwargs.update(overrides)
    return GroundingDinoConfig(**kwargs)


def save_hf_processor(folder: Union[str, Path], text_encoder_dir: Union[str, Path]) -> None:
    """GroundingDinoProcessor (default image processor + the BERT tokenizer) saved to `folder`."""
    from transformers import AutoTokenizer, GroundingDinoImageProcessor, GroundingDinoProcessor

    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                                       tokenizer=AutoTokenizer.from_pretrained(text_encoder_dir))
    processor.save_pretrained(folder)


def tiny_hf(folder: Union[str, Path], seed: int = 0, std: float = 0.02,
            text_encoder_dir: Optional[Union[str, Path]] = None, **overrides: Any) -> Path:
    """Random tiny transformers Grounding DINO saved (config.json, model.safetensors, processor) in `folder`;
    `overrides` change its GroundingDinoConfig (e.g. a narrower backbone_config where the real-sized
    Swin-T is not needed)."""
    from transformers import GroundingDinoForObjectDetection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if text_encoder_dir is None:
        text_encoder_dir = folder / "_bert"
        tiny_text_encoder(text_encoder_dir, seed=seed)
    model = GroundingDinoForObjectDetection(tiny_hf_config(text_encoder_dir, **overrides)).eval()
    randomize_weights_(model, seed, std)
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(LOGIT_SCALE)
    model.save_pretrained(folder)
    save_hf_processor(folder, text_encoder_dir)
    return folder


def randomize_weights_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Random values for every float weight; layer-norm and group-norm scales near one so the deep
    Swin backbone keeps activations in range (and float32 parity meaningful)."""
    randomize_(model, seed, std)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and module.weight is not None:
                module.weight.copy_(1 + std * torch.randn(module.weight.shape, generator=gen))
    return model
