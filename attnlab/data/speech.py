"""Spoken words: real recordings to test on, synthetic voices to train on.

Test set: the Asterisk PBX prompts of one female speaker (Allison Smith), 8 kHz 16-bit
WAV, from the Debian packages ``asterisk-core-sounds-en-wav`` (audio, 568 prompts under
``/usr/share/asterisk/sounds/en``) and ``asterisk-core-sounds-en`` (transcripts, one
``key: text`` line per prompt in ``core-sounds-en.txt.gz``). The vocabulary is every
prompt whose transcript is ONE word after normalisation (lower case, bracketed notes
like ``[@]`` and surrounding punctuation removed, letters and apostrophes only):
digits and number words, letters, the NATO alphabet, weekdays, months and single-word
prompts such as "goodbye" or "extension" -- 236 recordings of 221 distinct words.

Training set: the same words spoken by ``espeak-ng`` (a formant synthesiser) with many
voices (English accents x voice variants x speaking rates x pitches), resampled to
8 kHz. Whole voices are held out for validation, so validation measures generalisation
to an unheard voice; the real recordings measure synthetic-to-real transfer.

Synthesised audio is cached on disk (one ``.npz`` per voice, written atomically), keyed
by the voice, the word list, the sample rate and the espeak-ng version, so a second run
does not synthesise again.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from .._checks import check_positive_int
from .audio import FeatureConfig, cmvn, log_mel, read_wav, resample

__all__ = [
    "SOUNDS_DIR",
    "TRANSCRIPTS",
    "CharVocab",
    "Recording",
    "SpeechBatch",
    "Voice",
    "Augment",
    "read_transcripts",
    "normalize_word",
    "single_word_prompts",
    "load_recordings",
    "asterisk_recordings",
    "trim_silence",
    "espeak_variants",
    "make_voices",
    "synthesize",
    "synthesize_words",
    "Synthesizer",
    "ESPEAK",
    "make_batch",
]

SOUNDS_PACKAGE = "asterisk-core-sounds-en-wav"
TRANSCRIPT_PACKAGE = "asterisk-core-sounds-en"
SOUNDS_DIR = Path("/usr/share/asterisk/sounds/en")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SAMPLE_RATE = 8000

# The gmw (Germanic) English voices of espeak-ng; the mbrola ones need extra packages.
ENGLISH_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc")


# ----------------------------------------------------------------------------- characters


class CharVocab:
    """Characters of the words (``'`` and ``a``-``z``) plus ``<pad>`` 0, ``<sos>`` 1, ``<eos>`` 2."""

    CHARS = "'abcdefghijklmnopqrstuvwxyz"
    pad_id, sos_id, eos_id = 0, 1, 2
    specials = ("<pad>", "<sos>", "<eos>")

    def __len__(self) -> int:
        return len(self.specials) + len(self.CHARS)

    @property
    def size(self) -> int:
        return len(self)

    def encode(self, word: str) -> list[int]:
        """Character ids of ``word`` (no sos/eos); ValueError names a character outside the set."""
        ids = []
        for ch in word:
            i = self.CHARS.find(ch)
            if i < 0 or len(ch) != 1:
                raise ValueError(f"word {word!r} has character {ch!r} outside the vocabulary {self.CHARS!r}")
            ids.append(i + len(self.specials))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Characters of ``ids``, stopping at ``<eos>``, skipping ``<pad>``/``<sos>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(self.specials):
                out.append(self.CHARS[i - len(self.specials)])
        return "".join(out)

    def token(self, i: int) -> str:
        i = int(i)
        return self.specials[i] if i < len(self.specials) else self.CHARS[i - len(self.specials)]


# ----------------------------------------------------------------------------- transcripts


_LINE = re.compile(r"^([^:\s][^:]*):\s?(.*)$")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_WORD = re.compile(r"[a-z']+")


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """Parse an Asterisk sounds transcript file (``.txt`` or ``.txt.gz``).

    Format: one ``key: text`` line per prompt, ``key`` being the path of the sound below
    the language folder without extension (``digits/7: seven``); lines starting with
    ``;`` are comments, blank lines are skipped. A key given twice keeps its last text.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a non-comment line without ``key:`` (the message gives file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such transcript file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read transcript file {path}: {exc}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"{path}:{n}: expected 'key: text', got {line.strip()[:60]!r}")
        out[m.group(1).strip()] = m.group(2).strip()
    return out


def normalize_word(text: str) -> str | None:
    """The one word a transcript says, or ``None`` if it says several or none.

    Lower case; ``[...]`` notes dropped; punctuation stripped from both ends of each
    token (``"Goodbye!"`` -> ``goodbye``, ``"at [@]"`` -> ``at``, ``"... for ..."`` ->
    ``for``); the word must then be letters and apostrophes only (``"A.M."`` and
    ``"exclaimation-point"`` are not).
    """
    tokens = [t.strip(".,!?;:\"()") for t in _BRACKETS.sub(" ", text).lower().split()]
    tokens = [t for t in tokens if t]
    if len(tokens) != 1 or not _WORD.fullmatch(tokens[0]):
        return None
    return tokens[0]


def single_word_prompts(transcripts: dict[str, str]) -> dict[str, str]:
    """``{key: word}`` for the prompts whose transcript is one word (see :func:`normalize_word`)."""
    out = {}
    for key, text in transcripts.items():
        word = normalize_word(text)
        if word is not None:
            out[key] = word
    return out


class Recording(NamedTuple):
    """One prompt: its transcript key, WAV path, word, and 8 kHz samples (trimmed)."""

    key: str
    path: Path
    word: str
    samples: np.ndarray


def trim_silence(x: np.ndarray, sample_rate: int, top_db: float = 40.0, margin_ms: float = 50.0) -> np.ndarray:
    """Cut leading/trailing frames more than ``top_db`` below the loudest 20 ms frame,
    keeping ``margin_ms`` on each side. All-quiet input is returned unchanged."""
    frame = max(1, int(sample_rate * 0.02))
    n = len(x) // frame
    if n == 0:
        return x
    energy = (x[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)  # (n,)
    peak = energy.max()
    if peak <= 0:
        return x
    loud = np.nonzero(energy >= peak * 10 ** (-top_db / 10))[0]
    margin = int(sample_rate * margin_ms / 1000)
    start = max(0, loud[0] * frame - margin)
    stop = min(len(x), (loud[-1] + 1) * frame + margin)
    return x[start:stop]


def load_recordings(sounds_dir: str | os.PathLike, transcripts: str | os.PathLike | dict,
                    *, sample_rate: int = SAMPLE_RATE) -> list[Recording]:
    """The single-word prompts that have a WAV file, resampled to ``sample_rate`` and trimmed.

    Args:
        sounds_dir: the language folder (``.../sounds/en``); prompt ``key`` is ``key.wav`` in it.
        transcripts: a transcript file (see :func:`read_transcripts`) or its parsed dict.

    Raises:
        ValueError: no single-word prompt has a WAV file there.
    """
    sounds_dir = Path(sounds_dir)
    if not sounds_dir.is_dir():
        raise FileNotFoundError(f"no such sounds folder: {sounds_dir}")
    table = transcripts if isinstance(transcripts, dict) else read_transcripts(transcripts)
    out = []
    for key, word in sorted(single_word_prompts(table).items()):
        path = sounds_dir / f"{key}.wav"
        if not path.is_file():
            continue
        x, rate = read_wav(path)
        x = resample(x, rate, sample_rate)
        out.append(Recording(key, path, word, trim_silence(x, sample_rate)))
    if not out:
        raise ValueError(f"no single-word prompt of the transcripts has a WAV file in {sounds_dir}")
    return out


def asterisk_recordings(sample_rate: int = SAMPLE_RATE) -> list[Recording]:
    """:func:`load_recordings` of the installed Asterisk prompts (installing the two
    Debian packages when missing and allowed; see :func:`attnlab.data.debian.ensure_debian_package`)."""
    from .debian import ensure_debian_package

    transcripts = ensure_debian_package(TRANSCRIPT_PACKAGE, TRANSCRIPTS)
    sounds = ensure_debian_package(SOUNDS_PACKAGE, SOUNDS_DIR / "digits" / "1.wav").parent.parent
    return load_recordings(sounds, transcripts, sample_rate=sample_rate)


# ----------------------------------------------------------------------------- espeak-ng


@dataclasses.dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng language voice, a variant (``m3``, ``f2``,
    ``klatt`` ...; None for the plain voice), words per minute and pitch (0-99)."""

    voice: str
    variant: str | None
    speed: int
    pitch: int

    @property
    def name(self) -> str:
        return self.voice if self.variant is None else f"{self.voice}+{self.variant}"

    def args(self) -> list[str]:
        return ["-v", self.name, "-s", str(self.speed), "-p", str(self.pitch)]


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError(
            "espeak-ng is not installed; the training words are synthesised with it "
            "(on Debian/Ubuntu: `sudo apt-get install espeak-ng`)"
        )
    return exe


def espeak_version() -> str:
    proc = subprocess.run([_espeak(), "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def espeak_variants() -> list[str]:
    """Names of the installed espeak-ng voice variants (``m1`` ... ``f5``, ``klatt``, named ones)."""
    proc = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=False)
    names = []
    for line in proc.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5 and parts[4].startswith("!v/"):
            names.append(parts[4][3:])
    return sorted(set(names))


# Variants that are not speech-like enough to teach anything (whispers, robots, effects).
_SKIP_VARIANTS = re.compile(r"whisper|robo|demonic|half-life|universalrobot|anikarobot|kaukovalta", re.I)


def make_voices(n_train: int, n_valid: int, seed: int = 0, variants: Sequence[str] | None = None) -> tuple[list[Voice], list[Voice]]:
    """Random synthetic speakers for training and validation, with disjoint variants.

    Variants are split first (about one in five held out), so every validation voice
    has a timbre never heard in training. Accent, rate (120-220 wpm) and pitch (15-85)
    are drawn at random.
    """
    check_positive_int(n_train, "n_train")
    check_positive_int(n_valid, "n_valid", allow_zero=True)
    variants = [v for v in (espeak_variants() if variants is None else variants) if not _SKIP_VARIANTS.search(v)]
    if len(variants) < 2:
        raise ValueError(f"need at least 2 espeak-ng voice variants to hold some out, found {len(variants)}")
    rng = random.Random(seed)
    pool = sorted(variants)
    rng.shuffle(pool)
    n_held = max(1, len(pool) // 5)
    held, kept = pool[:n_held], pool[n_held:]

    def draw(names, n):
        return [Voice(rng.choice(ENGLISH_VOICES), rng.choice(names), rng.randint(120, 220), rng.randint(15, 85))
                for _ in range(n)]

    return draw(kept, n_train), draw(held, n_valid)


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by ``voice``, resampled to ``sample_rate`` and trimmed; float32 samples."""
    with tempfile.TemporaryDirectory(prefix="attnlab-espeak-") as tmp:
        out = Path(tmp) / "w.wav"
        proc = subprocess.run([_espeak(), *voice.args(), "-w", str(out), "--", text],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"espeak-ng failed for voice {voice.name!r} and text {text!r}: {proc.stderr.strip()}")
        x, rate = read_wav(out)
    return trim_silence(resample(x, rate, sample_rate), sample_rate)


def _cache_file(cache_dir: Path, voice: Voice, words: Sequence[str], sample_rate: int, version: str) -> Path:
    key = json.dumps([dataclasses.asdict(voice), list(words), sample_rate, version], sort_keys=True)
    return cache_dir / f"{voice.name.replace('+', '_')}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _save_npz(path: Path, **arrays) -> None:
    from .._io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)


class Synthesizer(NamedTuple):
    """A text-to-speech engine: ``speak(text, voice, sample_rate) -> float32 samples``,
    ``version()`` (part of the cache key) and ``variants()`` (voice variant names)."""

    speak: Callable[[str, Voice, int], np.ndarray]
    version: Callable[[], str]
    variants: Callable[[], list[str]]


#: espeak-ng through its command-line program.
ESPEAK = Synthesizer(synthesize, espeak_version, espeak_variants)


def synthesize_words(words: Sequence[str], voices: Sequence[Voice], cache_dir: str | os.PathLike,
                     *, sample_rate: int = SAMPLE_RATE, jobs: int = 2, progress: bool = True,
                     synth: Synthesizer = ESPEAK) -> list[list[np.ndarray]]:
    """Every word in every voice: ``out[v][w]`` is word ``w`` spoken by voice ``v`` (float32).

    Each voice's words are one cached ``.npz`` (int16 samples concatenated, plus
    offsets) in ``cache_dir``; missing ones are synthesised with ``jobs`` synthesiser
    processes at a time and written atomically.
    """
    check_positive_int(jobs, "jobs")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    version = synth.version()
    out: list[list[np.ndarray] | None] = [None] * len(voices)
    todo = []
    for i, voice in enumerate(voices):
        path = _cache_file(cache_dir, voice, words, sample_rate, version)
        if path.is_file():
            try:
                with np.load(path) as z:
                    pcm, offsets = z["pcm"], z["offsets"]
                out[i] = [pcm[offsets[j]: offsets[j + 1]].astype(np.float32) / 32767.0 for j in range(len(words))]
                continue
            except (OSError, KeyError, ValueError):
                pass  # unreadable cache entry: synthesise again
        todo.append((i, voice, path))
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * len(words), unit="word", desc="espeak-ng", file=sys.stderr,
                   disable=not progress or not sys.stderr.isatty())
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for i, voice, path in todo:
                clips = []
                for clip in pool.map(lambda w, v=voice: synth.speak(w, v, sample_rate), words):
                    clips.append(clip)
                    bar.update(1)
                pcm = [np.round(np.clip(c, -1, 1) * 32767).astype(np.int16) for c in clips]
                offsets = np.cumsum([0] + [len(p) for p in pcm]).astype(np.int64)
                _save_npz(path, pcm=np.concatenate(pcm), offsets=offsets)
                out[i] = [p.astype(np.float32) / 32767.0 for p in pcm]
        bar.close()
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Augment:
    """Training-time corruption: white noise at an SNR drawn from ``snr_db``, random
    gain, random silence (with the noise) before/after the word, and SpecAugment-style
    masks (Park et al. 2019): one band of up to ``freq_mask`` mel bins and one span of
    up to ``time_mask`` frames set to zero (after CMVN, i.e. to the mean)."""

    snr_db: tuple[float, float] = (5.0, 40.0)
    pad_ms: tuple[float, float] = (0.0, 150.0)
    freq_mask: int = 6
    time_mask: int = 8


class SpeechBatch(NamedTuple):
    """``features`` (B, T, n_mels) CMVN log-mels (zero past ``lengths``), ``lengths`` (B,),
    ``labels`` (B,) word ids, ``tgt_in`` / ``tgt_out`` (B, L) characters (``<sos>`` w /
    w ``<eos>``, ``<pad>``-padded)."""

    features: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


def _corrupt(x: np.ndarray, aug: Augment, g: torch.Generator, sample_rate: int) -> torch.Tensor:
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    pre, post = (int(sample_rate * u(*aug.pad_ms) / 1000) for _ in range(2))
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    x = torch.cat([torch.zeros(pre), x, torch.zeros(post)])
    power = x.square().mean().clamp_min(1e-10)
    noise_power = power / 10 ** (u(*aug.snr_db) / 10)
    x = x + torch.randn(x.shape, generator=g) * noise_power.sqrt()
    return x * 10 ** (u(-10.0, 10.0) / 20)


def make_batch(clips: Sequence[np.ndarray], labels: Sequence[int], words: Sequence[str], *,
               features: FeatureConfig = FeatureConfig(), vocab: CharVocab = CharVocab(),
               augment: Augment | None = None, generator: torch.Generator | None = None) -> SpeechBatch:
    """Log-mel features and targets of a batch of clips (see :class:`SpeechBatch`).

    Args:
        clips: float32 samples at ``features.sample_rate``.
        labels: word id of each clip (an index into ``words``).
        augment: corruption to apply (needs ``generator``: the batch is then a pure
            function of the generator's state, which exact resume relies on).
    """
    if len(clips) == 0 or len(clips) != len(labels):
        raise ValueError(f"clips and labels must be non-empty and of equal length, got {len(clips)} and {len(labels)}")
    if augment is not None and generator is None:
        raise ValueError("augment needs a torch.Generator (generator=...) so batches are reproducible")
    waves = [
        _corrupt(c, augment, generator, features.sample_rate) if augment is not None
        else torch.from_numpy(np.asarray(c, dtype=np.float32))
        for c in clips
    ]
    waves = [w if len(w) >= 2 else torch.cat([w, torch.zeros(2 - len(w))]) for w in waves]
    n = max(len(w) for w in waves)
    wav = torch.zeros(len(waves), n)  # (B, N)
    for i, w in enumerate(waves):
        wav[i, : len(w)] = w
    lengths = torch.tensor([features.num_frames(len(w)) for w in waves], dtype=torch.long)  # (B,)
    feats = cmvn(log_mel(wav, features), lengths)  # (B, T, M)
    if augment is not None:
        B, T, M = feats.shape
        for i in range(B):
            fw = int(torch.randint(0, augment.freq_mask + 1, (), generator=generator))
            f0 = int(torch.randint(0, M - fw + 1, (), generator=generator))
            tw = int(torch.randint(0, min(augment.time_mask, int(lengths[i]) // 4) + 1, (), generator=generator))
            t0 = int(torch.randint(0, max(1, int(lengths[i]) - tw + 1), (), generator=generator))
            feats[i, :, f0: f0 + fw] = 0.0
            feats[i, t0: t0 + tw, :] = 0.0
    chars = [vocab.encode(words[int(y)]) for y in labels]
    L = max(len(c) for c in chars) + 1
    tgt_in = torch.full((len(chars), L), vocab.pad_id, dtype=torch.long)  # (B, L)
    tgt_out = torch.full((len(chars), L), vocab.pad_id, dtype=torch.long)  # (B, L)
    for i, c in enumerate(chars):
        tgt_in[i, : len(c) + 1] = torch.tensor([vocab.sos_id] + c)
        tgt_out[i, : len(c) + 1] = torch.tensor(c + [vocab.eos_id])
    return SpeechBatch(feats, lengths, torch.as_tensor(list(labels), dtype=torch.long), tgt_in, tgt_out)
