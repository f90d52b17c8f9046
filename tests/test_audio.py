"""Audio decoding (PyAV, no ffmpeg program) to 16 kHz mono float32, and the errors for audio
that cannot hold a spoken command."""

import shutil

import numpy as np
import pytest

from grounded.io.audio import AudioError, SAMPLE_RATE, check_speech, load_audio, resample
from grounded.testing.speech import espeak_missing, speak, write_audio
from grounded.types import Audio


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if espeak_missing():
        pytest.skip(espeak_missing())
    path = speak("change the dog to a monkey", tmp_path_factory.mktemp("speech") / "command.wav")
    return load_audio(path)


def test_espeak_wav_decodes_to_16k_mono_float32(speech):
    assert speech.sample_rate == SAMPLE_RATE
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    seconds = len(speech.samples) / SAMPLE_RATE
    assert 1.0 < seconds < 4.0  # espeak speaks the six words in about 2 s
    assert 0.1 < np.abs(speech.samples).max() <= 1.0
    assert check_speech(speech) is speech


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".ogg", ".m4a"])
def test_every_format_decodes_to_the_same_waveform(speech, tmp_path, ext):
    path = write_audio(tmp_path / f"command{ext}", speech.samples, SAMPLE_RATE)
    audio = load_audio(path)
    assert audio.sample_rate == SAMPLE_RATE and audio.samples.dtype == np.float32
    n = len(speech.samples)
    # Lossy codecs pad and delay a little (AAC by 1024 samples): align by cross-correlation.
    assert abs(len(audio.samples) - n) < 0.1 * SAMPLE_RATE
    a = audio.samples[: n + 2048]
    lag = int(np.argmax(np.correlate(a, speech.samples[:8000], mode="valid"))) if len(a) > 8000 else 0
    got = audio.samples[lag: lag + n]
    ref = speech.samples[: len(got)]
    corr = np.corrcoef(got, ref)[0, 1]
    assert corr > (0.999 if ext in (".wav", ".flac") else 0.9), corr


def test_stereo_44k_is_averaged_and_resampled(speech, tmp_path):
    s44 = resample(speech.samples, SAMPLE_RATE, 44100)
    path = write_audio(tmp_path / "stereo.flac", np.stack([s44, 0.5 * s44]), 44100, channels=2)
    audio = load_audio(path)
    assert audio.sample_rate == SAMPLE_RATE
    assert abs(len(audio.samples) - len(speech.samples)) <= 2
    m = min(len(audio.samples), len(speech.samples))
    # mean of the channels: 0.75 of the original, not FFmpeg's louder -3 dB sum
    gain = np.dot(audio.samples[:m], speech.samples[:m]) / np.dot(speech.samples[:m], speech.samples[:m])
    assert gain == pytest.approx(0.75, abs=0.02)


def test_arrays_and_audio_objects_are_accepted():
    tone = np.sin(np.linspace(0, 2000, 48000)).astype(np.float32)
    audio = load_audio(Audio(tone, 48000))
    assert audio.sample_rate == SAMPLE_RATE and len(audio.samples) == 16000
    stereo = load_audio(np.stack([tone, tone]))
    assert stereo.samples.shape == (48000,)


def test_missing_empty_and_wrong_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.wav").write_text("this is a text file, not a recording\n" * 20)
    with pytest.raises(AudioError, match="not an audio file"):
        load_audio(tmp_path / "notes.wav")
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


def test_an_image_has_no_audio_stream(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "picture.png")
    with pytest.raises(AudioError, match="no audio stream|not an audio file"):
        load_audio(tmp_path / "picture.png")


def test_truncated_file_keeps_what_decodes_or_says_damaged(speech, tmp_path):
    path = write_audio(tmp_path / "command.mp3", speech.samples, SAMPLE_RATE)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    audio = load_audio(cut)
    assert 0.3 * len(speech.samples) < len(audio.samples) < 0.8 * len(speech.samples)
    header_only = tmp_path / "header.mp3"
    header_only.write_bytes(data[:40])
    with pytest.raises(AudioError):
        check_speech(load_audio(header_only))


def test_silence_is_refused():
    with pytest.raises(AudioError, match="silent"):
        check_speech(Audio(np.zeros(32000, np.float32), SAMPLE_RATE))
    with pytest.raises(AudioError, match="silent"):
        check_speech(Audio(np.full(32000, 1e-5, np.float32), SAMPLE_RATE))
    with pytest.raises(AudioError, match="no samples"):
        check_speech(Audio(np.zeros(0, np.float32), SAMPLE_RATE))


def test_too_short_is_refused(speech):
    with pytest.raises(AudioError, match="too short"):
        check_speech(Audio(speech.samples[:2400], SAMPLE_RATE))  # 0.15 s
    click = np.zeros(48000, np.float32)
    click[1000:1400] = 0.5  # 3 s long, 25 ms of sound
    with pytest.raises(AudioError, match="too short"):
        check_speech(Audio(click, SAMPLE_RATE))


def test_noise_and_hum_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(AudioError, match="noise only"):
        check_speech(Audio(rng.normal(0, 0.1, 32000).astype(np.float32), SAMPLE_RATE))
    hum = 0.3 * np.sin(2 * np.pi * 50 * np.arange(32000) / SAMPLE_RATE)
    with pytest.raises(AudioError, match="steady sound"):
        check_speech(Audio(hum.astype(np.float32), SAMPLE_RATE))


@pytest.mark.parametrize("snr_db", [20, 10, 5])
def test_speech_over_noise_passes_down_to_5_db_snr(speech, snr_db):
    rng = np.random.default_rng(1)
    std = np.sqrt((speech.samples ** 2).mean() / 10 ** (snr_db / 10))
    noisy = speech.samples + rng.normal(0, std, len(speech.samples)).astype(np.float32)
    check_speech(Audio(noisy, SAMPLE_RATE))


def test_no_ffmpeg_program_is_needed(speech, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run on PATH: decoding stays in-process
    assert shutil.which("ffmpeg") is None
    path = write_audio(tmp_path / "c.m4a", speech.samples, SAMPLE_RATE)
    assert len(load_audio(path).samples) > SAMPLE_RATE
