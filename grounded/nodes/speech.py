"""Speech nodes: `read_audio` (a file -> 16 kHz mono) and `transcribe` (audio -> transcript) with
Whisper (`grounded.speech`: faster-whisper or openai-whisper). Registers the model kinds
"faster_whisper" and "openai_whisper".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

from ..io.audio import check_speech, load_audio
from ..pipeline.models import ModelCache, register_loader, resolve_device
from ..pipeline.node import Node, Param
from ..speech import BACKENDS, DEFAULT_MODEL, load_faster_whisper, load_openai_whisper, transcribe_audio
from ..types import Audio, Sample

register_loader("faster_whisper", lambda cache, name, device, dtype: load_faster_whisper(name, device, dtype))
register_loader("openai_whisper", lambda cache, name, device, dtype: load_openai_whisper(name, device, dtype))


class ReadAudio(Node):
    """Decode the item's audio file (wav, flac, mp3, ogg, m4a, ...) to 16 kHz mono, in Python (PyAV).

    A relative audio_path is looked up from the working folder, then beside the item's image."""

    name = "read_audio"
    reads = {"audio_path": str}
    writes = {"audio": Audio}
    params = {
        "path": Param(None, str, "one audio file for every item (else each item's audio_path field)"),
        "check": Param(True, bool, "refuse silent, too short and noise-only audio with a clear error"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.path is not None:
            self.reads = {}

    def process(self, sample: Sample) -> Sample:
        source = self.path if self.path is not None else sample.get("audio_path")
        if source is None:
            raise ValueError("no audio: give the item an audio_path (a JSONL manifest key) or set read_audio's path")
        path = Path(source)
        if not path.is_absolute() and not path.exists() and sample.image_path:
            beside = Path(sample.image_path).parent / path  # a manifest's paths are often relative to the images
            path = beside if beside.exists() else path
        audio = load_audio(path)
        if self.check:
            check_speech(audio, where=str(source))
        sample.audio = audio
        return sample


class Transcribe(Node):
    """Speech to text with Whisper (faster-whisper or openai-whisper): audio -> transcript."""

    name = "transcribe"
    reads = {"audio": Audio}
    writes = {"transcript": str}
    params = {
        "backend": Param("faster-whisper", str, "faster-whisper (CTranslate2 folders) or openai-whisper (.pt files)",
                         choices=BACKENDS),
        "model": Param(DEFAULT_MODEL, str, "tiny.en (bundled), a model folder, a .pt file, or a cached name/hub id"),
        "language": Param(None, str, "spoken language code (en, de, ...); null detects it (.en models: English)"),
        "beam_size": Param(5, int, "beam search width (1 is greedy: it mishears short commands)"),
        "max_tokens": Param(96, int, "most tokens per segment (commands are short; 0: the model's own limit)"),
        "no_speech_threshold": Param(0.6, float, "above this no-speech probability in every segment, the audio is refused"),
        "check": Param(True, bool, "refuse silent, too short and noise-only audio before transcribing"),
        "device": Param("auto", str, "cpu, cuda, ... (auto: a GPU when there is one)", fingerprint=False),
        "dtype": Param(None, str, "computation precision (null: the model's own; fp16, int8 for faster-whisper)",
                       fingerprint=False),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.beam_size < 1:
            raise ValueError(f"transcribe: beam_size must be at least 1, got {self.beam_size}")

    def setup(self, ctx) -> None:
        kind = "faster_whisper" if self.backend == "faster-whisper" else "openai_whisper"
        dtype = self.dtype
        if kind == "faster_whisper" and dtype in ("int8", "int8_float32", "int8_float16"):
            # CTranslate2 quantisations are not torch dtypes: load directly, keyed in the cache's own dict.
            self._model = load_faster_whisper(self.model, resolve_device(self.device), dtype)
            return
        self._model = ctx.models.get(kind, self.model, self.device, dtype)

    def process(self, sample: Sample) -> Sample:
        audio = sample.audio
        if audio is None:
            raise ValueError("transcribe: the item has no audio (put read_audio before transcribe)")
        if self.check:
            check_speech(audio)
        result = transcribe_audio(self._model, self.backend, audio, self.language, self.beam_size,
                                  self.no_speech_threshold, self.max_tokens or None)
        sample.transcript = result["text"]
        sample.note(f"heard: {result['text']!r}")  # in a run's manifest: what was heard
        sample.meta["speech"] = {"language": result["language"],
                                 "no_speech_prob": round(max(r["no_speech_prob"] for r in result["segments"]), 3)}
        return sample

    def close(self) -> None:
        self._model = None


def transcribe_file(path, backend: str = "faster-whisper", model: str = DEFAULT_MODEL, **kwargs) -> str:
    """One file to text, without a pipeline (loads the model each call: for scripts and tests)."""
    with ModelCache() as models:
        node = Transcribe(backend=backend, model=model, **kwargs)
        node.setup(type("Ctx", (), {"models": models})())
        sample = node.process(Sample(audio=check_speech(load_audio(path), where=str(path))))
    return sample.transcript


__all__: List[str] = ["ReadAudio", "Transcribe", "transcribe_file"]
