"""MAE pre-training of SAM's image encoder, as the SAM paper did: a masked autoencoder (ViT encoder
on the visible patches, light decoder, loss on the masked pixels) trained on your own images, and a
converter of the encoder (or of an official MAE / plain ViT) into SAM's windowed image encoder."""

from .load import MAECheckpointError, MAEWeights, load_mae, read_mae_weights, save_mae
from .masking import patchify, random_masking, unpatchify
from .model import PRESETS, MAEConfig, MAEOutput, MaskedAutoencoder

__all__ = [
    "MAECheckpointError", "MAEConfig", "MAEOutput", "MAEWeights", "MaskedAutoencoder", "PRESETS", "load_mae",
    "patchify", "random_masking", "read_mae_weights", "save_mae", "unpatchify",
]
