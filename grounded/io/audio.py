"""Reading speech: any audio file PyAV (FFmpeg's libraries, bundled in its wheel) can decode
-> 16 kHz mono float32, with a clear error for audio that cannot hold a spoken command.

    audio = load_audio("command.m4a")          # grounded.types.Audio(samples, 16000)
    check_speech(audio)                         # ValueError: silent / too short / noise only

No `ffmpeg` program is needed (openai-whisper's own `load_audio` shells out to one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from ..types import Audio

SAMPLE_RATE = 16000  # what Whisper's feature extractor expects
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".mp4")

# Thresholds of the speech check. Peak below SILENCE_PEAK (about -66 dBFS) is digital silence or
# a muted microphone; a command needs at least MIN_SECONDS of sound (a one-syllable "stop" is
# about 0.3 s). Spectral flatness is near 0.56 for white noise and well under 0.3 for voiced
# speech, whose energy also rises and falls between words; noise does neither.
SILENCE_PEAK = 5e-4
MIN_SECONDS = 0.3
NOISE_FLATNESS = 0.35
NOISE_ENERGY_SPREAD_DB = 6.0
STEADY_SPREAD_DB = 3.0  # any sound this steady (a hum, a fan) has no syllables in it


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, not audio, silent, too short, noise only."""


def load_audio(source: Union[str, os.PathLike, Audio, np.ndarray], sample_rate: int = SAMPLE_RATE) -> Audio:
    """Decode a file (wav, flac, mp3, ogg, m4a, ... anything FFmpeg reads) into mono float32 at
    `sample_rate` (16 kHz by default). An `Audio` at another rate is resampled; a float array is
    taken to be at `sample_rate` already."""
    if isinstance(source, Audio):
        if source.sample_rate == sample_rate:
            return Audio(np.ascontiguousarray(source.samples, dtype=np.float32).reshape(-1), sample_rate)
        return Audio(resample(source.samples, source.sample_rate, sample_rate), sample_rate)
    if isinstance(source, np.ndarray):
        samples = np.asarray(source, dtype=np.float32)
        if samples.ndim == 2:  # (channels, n) or (n, channels): average the short axis
            samples = samples.mean(axis=0 if samples.shape[0] < samples.shape[1] else 1)
        return Audio(np.ascontiguousarray(samples.reshape(-1)), sample_rate)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    return Audio(_decode(path, sample_rate), sample_rate)


def _decode(path: Path, sample_rate: int) -> np.ndarray:
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.InvalidDataError, UnicodeDecodeError) as err:
        raise AudioError(f"{path} is not an audio file FFmpeg can read ({_why(err)}); "
                         f"use wav, flac, mp3, ogg or m4a") from None
    except PermissionError:
        raise
    except av.error.FFmpegError as err:
        raise AudioError(f"{path} cannot be read as audio ({_why(err)})") from None
    with container:
        streams = container.streams.audio
        if not streams:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise AudioError(f"{path} has no audio stream (it holds {', '.join(kinds)}; format "
                             f"{container.format.name}); give a recording: wav, flac, mp3, ogg or m4a")
        # Planar float at the target rate, channels kept: they are averaged below (FFmpeg's own
        # downmix to mono adds them at -3 dB, which can push stereo speech past full scale).
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(streams[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):  # flush what the resampler holds back
                chunks.append(out.to_ndarray().mean(axis=0))
        except av.error.FFmpegError as err:
            if not chunks:
                raise AudioError(f"{path} is damaged: no audio could be decoded ({_why(err)})") from None
            # A truncated file: keep what decoded, as players do.
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not np.isfinite(samples).all():
        raise AudioError(f"{path} decodes to non-finite samples (NaN or infinity)")
    return samples


def _why(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (polyphase, from scipy when present, else linear interpolation)."""
    samples = np.asarray(samples, np.float32).reshape(-1)
    if rate_in == rate_out or samples.size == 0:
        return samples
    try:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(rate_in), int(rate_out))
        return resample_poly(samples, rate_out // g, rate_in // g).astype(np.float32)
    except ImportError:
        n_out = int(round(samples.size * rate_out / rate_in))
        return np.interp(np.linspace(0, samples.size - 1, n_out), np.arange(samples.size), samples).astype(np.float32)


def check_speech(audio: Audio, where: str = "the audio", min_seconds: float = MIN_SECONDS) -> Audio:
    """Refuse audio that cannot hold a spoken command: empty, too short, silent, or noise only
    (flat spectrum and steady loudness). Returns the audio unchanged when it may be speech."""
    samples = np.asarray(audio.samples, np.float32).reshape(-1)
    seconds = samples.size / float(audio.sample_rate)
    if samples.size == 0:
        raise AudioError(f"{where} holds no samples (0 s of audio)")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{where} is silent ({seconds:.2f} s, peak level {_db(peak):.0f} dBFS); "
                         "check the microphone or the recording")
    # Length of the part above the noise floor: a long recording with a click is still too short.
    voiced = _active_seconds(samples, audio.sample_rate)
    if seconds < min_seconds or voiced < min_seconds:
        raise AudioError(f"{where} is too short to hold a command: {seconds:.2f} s long, {voiced:.2f} s of sound "
                         f"(at least {min_seconds:.1f} s of speech is needed)")
    flatness, spread = spectral_stats(samples, audio.sample_rate)
    if flatness > NOISE_FLATNESS and spread < NOISE_ENERGY_SPREAD_DB:
        raise AudioError(f"{where} sounds like noise only, not speech (spectral flatness {flatness:.2f}, loudness "
                         f"varies by {spread:.1f} dB; speech is below {NOISE_FLATNESS} and varies more)")
    if spread < STEADY_SPREAD_DB:
        raise AudioError(f"{where} is a steady sound (hum, fan or tone: loudness varies by only {spread:.1f} dB), "
                         "not speech, whose loudness rises and falls with its syllables")
    return audio


def _db(x: float) -> float:
    return 20.0 * np.log10(max(x, 1e-10))


def _frames(samples: np.ndarray, sample_rate: int, ms: float = 25.0) -> np.ndarray:
    n = max(int(sample_rate * ms / 1000), 16)
    count = samples.size // n
    return samples[: count * n].reshape(count, n) if count else samples[None, :]


def _active_seconds(samples: np.ndarray, sample_rate: int) -> float:
    frames = _frames(samples, sample_rate)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    loud = rms > max(rms.max() * 0.05, SILENCE_PEAK / 4)  # within 26 dB of the loudest frame
    return float(loud.sum() * frames.shape[1] / sample_rate)


def spectral_stats(samples: np.ndarray, sample_rate: int):
    """(median spectral flatness of the loud frames, spread of their loudness in dB: 90th - 10th
    percentile). White noise: about 0.56 and 2 dB; speech: about 0.05-0.3 and 15-40 dB."""
    frames = _frames(samples, sample_rate).astype(np.float64)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = frames[rms > rms.max() * 0.05]
    spectrum = np.abs(np.fft.rfft(loud * np.hanning(loud.shape[1]), axis=1)) ** 2 + 1e-12
    flatness = np.exp(np.log(spectrum).mean(axis=1)) / spectrum.mean(axis=1)
    levels = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-12)
    spread = float(np.percentile(levels, 90) - np.percentile(levels, 10))
    return float(np.median(flatness)), spread
