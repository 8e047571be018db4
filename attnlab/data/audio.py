"""Audio in, log-mel features out: WAV reading, resampling, the HTK mel filterbank.

No audio library is needed: WAV files are read with the standard library's ``wave``
module, resampling is done in the frequency domain and the spectrogram with
``torch.stft``. (``torchaudio`` has no wheel for the torch release attnlab runs on, and
the filterbank is the twenty lines of :func:`mel_filterbank`.)

Features follow the usual speech front end (Davis & Mermelstein 1980; HTK book §5.4):

    X(t, f)   = |STFT(x)|^2                      power spectrum, Hann window
    M(t, m)   = sum_f X(t, f) W(m, f)            W: triangular filters, equally spaced in mel
    logmel    = log(M + eps)
    mel(f)    = 2595 log10(1 + f / 700)          (HTK)

and per-utterance mean/variance normalisation (CMVN) removes the channel's constant
colouring, which matters when the training and test microphones differ.
"""

from __future__ import annotations

import dataclasses
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch

from .._checks import check_positive_int, check_tensor, fmt_shape

__all__ = [
    "FeatureConfig",
    "read_wav",
    "write_wav",
    "resample",
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
    "log_mel",
    "cmvn",
]


# ----------------------------------------------------------------------------- WAV files


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as float32 samples in [-1, 1] and its sample rate.

    8-bit (unsigned), 16-bit and 32-bit integer PCM are accepted; several channels are
    averaged to one.

    Returns:
        ``(samples (N,), sample_rate)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a PCM WAV file, or an unsupported sample width (the message
            names the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such WAV file: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path} is not a PCM WAV file ({exc})") from None
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: unsupported sample width of {width} bytes (expected 1, 2 or 4)")
    usable = len(x) - len(x) % channels  # a file cut short may end mid-frame
    x = x[:usable].reshape(-1, channels).mean(axis=1)  # (N,)
    return np.ascontiguousarray(x, dtype=np.float32), rate


def write_wav(path: str | os.PathLike, samples, sample_rate: int) -> Path:
    """Write mono 16-bit PCM (samples in [-1, 1], clipped), atomically."""
    from .._io import atomic_path

    check_positive_int(sample_rate, "sample_rate")
    x = np.clip(np.asarray(samples, dtype=np.float64).reshape(-1), -1.0, 1.0)
    pcm = np.round(x * 32767.0).astype("<i2").tobytes()
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm)
    return Path(path)


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain (as ``scipy.signal.resample``).

    The spectrum is cut (or zero-padded) to the new length's band, which also removes
    everything above the new Nyquist frequency: no aliasing when downsampling.

    Shape: x (N,) -> (round(N * new_rate / orig_rate),).
    """
    check_positive_int(orig_rate, "orig_rate")
    check_positive_int(new_rate, "new_rate")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if orig_rate == new_rate or len(x) == 0:
        return x.astype(np.float32)
    n = len(x)
    m = max(1, int(round(n * new_rate / orig_rate)))
    spec = np.fft.rfft(x)  # (n // 2 + 1,)
    keep = min(len(spec), m // 2 + 1)
    out_spec = np.zeros(m // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    if m % 2 == 0 and keep == m // 2 + 1 and m < n:
        out_spec[-1] = out_spec[-1].real  # the new Nyquist bin of a real signal is real
    y = np.fft.irfft(out_spec, n=m) * (m / n)
    return y.astype(np.float32)


# ----------------------------------------------------------------------------- mel scale


def hz_to_mel(f):
    """HTK mel scale: ``2595 log10(1 + f / 700)`` (1000 Hz -> 1000 mel)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`: ``700 (10^(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular filters equally spaced on the HTK mel scale (peak 1, no area norm).

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``,
    where the ``n_mels + 2`` points are spaced evenly in mel between ``f_min`` and
    ``f_max``; it is evaluated at the FFT bin frequencies ``k * sample_rate / n_fft``.
    (This is ``torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")``.)

    Shape: -> (n_mels, n_fft // 2 + 1).
    """
    check_positive_int(n_mels, "n_mels")
    check_positive_int(n_fft, "n_fft")
    check_positive_int(sample_rate, "sample_rate")
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2:g}, got f_min={f_min}, f_max={f_max}"
        )
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # (F,) bin centre frequencies
    points = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M + 2,)
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]  # (M, 1) each
    rising = (bins[None, :] - lower) / (centre - lower)  # (M, F)
    falling = (upper - bins[None, :]) / (upper - centre)  # (M, F)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


# ----------------------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Log-mel front end: 25 ms Hann windows every 10 ms, 40 mel bands up to Nyquist.

    ``n_fft`` is the smallest power of two holding a window.
    """

    sample_rate: int = 8000
    n_mels: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0

    def __post_init__(self):
        check_positive_int(self.sample_rate, "sample_rate")
        check_positive_int(self.n_mels, "n_mels")
        for name in ("win_ms", "hop_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def n_fft(self) -> int:
        return 1 << max(0, math.ceil(math.log2(self.win_length)))

    def num_frames(self, num_samples: int) -> int:
        """Frames :func:`log_mel` gives for ``num_samples`` samples (centred frames)."""
        return num_samples // self.hop_length + 1


_FILTERBANKS: dict[tuple, torch.Tensor] = {}


def log_mel(x: torch.Tensor, config: FeatureConfig = FeatureConfig(), eps: float = 1e-6) -> torch.Tensor:
    """Log-mel spectrogram ``log(|STFT x|^2 W^T + eps)`` (see the module docstring).

    Frames are centred (``torch.stft(center=True)``), so ``N`` samples give
    ``N // hop + 1`` frames.

    Shape: x (..., N) -> (..., T, n_mels), T = ``config.num_frames(N)``.
    """
    check_tensor(x, "x")
    if x.shape[-1] < 2:
        raise ValueError(f"x must hold at least 2 samples on its last axis, got shape {fmt_shape(x.shape)}")
    key = (config.n_mels, config.n_fft, config.sample_rate, config.f_min)
    fb = _FILTERBANKS.get(key)
    if fb is None:
        fb = _FILTERBANKS[key] = mel_filterbank(config.n_mels, config.n_fft, config.sample_rate, f_min=config.f_min)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]).float()  # (B, N)
    # Reflect padding needs more samples than half a window; zeros work for any length.
    spec = torch.stft(
        flat, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.win_length,
        window=torch.hann_window(config.win_length, device=x.device), center=True, pad_mode="constant",
        return_complex=True,
    )  # (B, F, T)
    power = spec.real.square() + spec.imag.square()  # (B, F, T)
    mel = torch.einsum("mf,bft->btm", fb.to(x.device), power)  # (B, T, M)
    out = torch.log(mel + eps)
    return out.reshape(*lead, out.shape[-2], out.shape[-1]).to(x.dtype)  # (..., T, M)


def cmvn(features: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance mean and variance normalisation over the valid frames of each row.

    Padding frames (``t >= lengths[b]``) are set to zero.

    Shape: features (B, T, M), lengths (B,) -> (B, T, M).
    """
    check_tensor(features, "features", min_ndim=3)
    if features.dim() != 3:
        raise ValueError(f"features must have shape (B, T, n_mels), got {fmt_shape(features.shape)}")
    B, T, _ = features.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    valid = (torch.arange(T)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1, 1)
    mean = (features * valid).sum(dim=1, keepdim=True) / count  # (B, 1, M)
    var = (((features - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count  # (B, 1, M)
    return ((features - mean) / torch.sqrt(var + eps)) * valid
