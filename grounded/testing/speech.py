"""Speech for tests: spoken commands synthesised by espeak-ng (a system program, installed by
bin/system-deps), audio re-encoded into other formats with PyAV, and a tiny random openai-whisper
checkpoint saved the way openai-whisper saves its own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional, Union

import numpy as np

ESPEAK = "espeak-ng"


def espeak_missing() -> Optional[str]:
    """Why espeak-ng cannot be used here, or None when it can."""
    if shutil.which(ESPEAK) is None:
        return f"{ESPEAK} is not installed (bin/system-deps installs it: apt-get install espeak-ng)"
    return None


def speak(text: str, path: Union[str, Path], voice: str = "en", words_per_minute: int = 130, word_gap: int = 3) -> Path:
    """`text` spoken by espeak-ng into a wav file (22.05 kHz mono 16-bit). The defaults (British
    voice, 130 words a minute, 30 ms between words) are what Whisper tiny.en hears best from
    espeak's synthetic voice; en-us at 150 turns "dog" into "dark" and "bicycle" into "Mysicle"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ESPEAK, "-v", voice, "-s", str(words_per_minute), "-g", str(word_gap), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)
    return path


def write_audio(path: Union[str, Path], samples: np.ndarray, sample_rate: int, channels: int = 1) -> Path:
    """Encode float samples (n,) or (channels, n) in [-1, 1] into the format the extension names:
    .wav (PCM 16-bit), .flac, .mp3, .ogg (Vorbis), .opus, .m4a (AAC)."""
    import av

    path = Path(path)
    codecs = {".wav": ("wav", "pcm_s16le", "s16"), ".flac": ("flac", "flac", "s16"), ".mp3": ("mp3", "libmp3lame", "fltp"),
              ".ogg": ("ogg", "libopus", "flt"), ".opus": ("ogg", "libopus", "flt"), ".m4a": ("mp4", "aac", "fltp")}
    if path.suffix not in codecs:
        raise ValueError(f"no encoder for {path.suffix}; use one of {sorted(codecs)}")
    fmt, codec, sample_fmt = codecs[path.suffix]
    data = np.atleast_2d(np.asarray(samples, np.float32))
    if data.shape[0] != channels:
        data = np.repeat(data[:1], channels, axis=0)
    if codec == "libopus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError("Opus takes 8, 12, 16, 24 or 48 kHz")
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, data.shape[1], frame_size):
            chunk = data[:, start:start + frame_size]
            if sample_fmt == "s16":
                chunk = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
            packed = sample_fmt in ("s16", "flt")
            array = chunk.T.reshape(1, -1) if packed else np.ascontiguousarray(chunk)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(array), format=sample_fmt, layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def tiny_openai_whisper(path: Union[str, Path], seed: int = 0, english_only: bool = True) -> Path:
    """A random openai-whisper model (2 layers, width 64) saved as {"dims", "model_state_dict"},
    the layout whisper.load_model reads with torch.load(weights_only=True)."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864 if english_only else 51865, n_text_ctx=448, n_text_state=64, n_text_head=2,
                           n_text_layer=2)
    model = Whisper(dims)
    with torch.no_grad():  # the decoder's positional embedding is torch.empty until trained weights load
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path
