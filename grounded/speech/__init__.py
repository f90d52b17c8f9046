"""Speech to text: Whisper through faster-whisper or openai-whisper (`grounded.speech.whisper`)."""

from .whisper import (BACKENDS, DEFAULT_MODEL, SpeechModelNotFound, faster_whisper_location, load_faster_whisper,
                      load_openai_whisper, openai_whisper_checkpoint, transcribe_audio)

__all__ = ["BACKENDS", "DEFAULT_MODEL", "SpeechModelNotFound", "faster_whisper_location", "load_faster_whisper",
           "load_openai_whisper", "openai_whisper_checkpoint", "transcribe_audio"]
