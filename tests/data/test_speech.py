"""Speech data: transcripts, WAV reading, resampling, the HTK mel filterbank, features,
batches and the synthesis cache. Fixtures are tiny WAV files written with the stdlib
``wave`` module and a gzip transcript in the real Asterisk format; espeak-ng appears in
one test only, which skips when it is not installed."""

from __future__ import annotations

import gzip
import shutil
import wave

import numpy as np
import pytest
import torch

from attnlab.data import speech as sp
from attnlab.data.audio import (
    FeatureConfig,
    cmvn,
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    read_wav,
    resample,
    write_wav,
)

TRANSCRIPT = """; Core Asterisk Sounds in English

digits/1: one
digits/2: two
digits/a-m: A.M.
goodbye: Goodbye!
letters/at: at [@]
beep: [this is a simple beep tone]
agent-loginok: Agent logged in.
dir-multi2: ... for ...
digits/oclock: o'clock
nowav: seven
"""


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def _write_pcm(path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.repeat(samples[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    else:
        raw = np.round(x * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def make_sounds(root):
    """A sounds folder and gz transcript like the Debian packages' (``nowav`` has no file)."""
    sounds = root / "en"
    quiet = np.zeros(800)
    for key, freq in [("digits/1", 300), ("digits/2", 500), ("digits/a-m", 700), ("goodbye", 900),
                      ("letters/at", 1100), ("beep", 1000), ("agent-loginok", 400), ("dir-multi2", 600),
                      ("digits/oclock", 800)]:
        # 16 kHz on purpose: loading must resample to 8 kHz.
        _write_pcm(sounds / f"{key}.wav", np.concatenate([quiet, _tone(freq, 0.3, 16000), quiet]), 16000)
    transcripts = root / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt", encoding="utf-8") as f:
        f.write(TRANSCRIPT)
    return sounds, transcripts


# ----------------------------------------------------------------------------- transcripts


def test_read_transcripts_parses_the_real_format(tmp_path):
    _, path = make_sounds(tmp_path)
    table = sp.read_transcripts(path)
    assert table["digits/1"] == "one"
    assert table["letters/at"] == "at [@]"
    assert table["dir-multi2"] == "... for ..."
    assert len(table) == 10  # comment and blank line skipped
    plain = tmp_path / "t.txt"
    plain.write_text("a: b\n")
    assert sp.read_transcripts(plain) == {"a": "b"}


def test_read_transcripts_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("; c\nkey: ok\nno colon here\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected 'key: text'"):
        sp.read_transcripts(bad)
    with pytest.raises(FileNotFoundError, match="no such transcript file"):
        sp.read_transcripts(tmp_path / "missing.txt.gz")
    fake_gz = tmp_path / "x.txt.gz"
    fake_gz.write_text("not gzip")
    with pytest.raises(ValueError, match="cannot read transcript file"):
        sp.read_transcripts(fake_gz)


@pytest.mark.parametrize("text, word", [
    ("one", "one"), ("Goodbye!", "goodbye"), ("at [@]", "at"), ("... for ...", "for"), ("o'clock", "o'clock"),
    ("A.M.", None), ("Agent logged in.", None), ("[ascending tones]", None), ("exclaimation-point [!]", None),
    ("", None), ("3D", None),
])
def test_normalize_word(text, word):
    assert sp.normalize_word(text) == word


def test_single_word_prompts_and_recordings(tmp_path):
    sounds, transcripts = make_sounds(tmp_path)
    prompts = sp.single_word_prompts(sp.read_transcripts(transcripts))
    assert prompts == {"digits/1": "one", "digits/2": "two", "goodbye": "goodbye", "letters/at": "at",
                       "dir-multi2": "for", "digits/oclock": "o'clock", "nowav": "seven"}
    recs = sp.load_recordings(sounds, transcripts)
    assert [r.key for r in recs] == ["digits/1", "digits/2", "digits/oclock", "dir-multi2", "goodbye", "letters/at"]
    r = recs[0]
    assert r.word == "one" and r.path == sounds / "digits/1.wav"
    # 0.3 s of tone at 8 kHz plus at most 2 x 50 ms trimming margin.
    assert 2400 <= len(r.samples) <= 2400 + 800 + 160


def test_load_recordings_errors(tmp_path):
    sounds, transcripts = make_sounds(tmp_path)
    with pytest.raises(ValueError, match="no single-word prompt"):
        sp.load_recordings(sounds, {"digits/9": "nine"})
    with pytest.raises(FileNotFoundError, match="no such sounds folder"):
        sp.load_recordings(tmp_path / "nope", transcripts)


# ----------------------------------------------------------------------------- audio


def test_read_wav_widths_and_channels(tmp_path):
    x = _tone(440, 0.05, 8000)
    _write_pcm(tmp_path / "a.wav", x, 8000, width=1)
    _write_pcm(tmp_path / "b.wav", x, 11025, width=2, channels=2)
    a, ra = read_wav(tmp_path / "a.wav")
    b, rb = read_wav(tmp_path / "b.wav")
    assert (ra, rb) == (8000, 11025) and a.dtype == np.float32
    np.testing.assert_allclose(a, x, atol=1 / 127)
    np.testing.assert_allclose(b, x, atol=1 / 32767)
    write_wav(tmp_path / "c.wav", x, 8000)
    np.testing.assert_allclose(read_wav(tmp_path / "c.wav")[0], x, atol=1 / 32767)


def test_read_wav_errors(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(ValueError, match="x.wav is not a PCM WAV file"):
        read_wav(tmp_path / "x.wav")
    with pytest.raises(FileNotFoundError, match="no such WAV file"):
        read_wav(tmp_path / "y.wav")


def test_resample_keeps_the_tone_and_removes_aliases():
    x = _tone(1000, 1.0, 22050) + _tone(6000, 1.0, 22050)  # 6 kHz is above the new Nyquist (4 kHz)
    y = resample(x, 22050, 8000)
    assert len(y) == 8000
    spec = np.abs(np.fft.rfft(y))
    assert np.argmax(spec) == 1000  # 1 Hz bins
    # 6 kHz would alias to 2 kHz if not removed.
    assert spec[2000] < 1e-3 * spec[1000]
    with pytest.raises(ValueError, match="new_rate must be > 0"):
        resample(x, 22050, 0)


def test_mel_scale_hand_checked():
    # 2595 log10(1 + 1000/700) = 2595 * 0.3853509 = 999.986; 2595 log10(2) = 781.173.
    assert hz_to_mel(1000.0) == pytest.approx(999.9855, abs=1e-3)
    assert hz_to_mel(700.0) == pytest.approx(781.1728, abs=1e-3)
    f = np.array([0.0, 123.0, 4000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)


def test_mel_filterbank_hand_checked():
    # n_fft 16 at 16 kHz: bins at 0, 1000, ..., 8000 Hz. Two filters need 4 mel points
    # evenly spaced in [0, mel(8000) = 2840.02]: 0, 946.67, 1893.35, 2840.02 mel
    # = 0, 921.456, 3055.884, 8000 Hz.
    # filter 0 falls from 921.456 to 3055.884: at 1000 Hz (3055.884-1000)/(3055.884-921.456) = 0.963201,
    #   at 2000 Hz 1055.884/2134.428 = 0.494692, at 3000 Hz 55.884/2134.428 = 0.026182.
    # filter 1 rises over 921.456..3055.884 (1000 Hz: 78.544/2134.428 = 0.036799) and
    #   falls over 3055.884..8000 (4000 Hz: 4000/4944.116 = 0.809043).
    fb = mel_filterbank(2, 16, 16000, f_min=0.0)
    assert fb.shape == (2, 9)
    expected = torch.tensor([
        [0, 0.963201, 0.494692, 0.026182, 0, 0, 0, 0, 0],
        [0, 0.036799, 0.505308, 0.973818, 0.809043, 0.606782, 0.404521, 0.202261, 0],
    ])
    torch.testing.assert_close(fb, expected, atol=2e-6, rtol=0)


def test_mel_filterbank_errors():
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(4, 64, 8000, f_max=5000.0)
    with pytest.raises(ValueError, match="n_mels must be > 0"):
        mel_filterbank(0, 64, 8000)


def test_log_mel_shapes_and_peak_band():
    cfg = FeatureConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft) == (200, 80, 256)
    x = torch.from_numpy(_tone(1000, 0.2, 8000)).float()  # 1600 samples
    feats = log_mel(torch.stack([x, x, x]).reshape(3, 1, -1), cfg)
    assert feats.shape == (3, 1, 1600 // 80 + 1, 40) == (3, 1, cfg.num_frames(1600), 40)
    centres = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(4000), 42))[1:-1]
    band = int(feats[0, 0, 10].argmax())
    assert abs(centres[band] - 1000) < 60
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        log_mel(torch.zeros(100, dtype=torch.long))


def test_cmvn_normalizes_valid_frames_only():
    torch.manual_seed(0)
    f = torch.randn(2, 7, 3) * 5 + 2
    out = cmvn(f, torch.tensor([7, 4]))
    torch.testing.assert_close(out[1, :4].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :4].std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    assert (out[1, 4:] == 0).all()
    with pytest.raises(ValueError, match="features must have at least 3 dimensions"):
        cmvn(torch.zeros(3, 4))


def test_trim_silence():
    x = np.concatenate([np.zeros(4000), _tone(500, 0.5, 8000), np.zeros(4000)])
    y = sp.trim_silence(x, 8000)
    assert 4000 <= len(y) <= 4000 + 2 * 400 + 320
    assert len(sp.trim_silence(np.zeros(100), 8000)) == 100


# ----------------------------------------------------------------------------- batches


def test_char_vocab_round_trip_and_errors():
    v = sp.CharVocab()
    assert v.size == 30
    ids = v.encode("o'clock")
    assert v.decode(ids + [v.eos_id, 5]) == "o'clock"
    with pytest.raises(ValueError, match="character '7' outside"):
        v.encode("7up")


def test_make_batch_shapes_targets_and_determinism():
    words = ["one", "eleven", "at"]
    clips = [_tone(300, 0.3, 8000), _tone(500, 0.5, 8000), _tone(700, 0.11, 8000)]
    b = sp.make_batch(clips, [0, 1, 2], words)
    assert b.features.shape == (3, 4000 // 80 + 1, 40)
    assert b.lengths.tolist() == [31, 51, 880 // 80 + 1]
    assert (b.features[2, 12:] == 0).all()  # padding frames are zero after CMVN
    v = sp.CharVocab()
    assert b.tgt_in[0].tolist() == [v.sos_id] + v.encode("one") + [0, 0, 0]
    assert b.tgt_out[0].tolist() == v.encode("one") + [v.eos_id, 0, 0, 0]
    assert b.labels.tolist() == [0, 1, 2]
    aug = sp.Augment()
    b1 = sp.make_batch(clips, [0, 1, 2], words, augment=aug, generator=torch.Generator().manual_seed(3))
    b2 = sp.make_batch(clips, [0, 1, 2], words, augment=aug, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(b1.features, b2.features, rtol=0, atol=0)
    assert b1.features.shape[1] >= b.features.shape[1]  # padded with silence
    with pytest.raises(ValueError, match="augment needs a torch.Generator"):
        sp.make_batch(clips, [0, 1, 2], words, augment=aug)
    with pytest.raises(ValueError, match="clips and labels"):
        sp.make_batch(clips, [0], words)


# ----------------------------------------------------------------------------- synthesis


def fake_synth(calls=None):
    """A stand-in for espeak-ng: a word is a chord of character-dependent tones."""

    def speak(text, voice, rate):
        if calls is not None:
            calls.append((text, voice.name))
        f0 = 100 + voice.pitch
        t = np.arange(int(rate * (0.1 + 0.03 * len(text)))) / rate
        x = sum(np.sin(2 * np.pi * (f0 + 40 * (ord(c) - 96)) * t * (1 + 0.1 * i)) for i, c in enumerate(text))
        return (0.3 * x / max(1, len(text))).astype(np.float32)

    return sp.Synthesizer(speak, lambda: "fake 1.0", lambda: ["m1", "m2", "f1", "f2", "f3", "whisper"])


def test_make_voices_holds_out_variants():
    train, valid = sp.make_voices(7, 3, seed=1, variants=["m1", "m2", "f1", "f2", "f3", "whisper"])
    assert len(train) == 7 and len(valid) == 3
    assert not {v.variant for v in train} & {v.variant for v in valid}
    assert all(v.variant != "whisper" for v in train + valid)
    assert all(120 <= v.speed <= 220 and 15 <= v.pitch <= 85 for v in train + valid)
    assert sp.make_voices(7, 3, seed=1, variants=["m1", "m2", "f1", "f2", "f3"]) == (train, valid)
    with pytest.raises(ValueError, match="at least 2 espeak-ng voice variants"):
        sp.make_voices(2, 1, variants=["m1"])
    with pytest.raises(ValueError, match="n_train must be > 0"):
        sp.make_voices(0, 1, variants=["m1", "m2"])


def test_synthesize_words_caches_on_disk(tmp_path):
    calls = []
    synth = fake_synth(calls)
    voices = [sp.Voice("en-us", "m1", 150, 40), sp.Voice("en-gb", None, 170, 60)]
    words = ["one", "two", "three"]
    first = sp.synthesize_words(words, voices, tmp_path / "cache", synth=synth, progress=False)
    assert len(calls) == 6 and len(first) == 2 and len(first[0]) == 3
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.endswith(".npz") for f in files)  # no temporary file left
    again = sp.synthesize_words(words, voices, tmp_path / "cache", synth=synth, progress=False)
    assert len(calls) == 6  # nothing synthesised the second time
    for a, b in zip(first[1], again[1]):
        np.testing.assert_allclose(a, b, atol=1 / 32767)
    sp.synthesize_words(words[:2], voices[:1], tmp_path / "cache", synth=synth, progress=False)
    assert len(calls) == 8  # another word list is another cache entry


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_ng_synthesizes_a_word_at_8khz():
    x = sp.synthesize("seven", sp.Voice("en-us", "f2", 160, 50))
    assert x.dtype == np.float32 and 0.2 * 8000 < len(x) < 2 * 8000
    assert np.abs(x).max() > 0.05
    assert "m1" in sp.espeak_variants()
