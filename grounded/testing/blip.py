"""A tiny random BLIP captioner (transformers `BlipForConditionalGeneration` + `BlipProcessor`),
saved as a Hugging Face folder laid out like `Salesforce/blip-image-captioning-base`: config.json,
model.safetensors, preprocessor_config.json and a BERT WordPiece tokenizer whose bos token is
"[DEC]" (BLIP's decoder start token), built offline from a small corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

DEFAULT_CORPUS = (
    "a picture of a dog playing with a stick on the beach",
    "two cats sleeping on a couch",
    "a man riding a horse in a field",
    "a photography of a red car parked on the street",
)
IMAGE_SIZE = 32


def tiny_blip(out_dir: Union[str, Path], corpus: Optional[Iterable[str]] = None, seed: int = 0,
              hidden: int = 32, layers: int = 2, scale: float = 0.3):
    """Build, randomise and save a tiny BLIP captioner to `out_dir`; returns (model, processor).

    Weights are drawn with std `scale` (not BLIP's 0.02) so that next-token logits are far apart and
    greedy or beam search picks the same tokens in a batch as one by one."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from .tokenizers import wordpiece_tokenizer

    out_dir = Path(out_dir)
    tokenizer = wordpiece_tokenizer(out_dir, list(corpus or DEFAULT_CORPUS), extra_tokens=["[DEC]"])
    tokenizer.bos_token = "[DEC]"
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, encoder_hidden_size=hidden,
                intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=hidden)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "LayerNorm" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.tie_weights()
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model, processor
