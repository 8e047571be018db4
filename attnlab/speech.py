"""Spoken-word recognition: ``attnlab train speech`` and ``attnlab transcribe``.

    attnlab train speech --model las --out runs/las --minutes 8
    attnlab train speech --out runs/las --resume --minutes 12     # 4 more minutes
    attnlab transcribe --checkpoint runs/las /usr/share/asterisk/sounds/en/digits/7.wav --plot align.png

Training words are synthesised with espeak-ng in many voices (:mod:`attnlab.data.speech`),
validation uses voices whose timbre (variant) training never heard, and the final test
is the real Asterisk recordings of the same words. A run directory holds

    run.json      model, config, vocabulary, data and training options
    last/ best/   checkpoints (best = highest word accuracy on the held-out voices)
    metrics.jsonl the training log
    test.json     word accuracy on the real recordings, per-recording outputs

Models (:data:`SPEECH_MODELS`): ``las`` (Listen, Attend and Spell with location-aware
attention, spells characters: correct when the decoded string equals the transcript)
and ``transformer`` (Transformer encoder classifier, one class per word).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from ._argtypes import add_precision_argument, autocast_of, positive_float, positive_int
from ._io import check_output_path, write_json_atomic

__all__ = [
    "SPEECH_MODELS",
    "SpeechData",
    "SpeechDataSettings",
    "TrainSpeechOptions",
    "SpeechRecognizer",
    "default_cache_dir",
    "load_speech_data",
    "train_speech",
    "evaluate_recognizer",
    "plot_speech_alignment",
    "register",
]

RUN_FILE = "run.json"
TEST_FILE = "test.json"
DEFAULT_MINUTES = 8.0


def _models():
    from .models.audio_transformer import AudioTransformer, AudioTransformerConfig
    from .models.las import LAS, LASConfig

    return {"las": (LASConfig, LAS), "transformer": (AudioTransformerConfig, AudioTransformer)}


#: CLI name -> the ``name`` field of its config.
SPEECH_MODELS = {"las": "las", "transformer": "audio_transformer"}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/attnlab/speech`` (``~/.cache/attnlab/speech``): synthesised audio."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnlab" / "speech"


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class SpeechDataSettings:
    """Where the data comes from. ``sounds``/``transcripts`` None: the Debian packages."""

    sounds: str | None = None
    transcripts: str | None = None
    train_voices: int = 40
    valid_voices: int = 6
    voice_seed: int = 0


@dataclasses.dataclass
class SpeechData:
    """Words (the label set), synthetic train/valid clips as ``(samples, word id)``, and
    the real recordings for the test."""

    words: list[str]
    train: list[tuple]
    valid: list[tuple]
    test: list  # list[Recording]
    train_voices: list
    valid_voices: list


def load_speech_data(settings: SpeechDataSettings = SpeechDataSettings(), *, cache_dir=None, synth=None,
                     progress: bool = True) -> SpeechData:
    """Load the real recordings, derive the vocabulary, synthesise (or read from the
    cache) the training and validation voices."""
    from .data import speech as sp

    synth = sp.ESPEAK if synth is None else synth
    if (settings.sounds is None) != (settings.transcripts is None):
        raise ValueError("give --sounds and --transcripts together (or neither, for the Debian packages)")
    if settings.sounds is None:
        test = sp.asterisk_recordings()
    else:
        test = sp.load_recordings(settings.sounds, settings.transcripts)
    words = sorted({r.word for r in test})
    train_v, valid_v = sp.make_voices(settings.train_voices, settings.valid_voices, settings.voice_seed,
                                      variants=synth.variants())
    clips = sp.synthesize_words(words, train_v + valid_v, cache_dir or default_cache_dir(), synth=synth,
                                progress=progress)
    train = [(c, w) for per_voice in clips[: len(train_v)] for w, c in enumerate(per_voice)]
    valid = [(c, w) for per_voice in clips[len(train_v):] for w, c in enumerate(per_voice)]
    return SpeechData(words, train, valid, test, train_v, valid_v)


# ----------------------------------------------------------------------------- recognizer


class SpeechRecognizer:
    """A trained model with its vocabulary: audio in, words out."""

    def __init__(self, model, words: Sequence[str], features=None):
        from .data.audio import FeatureConfig
        from .data.speech import CharVocab

        self.model = model.eval()
        self.words = list(words)
        self.features = features or FeatureConfig()
        self.vocab = CharVocab()
        self.kind = "las" if model.config.name == "las" else "transformer"

    @classmethod
    def load(cls, path) -> "SpeechRecognizer":
        """Load a run directory (``best/``, else ``last/``) written by ``attnlab train speech``."""
        from .data.audio import FeatureConfig
        from .train.checkpoint import load_checkpoint, read_checkpoint

        ckpt_dir, run_dir = _resolve_checkpoint(path)
        record = _read_run(run_dir)
        config = read_checkpoint(ckpt_dir).config
        model = _model_from_config(config)
        load_checkpoint(ckpt_dir, model, restore_rng=False)
        return cls(model, record["words"], FeatureConfig(**record["features"]))

    def batch(self, clips: Sequence):
        from .data.speech import make_batch

        return make_batch(list(clips), [0] * len(clips), [self.words[0]] * len(clips), features=self.features)

    def recognize(self, clips: Sequence, *, beam: int = 1, batch_size: int = 64) -> list[dict]:
        """``[{"text", "score", "attention" (LAS) or "probs" (classifier)}]`` per clip."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(clips), batch_size):
                b = self.batch(clips[start: start + batch_size])
                if self.kind == "las":
                    hyps = (self.model.greedy_decode(b.features, b.lengths) if beam == 1
                            else self.model.beam_search(b.features, b.lengths, beam_size=beam))
                    out += [{"text": self.vocab.decode(h.tokens), "tokens": h.tokens, "score": h.score,
                             "attention": h.attention, "features": b.features[i, : int(b.lengths[i])]}
                            for i, h in enumerate(hyps)]
                else:
                    probs = self.model(b.features, b.lengths).float().softmax(-1)  # (B, C)
                    p, k = probs.max(-1)
                    out += [{"text": self.words[int(k[i])], "score": float(p[i]), "probs": probs[i],
                             "features": b.features[i, : int(b.lengths[i])]} for i in range(len(k))]
        return out


def evaluate_recognizer(rec: SpeechRecognizer, clips: Sequence, references: Sequence[str], *, beam: int = 1) -> dict:
    """Word accuracy: the fraction of clips whose output string equals the reference word."""
    if not clips:
        raise ValueError("no clips to evaluate on")
    outs = rec.recognize(clips, beam=beam)
    hyps = [o["text"] for o in outs]
    correct = [h == r for h, r in zip(hyps, references)]
    return {"accuracy": sum(correct) / len(correct), "count": len(correct), "hypotheses": hyps}


def plot_speech_alignment(result: dict, vocab, path, *, title: str | None = None, pyramid: int = 2):
    """Draw the speller's attention over the listener frames (top) above the log-mel
    spectrogram (bottom), on one time axis; returns the Figure."""
    from matplotlib.figure import Figure

    from .viz.heatmap import plot_attention, save_figure

    att = result.get("attention")
    if att is None:
        raise ValueError("--plot draws the speller's alignment: only a las model has one (this run is a classifier)")
    rows = [vocab.token(t) for t in result["tokens"]] + ["<eos>"]
    rows = rows[: att.shape[0]]
    feats = result["features"].numpy().T  # (M, T)
    factor = 2 ** pyramid
    fig = Figure(figsize=(max(6.0, 0.32 * att.shape[1] + 2.5), 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[max(2, len(rows)), 4])
    hop_s = 0.01
    cols = [f"{(j + 0.5) * factor * hop_s:.2f}" for j in range(att.shape[1])]
    plot_attention(att, row_labels=rows, col_labels=cols, ax=top, annotate=False, title=title)
    top.set_xlabel("")
    top.set_ylabel("character")
    bottom.imshow(feats, origin="lower", aspect="auto", cmap="magma",
                  extent=(-0.5, feats.shape[1] / factor - 0.5, 0, feats.shape[0]))
    bottom.set_ylabel("mel band")
    bottom.set_xlabel(f"time (s) at listener frames ({factor} x 10 ms each)")
    bottom.set_xticks(range(att.shape[1]), labels=cols, rotation=60, ha="right", rotation_mode="anchor")
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainSpeechOptions:
    minutes: float | None = DEFAULT_MINUTES
    steps: int | None = None
    batch_size: int = 32
    lr: float | None = None
    eval_every: int = 200
    valid_max: int = 400
    beam: int = 4
    seed: int = 0
    quiet: bool = False
    precision: str = "float32"


def _model_from_config(config):
    if not isinstance(config, dict) or config.get("name") not in SPEECH_MODELS.values():
        raise ValueError(f"checkpoint holds no speech model config (got {config!r:.80})")
    for cfg_cls, model_cls in _models().values():
        if cfg_cls.__dataclass_fields__["name"].default == config["name"]:
            return model_cls(cfg_cls(**config))
    raise AssertionError("unreachable")


def _build_config(model: str, words: Sequence[str], n_mels: int, overrides: dict):
    from .data.speech import CharVocab

    cfg_cls, _ = _models()[model]
    if model == "las":
        v = CharVocab()
        base = dict(vocab_size=v.size, n_mels=n_mels, listener_hidden=96, speller_hidden=160, attn_hidden=96,
                    pad_id=v.pad_id, sos_id=v.sos_id, eos_id=v.eos_id)
    else:
        base = dict(num_classes=len(words), n_mels=n_mels, d_model=128, ffn_dim=256, num_layers=3)
    fields = set(cfg_cls.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: unknown for model {model!r}; valid fields: {', '.join(sorted(fields))}")
    return cfg_cls(**{**base, **overrides})


def _parse_overrides(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def _read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a run directory of `attnlab train speech`")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("task") != "speech":
        raise ValueError(f"{path} is not a speech run (task {record.get('task')!r})")
    return record


def _resolve_checkpoint(path) -> tuple[Path, Path]:
    from .train.checkpoint import STATE_JSON

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--checkpoint {path}: no such directory (give the --out folder of `attnlab train speech`)")
    if (p / STATE_JSON).is_file():
        return p, p.parent
    for sub in ("best", "last"):
        if (p / sub / STATE_JSON).is_file():
            return p / sub, p
    raise FileNotFoundError(f"--checkpoint {path}: no checkpoint inside (expected best/ or last/)")


def train_speech(out, model: str | None = "las", *, options: TrainSpeechOptions = TrainSpeechOptions(),
                 data_settings: SpeechDataSettings = SpeechDataSettings(), overrides: dict | None = None,
                 resume: bool = False, cache_dir=None, synth=None, data: SpeechData | None = None) -> dict:
    """Train a speech model into ``out``; evaluate the best checkpoint on the real recordings.

    Returns the test record written to ``out/test.json``.
    """
    import torch

    from .data.audio import FeatureConfig
    from .data.speech import Augment, CharVocab, make_batch
    from .models.registry import count_parameters
    from .train.checkpoint import load_checkpoint
    from .train.loop import TrainConfig, Trainer, make_scheduler
    from .train.metrics import label_smoothed_cross_entropy

    out = Path(out)
    if options.minutes is None and options.steps is None:
        raise ValueError("give a training limit: --minutes or --steps")
    features = FeatureConfig()
    if resume:
        record = _read_run(out)
        if model is not None and model != record["model"]:
            raise ValueError(f"--model {model}: the run in {out} trains {record['model']}; leave --model out to resume it")
        model = record["model"]
        data_settings = SpeechDataSettings(**record["data"])
        options = dataclasses.replace(TrainSpeechOptions(**record["train"]), minutes=options.minutes,
                                      steps=options.steps, quiet=options.quiet)
    else:
        if any((out / n).exists() for n in (RUN_FILE, "last", "best")):
            raise FileExistsError(f"--out {out} already holds a run; add --resume to continue it, or choose another directory")
        if model not in SPEECH_MODELS:
            raise ValueError(f"unknown model {model!r}; valid models: {', '.join(SPEECH_MODELS)}")
    if data is None:
        data = load_speech_data(data_settings, cache_dir=cache_dir, synth=synth, progress=not options.quiet)
    if resume:
        if data.words != record["words"]:
            raise ValueError(f"the vocabulary changed since the run in {out} started; resume needs the same recordings")
        config = _build_config(model, data.words, features.n_mels,
                               {k: v for k, v in record["config"].items() if k != "name"})
    else:
        config = _build_config(model, data.words, features.n_mels, overrides or {})
    torch.manual_seed(options.seed)
    net = _models()[model][1](config)
    n_params = count_parameters(net)
    lr = options.lr if options.lr is not None else 1e-3
    record = {
        "task": "speech", "model": model, "config": dataclasses.asdict(config), "parameters": n_params,
        "words": data.words, "features": dataclasses.asdict(features),
        "data": dataclasses.asdict(data_settings), "train": dataclasses.asdict(options),
        "train_clips": len(data.train), "valid_clips": len(data.valid), "test_recordings": len(data.test),
        "train_voices": [v.name + f" s{v.speed} p{v.pitch}" for v in data.train_voices],
        "valid_voices": [v.name + f" s{v.speed} p{v.pitch}" for v in data.valid_voices],
        "threads": torch.get_num_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, out / RUN_FILE)

    vocab, augment, words = CharVocab(), Augment(), data.words
    B = options.batch_size

    def batches(epoch: int, seed: int):
        # A pure function of (epoch, seed): order and corruption both come from seeded generators.
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(data.train), generator=g).tolist()
        for i in range(0, len(order) - B + 1, B):
            rows = [data.train[j] for j in order[i: i + B]]
            ga = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + i)
            yield make_batch([c for c, _ in rows], [w for _, w in rows], words, features=features,
                             augment=augment, generator=ga)

    def loss_fn(m, b):
        if model == "las":
            logits = m(b.features, b.lengths, b.tgt_in)  # (B, L, V)
            loss = label_smoothed_cross_entropy(logits, b.tgt_out, smoothing=0.1, ignore_index=vocab.pad_id)
            return loss, int((b.tgt_out != vocab.pad_id).sum())
        logits = m(b.features, b.lengths)  # (B, C)
        return label_smoothed_cross_entropy(logits, b.labels, smoothing=0.1), len(b.labels)

    g = torch.Generator().manual_seed(12345)
    valid_rows = [data.valid[j] for j in torch.randperm(len(data.valid), generator=g)[: options.valid_max].tolist()]
    recognizer = SpeechRecognizer(net, words, features)

    def validate() -> dict:
        net.eval()
        res = evaluate_recognizer(recognizer, [c for c, _ in valid_rows], [words[w] for _, w in valid_rows])
        return {"accuracy": res["accuracy"]}

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = make_scheduler(optimizer, "constant", warmup_steps=100)
    train_config = TrainConfig(max_steps=options.steps, max_minutes=options.minutes, grad_clip=1.0,
                               log_every=min(50, options.eval_every), eval_every=options.eval_every,
                               checkpoint_every=options.eval_every, select_metric="accuracy", higher_is_better=True,
                               seed=options.seed, unit="tok" if model == "las" else "ex", quiet=options.quiet,
                               autocast=autocast_of(options.precision))
    trainer = Trainer(net, optimizer, loss_fn, batches, out, train_config, scheduler=scheduler, validate=validate,
                      model_config=config, resume_hint=f"attnlab train speech --out {out} --resume")
    result = trainer.fit(resume=resume)
    if result.stop_reason == "interrupted":
        return {"stop_reason": "interrupted"}

    best = trainer.checkpoints.best() or trainer.checkpoints.latest()
    load_checkpoint(best, net, restore_rng=False)
    net.eval()
    refs = [r.word for r in data.test]
    clips = [r.samples for r in data.test]
    valid_eval = evaluate_recognizer(recognizer, [c for c, _ in valid_rows], [words[w] for _, w in valid_rows])
    greedy = evaluate_recognizer(recognizer, clips, refs)
    test = {
        "model": model, "parameters": n_params, "checkpoint": str(best.name), "step": result.step,
        "best_step": result.best_step, "train_minutes": result.train_seconds / 60.0,
        "valid_accuracy": valid_eval["accuracy"], "valid_clips": len(valid_rows),
        "test_accuracy": greedy["accuracy"], "test_recordings": len(refs),
        "chance": 1.0 / len(words), "vocabulary": len(words),
    }
    rows = greedy["hypotheses"]
    if model == "las" and options.beam > 1:
        beam = evaluate_recognizer(recognizer, clips, refs, beam=options.beam)
        test["test_accuracy_beam"] = beam["accuracy"]
        test["beam"] = options.beam
        rows = beam["hypotheses"]
        in_vocab = sum(h in set(words) for h in beam["hypotheses"]) / len(refs)
        test["outputs_in_vocabulary"] = in_vocab
    test["recordings"] = [{"key": r.key, "reference": r.word, "output": h} for r, h in zip(data.test, rows)]
    write_json_atomic(test, out / TEST_FILE)
    return test


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train speech`` and ``transcribe`` to the CLI."""
    from .cli import command_group

    train = command_group(subparsers, "train", help="train a model: attnlab train TASK (see 'attnlab train --help')")
    p = train.add_parser(
        "speech",
        help="train a spoken-word recognizer (LAS or Transformer) on synthetic voices, test on real recordings",
        description=(
            "Train on words synthesised by espeak-ng in many voices, validate on held-out voices, and test the\n"
            "best checkpoint on the real Asterisk recordings of the same words (DIR/test.json).\n"
            "Synthesised audio is cached in $XDG_CACHE_HOME/attnlab/speech. Ctrl-C saves last/; --resume continues."
        ),
        epilog="example:\n  attnlab train speech --model las --out runs/las --minutes 8\n"
        "  attnlab transcribe --checkpoint runs/las /usr/share/asterisk/sounds/en/digits/7.wav --plot align.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=tuple(SPEECH_MODELS), default=None,
                   help="las (Listen-Attend-Spell, characters; default) or transformer (word classifier)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR")
    p.add_argument("--minutes", type=positive_float, help=f"total training minutes (default {DEFAULT_MINUTES:g} without --steps)")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=TrainSpeechOptions.batch_size)
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--eval-every", type=positive_int, default=TrainSpeechOptions.eval_every, metavar="STEPS",
                   help="validate and save last/ every STEPS steps (default 200)")
    p.add_argument("--valid-max", type=positive_int, default=TrainSpeechOptions.valid_max, metavar="N",
                   help="held-out synthetic clips used for validation (default 400)")
    p.add_argument("--beam", type=positive_int, default=TrainSpeechOptions.beam, help="LAS beam for the final test (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a model config field, e.g. --set attention=additive, --set pooling=cls")
    d = p.add_argument_group("data")
    d.add_argument("--sounds", metavar="DIR", help="Asterisk sounds folder (default: the Debian package's)")
    d.add_argument("--transcripts", metavar="FILE", help="core-sounds-en.txt(.gz) (default: the Debian package's)")
    d.add_argument("--train-voices", type=positive_int, default=SpeechDataSettings.train_voices)
    d.add_argument("--valid-voices", type=positive_int, default=SpeechDataSettings.valid_voices)
    d.add_argument("--cache", metavar="DIR", type=Path, help="synthesised-audio cache (default $XDG_CACHE_HOME/attnlab/speech)")
    d.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_precision_argument(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "transcribe",
        help="recognize the word in WAV files with a model from `attnlab train speech`",
        description="Print the word a trained speech model hears in each WAV file; with --plot, save the LAS\n"
        "speller's alignment over the audio (attention above, log-mel spectrogram below).",
        epilog="example:\n  attnlab transcribe --checkpoint runs/las hello.wav --plot align.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="WAV", type=Path, help="PCM WAV files (any rate; resampled to 8 kHz)")
    p.add_argument("--checkpoint", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--beam", type=positive_int, default=1, help="LAS beam size (default 1: greedy)")
    p.add_argument("--plot", metavar="PATH", type=Path, help="save the alignment (PNG; -1, -2 ... for several files)")
    p.set_defaults(func=run_transcribe)
    return p


def run_train(args: argparse.Namespace) -> int:
    """``attnlab train speech``."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume and args.overrides:
        raise ValueError("--set: a resumed run keeps its model; leave --set out")
    overrides = _parse_overrides(args.overrides)
    minutes = args.minutes if (args.minutes is not None or args.steps is not None) else DEFAULT_MINUTES
    options = TrainSpeechOptions(minutes=minutes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 eval_every=args.eval_every, valid_max=args.valid_max, beam=args.beam, seed=args.seed,
                                 quiet=args.quiet, precision=args.precision)
    settings = SpeechDataSettings(sounds=args.sounds, transcripts=args.transcripts, train_voices=args.train_voices,
                                  valid_voices=args.valid_voices)
    model = args.model if (args.model or args.resume) else "las"
    test = train_speech(args.out, model, options=options, data_settings=settings, overrides=overrides,
                        resume=args.resume, cache_dir=args.cache)
    if test.get("stop_reason") == "interrupted":
        return 130
    line = (f"{test['model']}: {test['parameters']:,} parameters, {test['train_minutes']:.1f} min; word accuracy "
            f"held-out voices {test['valid_accuracy']:.1%}, real recordings {test['test_accuracy']:.1%}")
    if "test_accuracy_beam" in test:
        line += f" (beam {test['beam']}: {test['test_accuracy_beam']:.1%})"
    print(line + f" of {test['test_recordings']}; {args.out / TEST_FILE}")
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    """``attnlab transcribe``."""
    from .data.audio import read_wav, resample
    from .data.speech import trim_silence

    check_output_path(args.plot, "--plot")
    rec = SpeechRecognizer.load(args.checkpoint)
    if args.plot is not None and rec.kind != "las":
        raise ValueError("--plot draws the speller's alignment: only a las run has one (this run is a classifier)")
    clips = []
    for f in args.files:
        x, rate = read_wav(f)
        x = trim_silence(resample(x, rate, rec.features.sample_rate), rec.features.sample_rate)
        if len(x) < rec.features.hop_length:
            raise ValueError(f"{f}: too short ({len(x)} samples at {rec.features.sample_rate} Hz)")
        clips.append(x)
    outs = rec.recognize(clips, beam=args.beam)
    for i, (f, o) in enumerate(zip(args.files, outs)):
        print(f"{f}\t{o['text']}\t{o['score']:.3f}")
        if args.plot is not None:
            path = args.plot if len(outs) == 1 else args.plot.with_name(f"{args.plot.stem}-{i + 1}{args.plot.suffix or '.png'}")
            plot_speech_alignment(o, rec.vocab, path, title=f"{f.name}: {o['text']!r}",
                                  pyramid=rec.model.config.pyramid_layers)
    return 0
