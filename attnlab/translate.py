"""German-English translation end to end: ``attnlab train translate``, ``attnlab translate``,
``attnlab evaluate`` and ``attnlab demo translate``.

    attnlab train translate --model rnnsearch --out runs/rnnsearch --minutes 10
    attnlab translate --checkpoint runs/rnnsearch "Ich möchte dir helfen." --heatmap align.png
    attnlab evaluate --checkpoint runs/rnnsearch --json scores.json
    attnlab demo translate            # RNNsearch vs RNNenc, 6 minutes each, HTML report

A run directory holds everything ``translate`` and ``evaluate`` need::

    run.json          model name and config, data split, training options (what was run)
    tokenizer.json    the joint de+en BPE tokenizer, trained on the training split
    last/  best/      checkpoints (safetensors weights + state.json with the model config);
                      best/ is the one with the highest validation BLEU
    metrics.jsonl     the training log (loss, tokens/s, validation BLEU/chrF per step)

Data: the everyday example sentences of the Ding dictionary (Debian package
``trans-de-en``), split by :func:`attnlab.data.de_en.split_pairs` (1000 valid, 1000 test).
Validation during training decodes greedily a subset of the valid split (BLEU); final
scores come from :func:`evaluate_translator` on the test split (sacreBLEU BLEU and chrF).

Heavy libraries (torch, matplotlib, tokenizers) are imported inside functions, so that
``attnlab --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

from ._argtypes import add_threads_argument as _add_threads_argument
from ._argtypes import (add_precision_argument, autocast_of, nonnegative_float, nonnegative_int, positive_float,
                        positive_int, probability)
from ._argtypes import set_threads as _set_threads
from ._io import check_output_path, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .data.tokenizer import SubwordTokenizer
    from .train.loop import TrainResult

__all__ = [
    "RUN_FILE",
    "MODEL_NAMES",
    "MODEL_TRAINING_DEFAULTS",
    "ATTENTION_FREE",
    "DataSettings",
    "TrainOptions",
    "TrainedRun",
    "Translation",
    "Translator",
    "display_tokens",
    "evaluate_translator",
    "load_splits",
    "model_sizes",
    "plot_alignment",
    "read_run",
    "DemoResult",
    "decode_ids",
    "run_demo",
    "shipped_scores",
    "shipped_translators",
    "train_many",
    "train_tokenizer",
    "train_translation",
    "register",
]

RUN_FILE = "run.json"
DING_PACKAGE = "trans-de-en"
DING_PATH = "/usr/share/trans/de-en"
#: Models of :data:`attnlab.models.registry.MODELS`, in --help order.
MODEL_NAMES = ("rnnsearch", "rnnenc", "seq2seq", "luong", "transformer")
#: Models that read no attention weights (nothing to draw as an alignment).
ATTENTION_FREE = frozenset({"rnnenc", "seq2seq"})
DEFAULT_VOCAB = 2000
#: Training sources of :func:`attnlab.data.corpus_de_en.load_corpus`; held-out pairs always
#: come from the everyday sentences ("ding-sentences").
CORPUS_SOURCES = ("ding-sentences", "ding-words", "debian-descriptions", "gettext")
DEFAULT_MINUTES = 10.0
DEMO_MODELS = ("rnnsearch", "rnnenc")
DEMO_SENTENCES = ("Ich möchte dir helfen.",)
# Translated at export and recorded in the exported run.json (see export_translator).
EXPORT_SENTENCES = ("Ich möchte dir helfen.", "Wo ist der Bahnhof?", "Das Wetter ist heute schön.",
                    "Er hat das Buch gestern gelesen.")
EXPORT_BEAM = 4
#: Beam search's GNMT length penalty ``alpha`` unless an exported run records another.
DEFAULT_LENGTH_PENALTY = 0.6
_MAX_DECODE_LEN = 250
#: Models shipped inside the package (``attnlab/pretrained/<dir>``), by the name
#: ``--checkpoint`` accepts; the first is the default of ``translate`` and ``evaluate``.
PRETRAINED = {"transformer": "de_en_transformer", "rnnsearch": "de_en_rnnsearch"}
PRETRAINED_ROOT = Path(__file__).resolve().parent / "pretrained"


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DataSettings:
    """Which sentence pairs a run uses (saved in ``run.json`` so ``evaluate`` rebuilds the split).

    Args:
        path: a Ding-format dictionary file (default: the one of ``trans-de-en``).
        strict: :func:`attnlab.data.de_en.load_pairs`'s filter.
        valid, test: sizes of the held-out splits; split_seed: the split's hash key.
        max_len: training pairs whose source or target is longer (in subword tokens)
            are dropped (held-out pairs are always kept).
    """

    path: str = DING_PATH
    strict: bool = True
    valid: int = 1000
    test: int = 1000
    split_seed: int = 0
    max_len: int = 64
    sources: tuple[str, ...] = ("ding-sentences",)
    sentence_repeat: int = 1

    def __post_init__(self):
        # run.json stores the tuple as a JSON list; keep the settings hashable and comparable.
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        object.__setattr__(self, "sources", sources)
        unknown = [s for s in sources if s not in CORPUS_SOURCES]
        if not sources or unknown:
            raise ValueError(
                f"sources must name training sources from {', '.join(CORPUS_SOURCES)}, got {list(sources)}"
            )
        if "ding-sentences" not in sources:
            raise ValueError("sources must include 'ding-sentences' (the everyday sentences the model is tested on)")
        if isinstance(self.sentence_repeat, bool) or not isinstance(self.sentence_repeat, int) or self.sentence_repeat < 1:
            raise ValueError(f"sentence_repeat must be a positive int, got {self.sentence_repeat!r}")


@dataclass(frozen=True)
class TrainOptions:
    """How a model is trained (see :class:`attnlab.train.loop.TrainConfig` for the limits).

    ``minutes``, ``steps`` and ``epochs`` are totals over resumed runs; at least one is
    needed. ``lr``/``schedule``/``warmup`` None pick the model's default
    (:data:`MODEL_TRAINING_DEFAULTS`). Validation decodes the first ``valid_sentences``
    valid pairs greedily every ``eval_every`` steps, and ``last/`` is saved then too.

    The defaults suit budgets of minutes on a CPU: small batches (many updates), a
    constant learning rate after a short warmup, no label smoothing. Measured on the
    shared 2-core machine, 3 minutes of RNNsearch (2 M parameters): batches of 800
    tokens at lr 3e-3 reached a validation NLL of 4.91 in 191 steps where batches of 1500
    at lr 1e-3 needed 391 steps for 4.93.
    """

    minutes: float | None = None
    steps: int | None = None
    epochs: int | None = None
    batch_tokens: int = 800
    lr: float | None = None
    schedule: str | None = None
    warmup: int | None = None
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 200
    valid_sentences: int = 500
    seed: int = 0
    quiet: bool = False
    patience: int | None = None
    precision: str = "float32"


#: Per-model ``lr``, ``schedule``, ``warmup`` when :class:`TrainOptions` leaves them None.
#: The Transformer needs a gentler rate and a longer warmup than the small GRUs/LSTMs.
MODEL_TRAINING_DEFAULTS = {"transformer": {"lr": 1e-3, "schedule": "constant", "warmup": 200}}
_RNN_TRAINING = {"lr": 3e-3, "schedule": "constant", "warmup": 50}
_LIMITS = ("minutes", "steps", "epochs")


def read_run(directory) -> dict:
    """The ``run.json`` of a run directory written by :func:`train_translation`."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no translation run ({RUN_FILE} missing); "
            f"train one with `attnlab train translate --out {directory}`"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("task") != "translate":
        raise ValueError(f"{path} was not written by `attnlab train translate` (no \"task\": \"translate\")")
    return record


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _cached_pairs(path: str, strict: bool, mtime_ns: int) -> tuple:
    from .data.de_en import load_pairs

    return tuple(load_pairs(path, strict=strict))


def load_splits(settings: DataSettings = DataSettings(), *, held_out_only: bool = False) -> dict[str, list[tuple[str, str]]]:
    """``{"train", "valid", "test"}`` sentence pairs for ``settings``.

    The default file is installed on demand from the Debian package ``trans-de-en``
    (:func:`attnlab.data.debian.ensure_debian_package`). Parsed files are cached in the
    process (keyed by path and modification time), so the demo parses the 25 MB file once.

    ``valid`` and ``test`` are always the everyday sentences' held-out splits. With more
    ``settings.sources`` than the everyday sentences, ``train`` is the combined corpus of
    :func:`attnlab.data.corpus_de_en.load_corpus` (which keeps every held-out sentence out of
    every source), with the everyday sentences repeated ``settings.sentence_repeat`` times.
    ``held_out_only=True`` skips the training sources (``train`` is empty): what
    ``evaluate`` needs.
    """
    from .data.de_en import split_pairs

    if settings.path == DING_PATH:
        from .data.debian import ensure_debian_package

        ensure_debian_package(DING_PACKAGE, DING_PATH)
    path = Path(settings.path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {settings.path}: no such file (a Ding-format dictionary is expected)")
    pairs = list(_cached_pairs(str(path), settings.strict, path.stat().st_mtime_ns))
    splits = split_pairs(pairs, valid=settings.valid, test=settings.test, seed=settings.split_seed)
    if held_out_only:
        return {**splits, "train": []}
    if settings.sources == ("ding-sentences",):
        if settings.sentence_repeat > 1:
            splits["train"] = list(splits["train"]) * settings.sentence_repeat
        return splits
    from .data.corpus_de_en import load_corpus

    corpus = load_corpus(settings.sources, ding_path=str(path))
    if [tuple(p) for p in corpus.test] != [tuple(p) for p in splits["test"]] or [
        tuple(p) for p in corpus.valid
    ] != [tuple(p) for p in splits["valid"]]:
        raise ValueError(
            "the combined corpus's valid/test splits differ from the everyday sentences' split; "
            "a run on it could not be compared with the others (were --valid-size/--test-size/--lenient changed?)"
        )
    train = []
    for pair in corpus.train:
        repeat = settings.sentence_repeat if pair.source == "ding-sentences" else 1
        train.extend([(pair.de, pair.en)] * repeat)
    return {**splits, "train": train}


def train_tokenizer(train_pairs: Sequence[tuple[str, str]], vocab_size: int = DEFAULT_VOCAB) -> "SubwordTokenizer":
    """One joint BPE vocabulary learned from both sides of the training pairs only."""
    from .data.tokenizer import SubwordTokenizer

    if not train_pairs:
        raise ValueError("the training split is empty; nothing to learn a vocabulary from")
    return SubwordTokenizer.train([s for pair in train_pairs for s in pair], vocab_size=vocab_size)


# ----------------------------------------------------------------------------- model sizes


def _parse_field_value(config_cls, key: str, text: str):
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if key not in fields:
        raise ValueError(f"--set {key}=...: unknown field for this model; valid fields: {', '.join(sorted(fields))}")
    default = fields[key].default
    if default is dataclasses.MISSING or key == "name":
        raise ValueError(f"--set {key}=...: {key} is set by the run itself, not from the command line")
    if default is None:
        # An optional field ("float | None" and the like): "none" keeps None, else the
        # number its annotation names.
        kind = str(fields[key].type)
        if text.lower() == "none":
            return None
        default = 0.0 if "float" in kind else 0 if "int" in kind else ""
        optional = " (or none)"
    else:
        optional = ""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(
            f"--set {key}={text}: expected a {type(default).__name__}{optional} like the default {fields[key].default!r}"
        ) from None
    return text


def model_sizes(
    name: str,
    vocab_size: int,
    *,
    width: int | None = None,
    params: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
    dropout: float | None = None,
    overrides: Sequence[str] | dict = (),
) -> dict:
    """Config fields of model ``name`` for a joint vocabulary of ``vocab_size``.

    Args:
        width: embedding and hidden sizes (every width of an RNN model as in
            :data:`attnlab.models.registry.WIDTHS`; ``d_model``, with ``ffn_dim = 4 * d_model``,
            for the Transformer).
        params: a parameter budget instead of ``width``
            (:func:`attnlab.models.registry.sizes_for_budget`).
        layers: stacked RNN layers, or encoder and decoder layers of the Transformer.
        heads: attention heads (Transformer).
        dropout: dropout probability.
        overrides: ``"field=value"`` strings (or a dict) for any other config field, e.g.
            ``readout=maxout`` (RNNsearch) or ``score=dot`` (Luong).

    Returns:
        A dict for :func:`attnlab.models.registry.build_model` (validated by building the config).
    """
    from .models.registry import MODELS, WIDTHS, build_config, sizes_for_budget

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if width is not None and params is not None:
        raise ValueError("give --width or --params, not both")
    config_cls = MODELS[name][0]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    fixed: dict = {}
    if layers is not None:
        if "num_layers" in fields:
            fixed["num_layers"] = layers
        elif "num_encoder_layers" in fields:
            fixed["num_encoder_layers"] = fixed["num_decoder_layers"] = layers
        else:
            raise ValueError(f"--layers does not apply to {name} (it has one bidirectional encoder and one decoder layer)")
    if heads is not None:
        if "num_heads" not in fields:
            raise ValueError(f"--heads applies to the transformer only, not to {name}")
        fixed["num_heads"] = heads
    if dropout is not None:
        fixed["dropout"] = dropout
    if isinstance(overrides, dict):
        fixed.update(overrides)
    else:
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set dropout=0.2")
            fixed[key.strip()] = _parse_field_value(config_cls, key.strip(), text.strip())
    base = {"src_vocab": vocab_size, "tgt_vocab": vocab_size, "pad_id": 0}
    if params is not None:
        sizes = sizes_for_budget(name, vocab_size, params, **fixed)
        sizes["pad_id"] = 0
    elif width is not None:
        if name == "transformer":
            sizes = {**base, "d_model": width, "ffn_dim": 4 * width, **fixed}
        else:
            sizes = {**base, **WIDTHS[name](width, fixed), **fixed}
    else:
        sizes = {**base, **fixed}
    build_config(name, **sizes)  # one clear error for a bad combination, before any work
    return sizes


# ----------------------------------------------------------------------------- translating


class Translation(NamedTuple):
    """One translated sentence.

    source_tokens: the source pieces (``</s>`` last), target_tokens: the generated pieces
    (no ``</s>``), both as :func:`display_tokens` writes them. attention: (T_out, S) float
    tensor, row i = where the model looked when it wrote target token i; ``None`` for a
    model without attention. score: ``log p(output | source)``.
    """

    source: str
    text: str
    source_tokens: list[str]
    target_tokens: list[str]
    attention: "torch.Tensor | None"
    score: float


_SPACE = "\u2581"


def display_tokens(pieces: Sequence[str]) -> list[str]:
    """Readable labels for BPE pieces: a word-initial piece loses its ``▁`` marker; a piece
    that continues a word gets a leading ``-`` (``▁hel fen`` -> ``hel -fen``); punctuation
    and special tokens stay as they are."""
    out = []
    for p in pieces:
        if p.startswith(_SPACE):
            out.append(p[1:] or _SPACE)
        elif p.startswith("<") and p.endswith(">") or not any(ch.isalnum() for ch in p):
            out.append(p)
        else:
            out.append("-" + p)
    return out


def _max_output_len(src_len: int) -> int:
    return min(_MAX_DECODE_LEN, 2 * src_len + 10)


class Translator:
    """A trained model with its tokenizer: text in, :class:`Translation` out.

    Args:
        model: a seq2seq model (:class:`attnlab.models.decoding.Seq2seqModel`).
        tokenizer: the run's :class:`~attnlab.data.tokenizer.SubwordTokenizer`.
        name: the model's name (for messages); default ``model.config.name``.
        length_penalty: the GNMT ``alpha`` beam search uses when a call gives none
            (:func:`attnlab.models.decoding.beam_search`); :meth:`load` takes the one an
            exported run was given (``run.json``'s ``exported.length_penalty``), else
            :data:`DEFAULT_LENGTH_PENALTY`.
    """

    def __init__(self, model, tokenizer, name: str | None = None, length_penalty: float | None = None):
        from .models.decoding import check_length_penalty

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "name", type(model).__name__)
        self.length_penalty = DEFAULT_LENGTH_PENALTY if length_penalty is None else check_length_penalty(length_penalty)

    @classmethod
    def load(cls, path) -> "Translator":
        """Load a run directory (its ``best/`` checkpoint, else ``last/``) or one checkpoint
        directory inside a run; the tokenizer comes from the run directory."""
        from .data.tokenizer import TOKENIZER_FILE, SubwordTokenizer
        from .models.registry import model_from_config
        from .train.checkpoint import load_checkpoint, read_checkpoint

        ckpt_dir, run_dir = _resolve_checkpoint(path)
        if not (run_dir / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(
                f"--checkpoint {path}: {run_dir / TOKENIZER_FILE} is missing (every run directory "
                "holds the tokenizer it was trained with)"
            )
        tokenizer = SubwordTokenizer.load(run_dir)
        config = read_checkpoint(ckpt_dir).config
        if not isinstance(config, dict) or "name" not in config:
            raise ValueError(f"--checkpoint {path}: {ckpt_dir} holds no model config; it was not written by attnlab train")
        model = model_from_config(config)
        load_checkpoint(ckpt_dir, model, restore_rng=False)
        record = read_run(run_dir) if (run_dir / RUN_FILE).is_file() else {}
        return cls(model, tokenizer, config["name"], length_penalty=record.get("exported", {}).get("length_penalty"))

    def translate(
        self,
        sentences: Sequence[str],
        *,
        beam: int = 1,
        batch_size: int = 64,
        length_penalty: float | None = None,
        max_len: int | None = None,
    ) -> list[Translation]:
        """Translate ``sentences`` (greedy for ``beam=1``, else beam search), batched by length.

        ``length_penalty``: the beam's GNMT ``alpha`` (default :attr:`length_penalty`).
        ``max_len`` caps the output pieces per sentence (default ``2 * source pieces + 10``).
        """
        if isinstance(sentences, str):
            sentences = [sentences]
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"sentences[{i}] must be a str, got {type(s).__name__}")
            if not s.strip():
                raise ValueError(f"sentence {i + 1} is empty; give German text to translate")
        tok = self.tokenizer
        src_ids = tok.encode_batch(list(sentences), add_bos=False, add_eos=True)
        alpha = self.length_penalty if length_penalty is None else length_penalty
        decoded = decode_ids(self.model, src_ids, beam=beam, batch_size=batch_size, length_penalty=alpha,
                             max_len=max_len, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
        return [
            Translation(
                source=s,
                text=tok.decode(out),
                source_tokens=display_tokens(tok.tokens(ids)),
                target_tokens=display_tokens(tok.tokens(out)),
                attention=attn,
                score=score,
            )
            for s, ids, (out, attn, score) in zip(sentences, src_ids, decoded)
        ]


def decode_ids(
    model,
    src_ids: Sequence[Sequence[int]],
    *,
    beam: int = 1,
    batch_size: int = 64,
    length_penalty: float = DEFAULT_LENGTH_PENALTY,
    max_len: int | None = None,
    pad_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> list[tuple[list[int], "torch.Tensor | None", float]]:
    """Decode many sources: sorted by length into batches (little padding), greedy
    (``beam=1``) or beam search, then put back in input order.

    ``max_len`` caps the output length (default ``2 * S + 10`` for a batch of sources of at
    most ``S`` pieces, at most 250).

    Returns one ``(token ids without bos/eos, attention (T_out, S_i) or None, log p)`` per source.
    """
    import torch

    from ._checks import check_positive_int
    from .models.decoding import beam_search, greedy_decode

    check_positive_int(beam, "beam")
    check_positive_int(batch_size, "batch_size")
    if max_len is not None:
        check_positive_int(max_len, "max_len")
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    out: list = [None] * len(src_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        seqs = [list(src_ids[i]) for i in rows]
        S = max(len(s) for s in seqs)
        src = torch.tensor([s + [pad_id] * (S - len(s)) for s in seqs], dtype=torch.long)  # (B, S)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (B,)
        steps = _max_output_len(S) if max_len is None else max_len
        if beam == 1:
            d = greedy_decode(model, src, lengths, bos_id, eos_id, max_len=steps)
        else:
            d = beam_search(model, src, lengths, bos_id, eos_id, beam_size=beam, max_len=steps,
                            length_penalty=length_penalty)
        for j, i in enumerate(rows):
            out[i] = (d.tokens[j], d.attention[j], d.scores[j])
    return out


def _resolve_checkpoint(path) -> tuple[Path, Path]:
    """``(checkpoint directory, run directory)`` for a run directory or a checkpoint in one."""
    from .train.checkpoint import STATE_JSON

    p = pretrained_path(str(path)) if str(path) in PRETRAINED and not Path(path).exists() else Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"--checkpoint {path}: no such directory; train a model first with "
            f"`attnlab train translate --out {path}`"
        )
    if not p.is_dir():
        raise FileNotFoundError(f"--checkpoint {path}: not a directory (give the --out folder of a training run)")
    if (p / STATE_JSON).is_file():
        return p, (p if (p / RUN_FILE).is_file() or (p / "tokenizer.json").is_file() else p.parent)
    for sub in ("best", "last"):
        if (p / sub / STATE_JSON).is_file():
            return p / sub, p
    raise FileNotFoundError(
        f"--checkpoint {path}: no checkpoint inside (expected best/ or last/ written by "
        "`attnlab train translate`)"
    )


def pretrained_path(name: str = "transformer") -> Path:
    """The directory of the shipped model ``name`` (a key of :data:`PRETRAINED`); it holds
    ``run.json``, ``tokenizer.json`` and ``best/`` like any run directory."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown shipped model {name!r}; shipped models: {', '.join(PRETRAINED)}")
    path = PRETRAINED_ROOT / PRETRAINED[name]
    if not (path / RUN_FILE).is_file():
        raise FileNotFoundError(
            f"the shipped {name} model is missing from this installation ({path}); reinstall attnlab, "
            f"or train one: attnlab train translate --model {name} --out runs/{name}"
        )
    return path


def _default_checkpoint() -> Path:
    return pretrained_path(next(iter(PRETRAINED)))


def export_translator(
    checkpoint, out, *, dtype: str = "float16", scores: dict | None = None, evaluate_beam: int | None = None,
    average: Sequence | None = None, length_penalty: float = DEFAULT_LENGTH_PENALTY, print_fn=None,
) -> Path:
    """Write the model of a training run as a small, inference-only run directory.

    ``out`` receives ``run.json`` (the run's record, plus ``"exported"``: source, dtype,
    ``scores`` and ``examples``), ``tokenizer.json`` and ``best/`` (weights in ``dtype``,
    no optimizer state; :meth:`Translator.load` casts them back to float32). This is how
    the models under ``attnlab/pretrained`` were made.

    ``scores`` are recorded as given (e.g. ``attnlab evaluate --json``); with
    ``evaluate_beam`` the exported weights, as loaded back, are scored on the run's test
    split with that beam and ``{"bleu", "chrf", "sentences", "beam", "split"}`` is
    recorded instead: the figures a user reproduces with ``attnlab evaluate``.
    ``examples`` are the translations of :data:`EXPORT_SENTENCES` at beam
    :data:`EXPORT_BEAM` by the exported weights.

    ``length_penalty``: the beam search's GNMT alpha the exported model uses by default
    (recorded as ``exported.length_penalty``; :meth:`Translator.load` reads it back), for
    the scores and examples too.

    ``average``: checkpoint directories of the same run (e.g. snapshots of ``last/``)
    whose weights are averaged (:func:`attnlab.train.checkpoint.average_weights`) and
    exported instead of ``checkpoint``'s own; ``checkpoint`` still gives the tokenizer
    and config.
    """
    import torch

    from ._checks import check_positive_int
    from .models.decoding import check_length_penalty
    from .train.checkpoint import save_checkpoint

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    if evaluate_beam is not None:
        check_positive_int(evaluate_beam, "evaluate_beam")
    length_penalty = check_length_penalty(length_penalty)
    ckpt_dir, run_dir = _resolve_checkpoint(checkpoint)
    record = read_run(run_dir)
    translator = Translator.load(checkpoint)
    out = Path(out)
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out} is the run directory itself; export into a new directory")
    averaged = None
    if average:
        from .train.checkpoint import average_weights

        try:
            translator.model.load_state_dict(average_weights(average))
        except RuntimeError as exc:  # strict: other parameter names or shapes
            raise ValueError(f"--average: the checkpoints do not hold the model of {ckpt_dir}: {exc}") from None
        averaged = [str(Path(d)) for d in average]
    out.mkdir(parents=True, exist_ok=True)
    translator.tokenizer.save(out)
    model = translator.model.to(dtypes[dtype])
    try:
        save_checkpoint(out / "best", model, config=read_checkpoint_config(ckpt_dir),
                        state={"exported_from": str(ckpt_dir)})
    finally:
        translator.model.float()
    record = {**record, "exported": {"from": str(ckpt_dir), "dtype": dtype, "length_penalty": length_penalty,
                                     "scores": dict(scores or {})}}
    if averaged:
        record["exported"]["averaged"] = averaged
    exported = Translator.load(out)  # scores and examples come from the weights as shipped
    exported.length_penalty = length_penalty  # run.json, which records it, is written last
    if evaluate_beam is not None:
        test = load_splits(DataSettings(**record["data"]), held_out_only=True)["test"]
        if print_fn is not None:
            print_fn(f"scoring the exported weights on {len(test)} test sentences, beam {evaluate_beam} ...")
        got = evaluate_translator(exported, test, beam=evaluate_beam)
        record["exported"]["scores"] = {"bleu": float(got["bleu"]), "chrf": float(got["chrf"]),
                                        "sentences": int(got["sentences"]), "beam": int(evaluate_beam),
                                        "split": "test"}
        if evaluate_beam > 1:
            record["exported"]["scores"]["length_penalty"] = length_penalty
    # The shipped models' tests check that an installation reproduces these exactly.
    record["exported"]["examples"] = [
        {"de": t.source, "en": t.text, "beam": EXPORT_BEAM}
        for t in exported.translate(list(EXPORT_SENTENCES), beam=EXPORT_BEAM)
    ]
    write_json_atomic(record, out / RUN_FILE)
    return out


def read_checkpoint_config(ckpt_dir) -> dict:
    from .train.checkpoint import read_checkpoint

    return read_checkpoint(ckpt_dir).config


def plot_alignment(translation: Translation, path, *, title: str | None = None):
    """Save the alignment of one translation as a heatmap (Bahdanau et al. 2014, Fig. 3):
    columns the source pieces, rows the generated pieces; returns the Figure."""
    from .viz.heatmap import plot_attention, save_figure

    if translation.attention is None:
        raise ValueError("this model has no attention weights to draw (it reads one fixed context vector)")
    if translation.attention.shape[0] == 0:
        raise ValueError(f"the translation of {translation.source!r} is empty; nothing to draw")
    fig = plot_attention(
        translation.attention,
        row_labels=translation.target_tokens,
        col_labels=translation.source_tokens,
        title=title,
    )
    ax = fig.axes[0]
    ax.set_xlabel("source (German)")
    ax.set_ylabel("translation (English)")
    if path is not None:
        save_figure(fig, path)
    return fig


# ----------------------------------------------------------------------------- evaluating


def evaluate_translator(
    translator: Translator,
    pairs: Sequence[tuple[str, str]],
    *,
    beam: int = 1,
    batch_size: int = 64,
    max_len: int | None = None,
    length_penalty: float | None = None,
) -> dict:
    """Corpus sacreBLEU BLEU and chrF of ``translator`` on ``(german, english)`` pairs
    (``length_penalty``: the beam's GNMT alpha, default the translator's own).

    Returns ``{"bleu", "chrf", "sentences", "hypotheses", "bleu_signature", "chrf_signature"}``.
    """
    from .train.metrics import corpus_bleu, corpus_chrf

    if not pairs:
        raise ValueError("no sentence pairs to evaluate on")
    outs = translator.translate([de for de, _ in pairs], beam=beam, batch_size=batch_size, max_len=max_len,
                                length_penalty=length_penalty)
    hyps = [t.text for t in outs]
    refs = [en for _, en in pairs]
    bleu, chrf = corpus_bleu(hyps, refs), corpus_chrf(hyps, refs)
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        "sentences": len(pairs),
        "hypotheses": hyps,
        "bleu_signature": bleu.signature,
        "chrf_signature": chrf.signature,
    }


# ----------------------------------------------------------------------------- training


@dataclass
class TrainedRun:
    """What :func:`train_translation` leaves: the run directory, its record, the trainer's result."""

    out: Path
    model_name: str
    parameters: int
    result: "TrainResult"
    record: dict = field(repr=False)
    load_before: list | None = None  # 1, 5, 15-minute load averages when training started
    load_after: list | None = None  # ... and when it stopped: how busy the machine was


def _holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in (RUN_FILE, "last", "best"))


def _portable_path(path) -> str:
    """``path`` as recorded in ``run.json``: a shipped model's checkpoint as
    ``attnlab/pretrained/...`` (the same on every installation), anything else as given."""
    p = Path(path)
    try:
        return str(Path("attnlab", "pretrained", p.resolve().relative_to(PRETRAINED_ROOT)))
    except ValueError:
        return str(p)


def init_from_checkpoint(path, model: str | None, *, dropout: float | None = None, overrides: Sequence[str] = ()):
    """What a warm start from ``path`` needs: ``(checkpoint dir, model name, sizes, tokenizer)``.

    ``path``: a run directory, its ``best/`` or ``last/``, or a shipped model's name
    (:data:`PRETRAINED`). The model's config and tokenizer come from it; ``dropout`` and
    ``overrides`` (``"field=value"``) may change fields that hold no weights (dropouts);
    a change of shape fails when the weights are loaded.
    """
    from .data.tokenizer import TOKENIZER_FILE, SubwordTokenizer
    from .train.checkpoint import read_checkpoint

    try:
        ckpt_dir, run_dir = _resolve_checkpoint(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(str(exc).replace("--checkpoint", "--init-from", 1)) from None
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"--init-from {path}: {run_dir / TOKENIZER_FILE} is missing")
    config = read_checkpoint(ckpt_dir).config
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"--init-from {path}: {ckpt_dir} holds no model config; it was not written by attnlab train")
    name = config["name"]
    if model is not None and model != name:
        raise ValueError(f"--model {model}: --init-from {path} holds a {name}; leave --model out or name {name}")
    tokenizer = SubwordTokenizer.load(run_dir)
    changed = model_sizes(name, tokenizer.vocab_size, dropout=dropout, overrides=overrides)
    sizes = {k: v for k, v in config.items() if k != "name"}
    sizes.update({k: v for k, v in changed.items() if k not in ("src_vocab", "tgt_vocab", "pad_id")})
    return ckpt_dir, name, sizes, tokenizer


def train_translation(
    out,
    model: str | None = "rnnsearch",
    *,
    sizes: dict | None = None,
    options: TrainOptions = TrainOptions(minutes=DEFAULT_MINUTES),
    data: DataSettings = DataSettings(),
    vocab_size: int = DEFAULT_VOCAB,
    resume: bool = False,
    splits: dict | None = None,
    tokenizer=None,
    resume_hint: str | None = None,
    init_from=None,
) -> TrainedRun:
    """Train a translation model into the run directory ``out`` (see the module docstring).

    A new run trains the tokenizer on the training split (unless ``tokenizer`` is given),
    writes ``run.json`` and trains; ``resume=True`` continues the run in ``out`` exactly
    where it stopped (its model, data and options come from ``run.json``; only the
    limits ``minutes``/``steps``/``epochs`` of ``options`` are taken, as new totals).

    Args:
        out: the run directory.
        model: a name of :data:`MODEL_NAMES` (ignored when resuming, except that it must match).
        sizes: config fields from :func:`model_sizes` (default: the model's defaults).
        options, data, vocab_size: see :class:`TrainOptions`, :class:`DataSettings`.
        splits, tokenizer: already loaded data and tokenizer, to share between runs (demo).
        init_from: a checkpoint directory whose weights the new model starts from (warm
            start); ``sizes`` and ``tokenizer`` must be the ones it was trained with
            (:func:`init_from_checkpoint` reads them). Recorded in ``run.json``.

    Returns:
        :class:`TrainedRun` (``result.stop_reason`` is ``"interrupted"`` after Ctrl-C).
    """
    import torch

    from .data.de_en import encode_pairs, make_batches
    from .data.tokenizer import SubwordTokenizer
    from .distributed import barrier, get_world_size, is_main_process
    from .models.registry import build_config, count_parameters, model_from_config
    from .train.loop import TrainConfig, Trainer, make_scheduler
    from .train.metrics import corpus_bleu, corpus_chrf, label_smoothed_cross_entropy

    out = Path(out)
    limits = {k: getattr(options, k) for k in _LIMITS}
    if all(v is None for v in limits.values()):
        raise ValueError("give a training limit: --minutes, --steps or --epochs")
    if options.schedule == "cosine" and options.steps is None:
        raise ValueError("--schedule cosine needs --steps (the length of its decay)")
    autocast = autocast_of(options.precision)
    if resume:
        record = read_run(out)
        if model is not None and model != record["model"]:
            raise ValueError(f"--model {model}: the run in {out} trains {record['model']}; leave --model out to resume it")
        model = record["model"]
        init_from = record.get("init_from")  # where the run started: kept in the rewritten run.json
        data = DataSettings(**record["data"])
        options = dataclasses.replace(TrainOptions(**record["train"]), **limits, quiet=options.quiet)
        tokenizer = SubwordTokenizer.load(out)
        config = build_config(model, **{k: v for k, v in record["config"].items() if k != "name"})
        if splits is None:
            splits = load_splits(data)
    else:
        if _holds_run(out):
            raise FileExistsError(
                f"--out {out} already holds a training run; add --resume to continue it, or choose another directory"
            )
        if model is None:
            raise ValueError("model is required for a new run")
        # Under torchrun every rank has checked --out before rank 0 writes into it, and every
        # rank then uses rank 0's tokenizer (one vocabulary, whatever BPE's tie-breaking does).
        barrier()
        if splits is None:
            splits = load_splits(data)
        if is_main_process():
            if tokenizer is None:
                tokenizer = train_tokenizer(splits["train"], vocab_size)
            out.mkdir(parents=True, exist_ok=True)
            tokenizer.save(out)
        barrier()
        if not is_main_process():
            tokenizer = SubwordTokenizer.load(out)
        sizes = dict(model_sizes(model, tokenizer.vocab_size) if sizes is None else sizes)
        sizes.update(src_vocab=tokenizer.vocab_size, tgt_vocab=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
        config = build_config(model, **sizes)
    torch.manual_seed(options.seed)  # fixes the initial weights; the trainer seeds the rest
    net = model_from_config(config)
    if init_from is not None and not resume:
        from .train.checkpoint import load_checkpoint

        load_checkpoint(init_from, net, restore_rng=False)  # strict: names and shapes must match
    n_params = count_parameters(net)
    record = {
        "task": "translate",
        "model": model,
        "config": dataclasses.asdict(config),
        "parameters": n_params,
        "vocab_size": tokenizer.vocab_size,
        "data": dataclasses.asdict(data),
        "train": dataclasses.asdict(options),
        "train_pairs": len(splits["train"]),
        "threads": torch.get_num_threads(),
        "processes": get_world_size(),
    }
    if init_from is not None:
        record["init_from"] = _portable_path(init_from)
    if is_main_process():
        write_json_atomic(record, out / RUN_FILE)

    tok = tokenizer
    pad = tok.pad_id
    train_ids = encode_pairs(splits["train"], tok, max_len=data.max_len)
    if not train_ids:
        raise ValueError(f"no training pair is at most max_len={data.max_len} tokens long")
    valid_pairs = list(splits["valid"])[: options.valid_sentences]
    valid_ids = encode_pairs(valid_pairs, tok)

    def batches(epoch: int, seed: int):
        # A pure function of (epoch, seed): the trainer rebuilds it to resume mid-epoch.
        return make_batches(train_ids, batch_tokens=options.batch_tokens, shuffle=True, seed=seed * 1_000_003 + epoch,
                            pad_id=pad, bos_id=tok.bos_id, eos_id=tok.eos_id)

    def loss_fn(m, batch):
        logits = m(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
        loss = label_smoothed_cross_entropy(logits, batch.tgt_out, smoothing=options.label_smoothing, ignore_index=pad)
        return loss, int((batch.tgt_out != pad).sum())

    translator = Translator(net, tok, model)

    def validate() -> dict:
        if not valid_pairs:
            return {"bleu": 0.0}
        net.eval()
        nll = count = 0.0
        with torch.no_grad():
            for b in make_batches(valid_ids, batch_size=64, shuffle=False, pad_id=pad, bos_id=tok.bos_id,
                                  eos_id=tok.eos_id):
                logits = net(b.src, b.src_lengths, b.tgt_in)  # (B, T, V)
                nll += float(label_smoothed_cross_entropy(logits, b.tgt_out, ignore_index=pad, reduction="sum"))
                count += int((b.tgt_out != pad).sum())
        hyps = [t.text for t in translator.translate([de for de, _ in valid_pairs])]
        refs = [en for _, en in valid_pairs]
        return {"bleu": corpus_bleu(hyps, refs).score, "chrf": corpus_chrf(hyps, refs).score, "nll": nll / count}

    defaults = MODEL_TRAINING_DEFAULTS.get(model, _RNN_TRAINING)
    schedule = options.schedule or defaults["schedule"]
    warmup = defaults["warmup"] if options.warmup is None else options.warmup
    lr = defaults["lr"] if options.lr is None else options.lr
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    sched_kwargs = {"warmup_steps": max(1, warmup)} if schedule == "inverse_sqrt" else {"warmup_steps": warmup}
    if schedule == "cosine":
        sched_kwargs["total_steps"] = options.steps
    scheduler = make_scheduler(optimizer, schedule, **sched_kwargs)
    train_config = TrainConfig(
        max_steps=options.steps,
        max_epochs=options.epochs,
        max_minutes=options.minutes,
        grad_clip=options.grad_clip,
        log_every=min(50, options.eval_every),
        eval_every=options.eval_every,
        checkpoint_every=options.eval_every,
        select_metric="bleu",
        higher_is_better=True,
        patience=options.patience,
        seed=options.seed,
        unit="tok",
        quiet=options.quiet,
        autocast=autocast,
    )
    trainer = Trainer(net, optimizer, loss_fn, batches, out, train_config, scheduler=scheduler, validate=validate,
                      model_config=config, resume_hint=resume_hint or f"attnlab train translate --out {out} --resume")
    load_before = _loadavg()
    result = trainer.fit(resume=resume)
    return TrainedRun(out=out, model_name=model, parameters=n_params, result=result, record=record,
                      load_before=load_before, load_after=_loadavg())


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _summary_line(run: TrainedRun) -> str:
    r = run.result
    best = "none" if r.best_metric is None else f"{r.best_metric:.2f} at step {r.best_step}"
    return (
        f"{run.model_name}: {run.parameters / 1e6:.2f} M parameters, {r.step} steps in "
        f"{r.train_seconds / 60:.1f} min (stopped: {r.stop_reason}); best valid BLEU {best}; "
        f"checkpoints in {run.out}"
    )


def _train_job(job: dict, splits: dict, tokenizer_dir: str, threads: int) -> TrainedRun:
    """One :func:`train_translation` in a worker process (module level: it must pickle)."""
    import torch

    from .data.tokenizer import SubwordTokenizer

    torch.set_num_threads(threads)
    return train_translation(**job, splits=splits, tokenizer=SubwordTokenizer.load(tokenizer_dir))


def _progress(out: Path) -> str:
    """``step 120 loss 5.31 2,100 tok/s valid BLEU 1.2`` from a run's metrics.jsonl."""
    path = out / "metrics.jsonl"
    train = valid = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return "starting"
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if rec.get("kind") == "train":
            train = rec
        elif rec.get("kind") == "valid":
            valid = rec
    if train is None:
        return "starting"
    text = f"step {train['step']} loss {train['loss']:.2f} {train.get('tok_per_s', 0):,.0f} tok/s"
    if valid is not None:
        text += f" valid BLEU {valid['bleu']:.1f}"
    return text


def train_many(
    jobs: dict[str, dict],
    *,
    splits: dict,
    tokenizer,
    jobs_at_once: int = 1,
    poll_seconds: float = 30.0,
    print_fn=print,
) -> dict[str, TrainedRun]:
    """Run :func:`train_translation` for each job (``name -> keyword arguments``) on the same
    data and tokenizer: in this process one after the other (``jobs_at_once=1``), or that
    many at a time in spawned worker processes, each with this process's torch thread
    count, while this process prints every run's progress every ``poll_seconds``.

    Ctrl-C reaches the workers too (one process group): each saves ``last/`` and returns
    an ``"interrupted"`` run.
    """
    from ._checks import check_positive_int

    check_positive_int(jobs_at_once, "jobs_at_once")
    if jobs_at_once == 1 or len(jobs) == 1:
        runs = {}
        for name, job in jobs.items():
            runs[name] = train_translation(**job, splits=splits, tokenizer=tokenizer)
            if runs[name].result.stop_reason == "interrupted":
                break
        return runs

    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    tmp = tempfile.TemporaryDirectory(prefix="attnlab-tokenizer-")
    tok_dir = tmp.name  # the workers load the one tokenizer from here
    tokenizer.save(tok_dir)
    t0 = time.monotonic()
    quiet = {name: {**job, "options": dataclasses.replace(job["options"], quiet=True)} for name, job in jobs.items()}
    with ProcessPoolExecutor(max_workers=min(jobs_at_once, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_job, job, splits, str(tok_dir), _threads()) for name, job in quiet.items()}
        try:
            while True:
                done, pending = wait(list(futures.values()), timeout=poll_seconds, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
                status = " | ".join(f"{name}: {_progress(Path(jobs[name]['out']))}" for name in jobs)
                print_fn(f"  {(time.monotonic() - t0) / 60:4.1f} min  {status}")
        except KeyboardInterrupt:
            print_fn("interrupted: waiting for the runs to save their checkpoints ...")
        try:
            return {name: f.result() for name, f in futures.items()}
        finally:
            tmp.cleanup()


# ----------------------------------------------------------------------------- demo


@dataclass
class DemoResult:
    """Scores and example translations of :func:`run_demo`, and where its report went."""

    runs: dict
    scores: dict
    examples: list
    report: Path
    shipped: dict = field(default_factory=dict)  # name -> recorded test scores of the shipped models shown


def shipped_translators() -> dict[str, "Translator"]:
    """The shipped models of this installation (:data:`PRETRAINED`) that are present,
    loaded; ``{}`` when none is."""
    out = {}
    for name in PRETRAINED:
        try:
            path = pretrained_path(name)
        except FileNotFoundError:
            continue
        out[name] = Translator.load(path)
    return out


def add_length_penalty_argument(p: argparse.ArgumentParser) -> None:
    """``--length-penalty ALPHA`` (default None: each model's own, see :attr:`Translator.length_penalty`)."""
    p.add_argument("--length-penalty", metavar="ALPHA", type=nonnegative_float, default=None,
                   help="beam search's GNMT length penalty alpha (0 ranks by log p alone; default: the one the model "
                        f"was exported with, else {DEFAULT_LENGTH_PENALTY})")


def _decoding_label(scores: dict) -> str:
    """How recorded scores were decoded: ``beam N`` (with its length penalty when recorded),
    ``greedy``, or ``-`` when none are recorded."""
    if "bleu" not in scores:
        return "-"
    if scores.get("beam", 1) == 1:
        return "greedy"
    alpha = scores.get("length_penalty")
    return f"beam {scores['beam']}" + ("" if alpha is None else f", length penalty {alpha:g}")


def recorded_scores(record: dict) -> dict:
    """The test scores recorded in an exported run's ``run.json`` record (``{}`` if none)."""
    return dict(record.get("exported", {}).get("scores") or {})


def shipped_scores(name: str) -> dict:
    """The test scores recorded when the shipped model ``name`` was exported (``{}`` if none)."""
    return recorded_scores(read_run(pretrained_path(name)))


def _example_pairs(test_pairs, n: int) -> list[tuple[str, str]]:
    """Held-out everyday sentences for the demo: short test pairs (4 to 8 words), in file order."""
    picked = [(de, en) for de, en in test_pairs if 4 <= len(de.split()) <= 8]
    return picked[:n]


def run_demo(
    out="runs/demo",
    *,
    minutes: float = 6.0,
    params: int = 1_500_000,
    dropout: float = 0.2,
    vocab_size: int = DEFAULT_VOCAB,
    beam: int = 1,
    examples: int = 6,
    models: Sequence[str] = DEMO_MODELS,
    data: DataSettings = DataSettings(),
    options: TrainOptions | None = None,
    max_len: int | None = None,
    jobs_at_once: int = 1,
    shipped: bool = True,
    shipped_beam: int = 4,
    print_fn=print,
) -> DemoResult:
    """Train a small RNNsearch and an RNNenc (same parameter budget, same minutes), score
    them on the test split, translate held-out sentences and write ``out/report.html``.

    With ``shipped`` (default), the models shipped in ``attnlab/pretrained`` (trained for
    hours on the combined corpus) translate the same sentences with beam ``shipped_beam``
    beside the live-trained ones, and their alignments join the report: the few-minute
    runs show learning happen, the shipped ones show where it leads.

    ``dropout`` is 0.2: without it, a 2 M-parameter RNNenc overfits this corpus after
    three epochs (validation NLL rising from step 1200 on, measured). ``jobs_at_once=2`` trains both models at the same time in two processes (one per core
    of a 2-core machine), so each gets the same minutes in half the wall-clock time.
    Re-running with the same ``out`` resumes the runs there (to the same total minutes, so
    a finished demo only re-evaluates).
    """
    from .data.tokenizer import SubwordTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    splits = load_splits(data)
    if (out / "tokenizer.json").is_file():
        tokenizer = SubwordTokenizer.load(out)
    else:
        tokenizer = train_tokenizer(splits["train"], vocab_size)
        tokenizer.save(out)
    print_fn(
        f"data: {len(splits['train'])} train / {len(splits['valid'])} valid / {len(splits['test'])} test pairs "
        f"from {data.path}, joint BPE vocabulary of {tokenizer.vocab_size} ({time.monotonic() - t0:.0f} s)"
    )
    base = options or TrainOptions()
    base = dataclasses.replace(base, minutes=minutes, steps=None, epochs=None)
    jobs = {}
    for name in models:
        run_dir = out / name
        resume = (run_dir / RUN_FILE).is_file()
        jobs[name] = dict(
            out=run_dir, model=name, sizes=model_sizes(name, tokenizer.vocab_size, params=params, dropout=dropout),
            options=base,
            data=data, resume=resume, resume_hint=f"attnlab demo translate --out {out} --minutes {minutes:g}",
        )
    how = f"{min(jobs_at_once, len(jobs))} at a time" if jobs_at_once > 1 else "one after the other"
    print_fn(f"\n== training {', '.join(models)} for {minutes:g} min each ({how}, {_threads()} thread(s) each)")
    runs = train_many(jobs, splits=splits, tokenizer=tokenizer, jobs_at_once=jobs_at_once, print_fn=print_fn)
    for run in runs.values():
        print_fn(_summary_line(run))
    if any(run.result.stop_reason == "interrupted" for run in runs.values()):
        raise KeyboardInterrupt

    print_fn(f"\n== scoring on the {len(splits['test'])} test sentences ({'greedy' if beam == 1 else f'beam {beam}'})")
    translators = {name: Translator.load(run.out) for name, run in runs.items()}
    scores = {name: evaluate_translator(tr, splits["test"], beam=beam, max_len=max_len)
              for name, tr in translators.items()}
    header = f"{'model':<12}{'params':>9}{'steps':>8}{'minutes':>9}{'BLEU':>8}{'chrF':>8}"
    print_fn(header)
    for name, run in runs.items():
        r = run.result
        print_fn(f"{name:<12}{run.parameters / 1e6:>8.2f}M{r.step:>8}{r.train_seconds / 60:>9.1f}"
                 f"{scores[name]['bleu']:>8.2f}{scores[name]['chrf']:>8.2f}")
    print_fn(f"sacreBLEU {scores[models[0]]['bleu_signature']}")

    shipped_models = shipped_translators() if shipped else {}
    shipped_table = {}
    if shipped_models:
        print_fn(f"\n== the shipped models (attnlab/pretrained, trained for hours on the combined corpus), "
                 f"test scores recorded at export")
        print_fn(f"{'model':<22}{'params':>9}{'BLEU':>8}{'chrF':>8}  decoding")
        for name, tr in shipped_models.items():
            rec = shipped_scores(name)
            n_params = sum(p.numel() for p in tr.model.parameters())
            shipped_table[name] = {**rec, "parameters": n_params}
            bleu = f"{rec['bleu']:>8.2f}" if "bleu" in rec else f"{'-':>8}"
            chrf = f"{rec['chrf']:>8.2f}" if "chrf" in rec else f"{'-':>8}"
            print_fn(f"{name + ' (shipped)':<22}{n_params / 1e6:>8.2f}M{bleu}{chrf}  {_decoding_label(rec)}")
    elif shipped:
        print_fn("\n(no shipped models in this installation: only the live-trained ones translate below)")

    pairs = [(s, None) for s in DEMO_SENTENCES] + _example_pairs(splits["test"], examples)
    sources = [de for de, _ in pairs]
    translated = {name: tr.translate(sources, beam=beam, max_len=max_len) for name, tr in translators.items()}
    for name, tr in shipped_models.items():
        translated[f"{name} (shipped)"] = tr.translate(sources, beam=shipped_beam, max_len=max_len)
    names = list(translated)
    print_fn("\n== held-out sentences")
    rows = []
    width = max(len(n) for n in (*names, "reference")) + 2
    for i, (de, ref) in enumerate(pairs):
        print_fn(f"{'German':<{width}}{de}")
        if ref is not None:
            print_fn(f"{'reference':<{width}}{ref}")
        for name in names:
            print_fn(f"{name:<{width}}{translated[name][i].text or '(empty)'}")
        print_fn("")
        rows.append((de, ref, {name: translated[name][i] for name in names}))

    report = _write_demo_report(out, runs, scores, rows, minutes, params, beam, tokenizer.vocab_size,
                                len(splits["train"]), shipped=shipped_table, shipped_beam=shipped_beam)
    print_fn(f"report with the alignments: {report}  ({time.monotonic() - t0:.0f} s in all)")
    return DemoResult(runs=runs, scores=scores, examples=rows, report=report, shipped=shipped_table)


def _write_demo_report(out: Path, runs, scores, rows, minutes, params, beam, vocab, n_train, *,
                       shipped: dict | None = None, shipped_beam: int = 4) -> Path:
    from .viz.report import Report

    names = list(runs)
    rep = Report(
        "attnlab translation demo: RNNsearch vs RNNenc",
        subtitle="German to English on everyday sentences of the Ding dictionary (Debian package trans-de-en)",
    )
    rep.paragraph(
        f"Both models were trained for {minutes:g} minutes of wall-clock time with the same parameter budget "
        f"(about {params / 1e6:.1f} M), on {n_train} sentence pairs with a joint BPE vocabulary of {vocab}, "
        f"using {_threads()} CPU thread(s). RNNenc (Cho et al. 2014) squeezes the whole source sentence into "
        "one vector; RNNsearch (Bahdanau et al. 2014) looks back at every source word through additive "
        "attention at every output step."
    )
    rep.heading("Test scores")
    rep.table(
        ["model", "parameters", "steps", "minutes", "BLEU", "chrF"],
        [
            [n, f"{runs[n].parameters / 1e6:.2f} M", runs[n].result.step, f"{runs[n].result.train_seconds / 60:.1f}",
             f"{scores[n]['bleu']:.2f}", f"{scores[n]['chrf']:.2f}"]
            for n in names
        ],
    )
    rep.paragraph(
        f"{scores[names[0]]['sentences']} test sentences, {'greedy decoding' if beam == 1 else f'beam {beam}'}; "
        f"sacreBLEU {scores[names[0]]['bleu_signature']}, {scores[names[0]]['chrf_signature']}."
    )
    if shipped:
        rep.heading("The shipped models")
        rep.paragraph(
            "attnlab ships models trained for hours on the combined German-English corpus (Ding sentences and "
            "dictionary entries, Debian package descriptions, gettext catalogs); `attnlab translate` uses them "
            f"by default. Their test scores were measured on the same test sentences when they were exported; "
            f"below they translate with beam {shipped_beam}."
        )
        rep.table(
            ["model", "parameters", "BLEU", "chrF", "decoding"],
            [[f"{n} (shipped)", f"{rec['parameters'] / 1e6:.2f} M",
              f"{rec['bleu']:.2f}" if "bleu" in rec else "-", f"{rec['chrf']:.2f}" if "chrf" in rec else "-",
              _decoding_label(rec)]
             for n, rec in shipped.items()],
        )
    names = list(rows[0][2]) if rows else names
    rep.heading("Held-out sentences")
    header = ["German", "reference"] + names
    rep.table(header, [[de, ref or "-"] + [t[n].text for n in names] for de, ref, t in rows])
    attn_names = [n for n in names if n.split(" (")[0] not in ATTENTION_FREE]
    if attn_names:
        rep.heading("Alignments")
        rep.paragraph(
            "Each row is one generated English piece, each column one German piece; a bright cell is where "
            "the model looked when it wrote that piece (its attention weights)."
        )
        for de, _, t in rows:
            for n in attn_names:
                tr = t[n]
                if tr.attention is None or tr.attention.shape[0] == 0:
                    continue
                fig = plot_alignment(tr, None, title=_title(f"{n}: {tr.text}"))
                rep.figure(fig, caption=f"{n}: {de} -> {tr.text}")
    rep.heading("Reproduce")
    rep.code(f"attnlab demo translate --out {out} --minutes {minutes:g}")
    return rep.save(out / "report.html")


def _title(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ----------------------------------------------------------------------------- CLI


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", default=DING_PATH,
                   help=f"Ding-format dictionary file (default {DING_PATH}, from the Debian package {DING_PACKAGE})")
    g.add_argument("--lenient", action="store_true",
                   help="also keep items with synonym lists (first synonym), ~8%% more pairs")
    g.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB, metavar="N",
                   help=f"joint BPE vocabulary size, learned on the training split (default {DEFAULT_VOCAB})")
    g.add_argument("--valid-size", type=positive_int, default=DataSettings.valid, metavar="N",
                   help=f"pairs held out for validation (default {DataSettings.valid})")
    g.add_argument("--test-size", type=positive_int, default=DataSettings.test, metavar="N",
                   help=f"pairs held out for the test scores (default {DataSettings.test})")
    g.add_argument("--sources", type=_sources_arg, default=DataSettings.sources, metavar="LIST",
                   help="comma-separated training sources, or 'all': " + ", ".join(CORPUS_SOURCES)
                   + " (default ding-sentences: the everyday sentences only; valid/test are always everyday sentences)")
    g.add_argument("--sentence-repeat", type=positive_int, default=DataSettings.sentence_repeat, metavar="N",
                   help="repeat the everyday training sentences N times among the other sources (default 1)")


def _sources_arg(text: str) -> tuple[str, ...]:
    names = CORPUS_SOURCES if text.strip() == "all" else tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in CORPUS_SOURCES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown source(s) {', '.join(unknown) or repr(text)}; valid: all, {', '.join(CORPUS_SOURCES)}"
        )
    if "ding-sentences" not in names:
        names = ("ding-sentences", *names)
    return names


def _add_training_arguments(p: argparse.ArgumentParser, *, minutes_help: str):
    g = p.add_argument_group("training")
    g.add_argument("--minutes", type=positive_float, metavar="M", help=minutes_help)
    g.add_argument("--batch-tokens", type=positive_int, default=TrainOptions.batch_tokens, metavar="N",
                   help=f"padded tokens per batch (default {TrainOptions.batch_tokens})")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 3e-3, 1e-3 for the transformer)")
    g.add_argument("--eval-every", type=positive_int, default=TrainOptions.eval_every, metavar="STEPS",
                   help=f"validate (greedy BLEU) and save last/ every this many steps (default {TrainOptions.eval_every})")
    g.add_argument("--valid-sentences", type=positive_int, default=TrainOptions.valid_sentences, metavar="N",
                   help=f"valid sentences decoded at each validation (default {TrainOptions.valid_sentences})")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the initial weights and data order")
    g.add_argument("--patience", type=positive_int, default=None, metavar="N",
                   help="stop early after N validations in a row without a better validation BLEU")
    g.add_argument("--quiet", action="store_true", help="no progress bar or validation lines")
    _add_threads_argument(g)
    return g


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train translate``, ``translate``, ``evaluate`` and ``demo translate`` to the CLI."""
    from .cli import command_group

    train = command_group(subparsers, "train", help="train a model: attnlab train TASK (see 'attnlab train --help')")
    p = train.add_parser(
        "translate",
        help="train a German-English translation model",
        description=(
            "Train a German->English translation model on the everyday sentences of the Ding dictionary.\n"
            "DIR receives run.json, tokenizer.json, last/ and best/ checkpoints and metrics.jsonl: everything\n"
            "`attnlab translate` and `attnlab evaluate` need. Ctrl-C saves last/; --resume continues exactly."
        ),
        epilog="example:\n  attnlab train translate --model rnnsearch --out runs/rnnsearch --minutes 10\n"
        "  attnlab train translate --out runs/rnnsearch --resume --minutes 20   # 10 more minutes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="rnnsearch (Bahdanau attention, default), rnnenc (one context vector), seq2seq (word by "
                        "word), luong (global/local attention), transformer")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR (model and data from its run.json)")
    p.add_argument("--init-from", metavar="CHECKPOINT", default=None,
                   help="start a new run from a trained model's weights (a run directory, its best/ or last/, or "
                        "a shipped model: transformer, rnnsearch); its tokenizer and sizes are reused, --dropout "
                        "and --set may change dropouts; optimizer, schedule and steps start afresh")
    g = _add_training_arguments(
        p, minutes_help=f"total training minutes, resumed runs included (default {DEFAULT_MINUTES:g} "
                        "when no --steps/--epochs)")
    g.add_argument("--steps", type=positive_int, help="total optimizer steps")
    g.add_argument("--epochs", type=positive_int, help="total passes over the training pairs")
    g.add_argument("--schedule", choices=("constant", "inverse_sqrt", "cosine"),
                   help="learning-rate schedule after the warmup (default constant)")
    g.add_argument("--warmup", type=nonnegative_int, metavar="STEPS",
                   help="linear warmup steps (default 50, 200 for the transformer)")
    g.add_argument("--label-smoothing", type=probability, default=TrainOptions.label_smoothing, metavar="EPS",
                   help=f"label smoothing epsilon (default {TrainOptions.label_smoothing:g}; 0.1 in Vaswani et al.)")
    add_precision_argument(g)
    s = p.add_argument_group("model size (default: the model's own defaults)")
    s.add_argument("--width", type=positive_int, help="embedding and hidden size (d_model for the transformer)")
    s.add_argument("--params", type=positive_int, metavar="N", help="parameter budget instead of --width")
    s.add_argument("--layers", type=positive_int, help="RNN layers / transformer encoder and decoder layers")
    s.add_argument("--heads", type=positive_int, help="attention heads (transformer)")
    s.add_argument("--dropout", type=probability, help="dropout probability")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other config field, e.g. --set readout=maxout, --set score=dot, --set mode=local-p")
    _add_data_arguments(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "translate",
        help="translate German sentences with a trained model, and draw the alignment",
        description="Translate German sentences with a model trained by `attnlab train translate`, and save the\n"
        "alignment heatmap (source pieces x generated pieces) of an attention model.",
        epilog='example:\n  attnlab translate --checkpoint runs/rnnsearch "Ich möchte dir helfen." --heatmap align.png',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sentences", nargs="+", metavar="SENTENCE", help="German text (quote each sentence)")
    p.add_argument("--checkpoint", metavar="DIR", type=Path, default=None,
                   help="run directory (uses best/, else last/), one checkpoint directory in it, or a shipped "
                        f"model: {', '.join(PRETRAINED)} (default: the shipped {next(iter(PRETRAINED))})")
    p.add_argument("--beam", type=positive_int, default=4, help="beam size (default 4; 1 is greedy)")
    add_length_penalty_argument(p)
    p.add_argument("--max-len", type=positive_int, metavar="N",
                   help="most output pieces per sentence (default 2 x source pieces + 10)")
    p.add_argument("--heatmap", metavar="PATH", type=Path,
                   help="save the alignment heatmap (PNG); with several sentences PATH gets -1, -2 ... suffixes")
    _add_threads_argument(p)
    p.set_defaults(func=run_translate)

    p = subparsers.add_parser(
        "evaluate",
        help="sacreBLEU BLEU and chrF of a trained translation model on the test split",
        description="Score a model trained by `attnlab train translate` on its held-out split with sacreBLEU.",
        epilog="example:\n  attnlab evaluate --checkpoint runs/rnnsearch --json scores.json --beam 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="DIR", type=Path, default=None,
                   help=f"run directory, or a shipped model: {', '.join(PRETRAINED)} "
                        f"(default: the shipped {next(iter(PRETRAINED))})")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="held-out split (default test)")
    p.add_argument("--beam", type=positive_int, default=None,
                   help="beam size (default: the beam a shipped model's recorded scores were measured with, "
                        "else 1, greedy)")
    add_length_penalty_argument(p)
    p.add_argument("--max-len", type=positive_int, metavar="N",
                   help="most output pieces per sentence (default 2 x source pieces + 10)")
    p.add_argument("--json", metavar="PATH", type=Path, help='write {"bleu": float, "chrf": float, "sentences": int}')
    p.add_argument("--hypotheses", metavar="PATH", type=Path, help="write the translations, one per line")
    _add_threads_argument(p)
    p.set_defaults(func=run_evaluate)

    export = command_group(subparsers, "export", help="write a trained model as a small inference-only directory")
    p = export.add_parser(
        "translate",
        help="export a translation run (best checkpoint, tokenizer, run.json) with half-precision weights",
        description="Write the best checkpoint of a translation run as an inference-only run directory\n"
        "(weights in --dtype, no optimizer state) that `attnlab translate --checkpoint OUT` loads.",
        epilog="example:\n  attnlab export translate --checkpoint runs/transformer --out models/transformer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="directory to write")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="weight precision (default float16: half the size, same translations to within rounding)")
    p.add_argument("--average", metavar="CKPT", type=Path, nargs="+",
                   help="export the mean of these checkpoints' weights (same run, e.g. the last few saved "
                        "last/ snapshots) instead of --checkpoint's own")
    p.add_argument("--evaluate", metavar="BEAM", type=positive_int,
                   help="score the exported weights on the test split with this beam and record the scores "
                        "(what `attnlab evaluate --checkpoint OUT` reproduces)")
    p.add_argument("--length-penalty", metavar="ALPHA", type=nonnegative_float, default=DEFAULT_LENGTH_PENALTY,
                   help="the GNMT length penalty alpha the exported model's beam search uses by default, for "
                        f"--evaluate too (default {DEFAULT_LENGTH_PENALTY})")
    p.add_argument("--scores", metavar="JSON", type=Path,
                   help="a JSON file of `attnlab evaluate --json` to record in the exported run.json")
    p.set_defaults(func=run_export)

    demo = command_group(subparsers, "demo", help="demonstrations that train, compare and report: attnlab demo TASK")
    p = demo.add_parser(
        "translate",
        help="train RNNsearch and RNNenc for a few minutes each, compare BLEU, write an HTML report",
        description="Train a small RNNsearch and an RNNenc with the same parameter budget and the same minutes,\n"
        "print their test BLEU side by side and a few held-out translations, and write OUT/report.html\n"
        "(self-contained, alignment images embedded). Re-running resumes the runs in OUT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--minutes", type=positive_float, default=6.0,
                   help="training minutes per model (default 6: with --jobs 2 the whole demo takes about 8 minutes)")
    p.add_argument("--params", type=positive_int, default=1_500_000, metavar="N",
                   help="parameter budget of each model (default 1500000)")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size for scoring (default 1: greedy)")
    p.add_argument("--examples", type=nonnegative_int, default=6, help="held-out test sentences to show (default 6)")
    p.add_argument("--jobs", type=positive_int, default=min(2, os.cpu_count() or 1), metavar="N",
                   help="models trained at the same time, one process each (default: 2 on a machine with 2+ cores)")
    _add_threads_argument(p)
    _add_data_arguments(p)
    p.set_defaults(func=run_demo_command)
    return p


def _data_settings(args) -> DataSettings:
    return DataSettings(path=str(args.data), strict=not args.lenient, valid=args.valid_size, test=args.test_size,
                        sources=getattr(args, "sources", DataSettings.sources),
                        sentence_repeat=getattr(args, "sentence_repeat", DataSettings.sentence_repeat))


def run_train(args: argparse.Namespace) -> int:
    """``attnlab train translate``."""
    limits_given = any(getattr(args, k) is not None for k in _LIMITS)
    minutes = args.minutes if limits_given else DEFAULT_MINUTES
    options = TrainOptions(
        minutes=minutes, steps=args.steps, epochs=args.epochs, batch_tokens=args.batch_tokens, lr=args.lr,
        schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing,
        eval_every=args.eval_every, valid_sentences=args.valid_sentences, seed=args.seed, quiet=args.quiet,
        patience=args.patience, precision=args.precision,
    )
    sizes = None
    size_flags = {k: getattr(args, k) for k in ("width", "params", "layers", "heads", "dropout")}
    if args.init_from is not None:
        given = [f"--{k}" for k in ("width", "params", "layers", "heads") if size_flags[k] is not None]
        if args.resume or given:
            raise ValueError(
                f"--init-from: {'a resumed run keeps its own start' if args.resume else ', '.join(given) + ' come from the checkpoint'}"
            )
        if _holds_run(args.out):
            raise FileExistsError(f"--out {args.out} already holds a training run; choose another directory")
        init_ckpt, args.model, sizes, tokenizer = init_from_checkpoint(
            args.init_from, args.model, dropout=args.dropout, overrides=args.overrides
        )
        data = _data_settings(args)
        _set_threads(args)
        run = train_translation(args.out, args.model, sizes=sizes, options=options, data=data,
                                vocab_size=tokenizer.vocab_size, splits=load_splits(data), tokenizer=tokenizer,
                                init_from=init_ckpt)
        return _report_training(args, run)
    if args.resume:
        given = [f"--{k}" for k, v in size_flags.items() if v is not None] + (["--set"] if args.overrides else [])
        if given:
            raise ValueError(f"{', '.join(given)}: a resumed run keeps its model; leave the size flags out")
    else:
        if args.model is None:
            args.model = "rnnsearch"
        # Validate the size flags with a stand-in vocabulary before the data is loaded.
        model_sizes(args.model, args.vocab_size, overrides=args.overrides, **size_flags)
        if _holds_run(args.out):
            raise FileExistsError(
                f"--out {args.out} already holds a training run; add --resume to continue it, or choose another directory"
            )
    data = _data_settings(args)
    _set_threads(args)
    tokenizer = None
    if not args.resume:
        splits = load_splits(data)
        tokenizer = train_tokenizer(splits["train"], args.vocab_size)
        sizes = model_sizes(args.model, tokenizer.vocab_size, overrides=args.overrides, **size_flags)
    else:
        splits = None
    run = train_translation(args.out, args.model, sizes=sizes, options=options, data=data, vocab_size=args.vocab_size,
                            resume=args.resume, splits=splits, tokenizer=tokenizer)
    return _report_training(args, run)


def _report_training(args: argparse.Namespace, run: TrainedRun) -> int:
    from .distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 speaks for the run
        return 130 if run.result.stop_reason == "interrupted" else 0
    print(_summary_line(run))
    if run.result.stop_reason == "interrupted":
        return 130
    print(f'next: attnlab translate --checkpoint {args.out} "Ich möchte dir helfen." --heatmap align.png')
    return 0


def _numbered(path: Path, i: int, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.png'}")


def run_translate(args: argparse.Namespace) -> int:
    """``attnlab translate``."""
    for i, s in enumerate(args.sentences):
        if not s.strip():
            which = "sentence is empty" if len(args.sentences) == 1 else f"sentence {i + 1} is empty"
            raise ValueError(f'{which}; give German text, e.g. attnlab translate --checkpoint DIR "Ich möchte dir helfen."')
    check_output_path(args.heatmap, "--heatmap")
    _set_threads(args)
    if args.checkpoint is None:
        args.checkpoint = _default_checkpoint()
    translator = Translator.load(args.checkpoint)
    results = translator.translate(args.sentences, beam=args.beam, max_len=args.max_len,
                                   length_penalty=args.length_penalty)
    for t in results:
        print(t.text)
    if args.heatmap is not None:
        if translator.name in ATTENTION_FREE or any(t.attention is None for t in results):
            raise ValueError(
                f"--heatmap: the {translator.name} model has no attention weights to draw (it reads one fixed "
                "context vector); use a model with attention: rnnsearch, luong or transformer"
            )
        for i, t in enumerate(results):
            if t.attention.shape[0] == 0:
                print(f"(no heatmap for sentence {i + 1}: its translation is empty)", file=sys.stderr)
                continue
            path = _numbered(args.heatmap, i, len(results))
            plot_alignment(t, path, title=_title(f"{translator.name}: {t.text}"))
            print(f"alignment heatmap saved to {path} (columns: German pieces, rows: English pieces)", file=sys.stderr)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``attnlab evaluate``."""
    check_output_path(args.json, "--json")
    check_output_path(args.hypotheses, "--hypotheses")
    if args.checkpoint is None:
        args.checkpoint = _default_checkpoint()
    ckpt_dir, run_dir = _resolve_checkpoint(args.checkpoint)
    record = read_run(run_dir)
    if args.beam is None:
        args.beam = int(recorded_scores(record).get("beam", 1))
    _set_threads(args)
    translator = Translator.load(args.checkpoint)
    splits = load_splits(DataSettings(**record["data"]), held_out_only=True)
    pairs = splits[args.split]
    scores = evaluate_translator(translator, pairs, beam=args.beam, max_len=args.max_len,
                                 length_penalty=args.length_penalty)
    alpha = translator.length_penalty if args.length_penalty is None else args.length_penalty
    print(f"{translator.name} ({ckpt_dir}) on {scores['sentences']} {args.split} sentences, "
          f"{'greedy' if args.beam == 1 else f'beam {args.beam}, length penalty {alpha:g}'}:")
    print(f"BLEU {scores['bleu']:.2f}  ({scores['bleu_signature']})")
    print(f"chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
    if args.json is not None:
        write_json_atomic({"bleu": float(scores["bleu"]), "chrf": float(scores["chrf"]),
                           "sentences": int(scores["sentences"])}, args.json)
    if args.hypotheses is not None:
        args.hypotheses.write_text("".join(h + "\n" for h in scores["hypotheses"]), encoding="utf-8")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``attnlab export translate``."""
    scores = None
    if args.scores is not None:
        try:
            scores = json.loads(Path(args.scores).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"--scores {args.scores}: not a readable JSON file ({exc})") from None
    if scores is not None and args.evaluate is not None:
        raise ValueError("give --scores or --evaluate, not both: --evaluate measures the scores it records")
    out = export_translator(args.checkpoint, args.out, dtype=args.dtype, scores=scores,
                            evaluate_beam=args.evaluate, average=args.average, length_penalty=args.length_penalty,
                            print_fn=print)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {args.checkpoint} to {out} ({size / 2**20:.1f} MiB, {args.dtype} weights)")
    rec = read_run(out)["exported"]["scores"]
    if rec:
        how = f", beam {rec['beam']}" if "beam" in rec else ""
        how += f", length penalty {rec['length_penalty']:g}" if "length_penalty" in rec else ""
        print(f"recorded test scores: BLEU {rec.get('bleu', float('nan')):.2f}  chrF {rec.get('chrf', float('nan')):.2f}{how}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """``attnlab demo translate``."""
    _set_threads(args)
    run_demo(args.out, minutes=args.minutes, params=args.params, vocab_size=args.vocab_size, beam=args.beam,
             examples=args.examples, data=_data_settings(args), jobs_at_once=args.jobs)
    return 0
