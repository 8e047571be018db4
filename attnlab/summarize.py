"""Abstractive summarization of Debian package descriptions: ``attnlab train summarize`` and
``attnlab summarize``.

    attnlab train summarize --model transformer --copy --out runs/sum-copy --minutes 8
    attnlab summarize --checkpoint runs/sum-copy "long description text ..."

The task: from a package's long description, write its one-line synopsis
(:mod:`attnlab.data.summarization`, about 58k training pairs from apt's
``Translation-en`` index). Models: the Transformer or RNNsearch of
:mod:`attnlab.models`, optionally with the pointer-generator copy mechanism
(:mod:`attnlab.models.pointer`, See et al. 2017) over the shared subword vocabulary.

A run directory holds ``run.json`` (``"task": "summarize"``, model, copy, config, data,
options), ``tokenizer.json``, ``last/`` and ``best/`` checkpoints (best validation
ROUGE-L), ``metrics.jsonl`` and, after training, ``test.json``: ROUGE-1/2/L F1 of the
best checkpoint on the test split next to the lead baseline's.

Training reuses the pieces of :mod:`attnlab.translate`: :class:`~attnlab.translate.TrainOptions`,
:func:`~attnlab.translate.model_sizes`, :func:`~attnlab.translate.decode_ids`, the batching of
:mod:`attnlab.data.de_en` and the :class:`~attnlab.train.loop.Trainer`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ._argtypes import add_precision_argument, autocast_of, nonnegative_int, positive_float, positive_int, probability
from ._io import write_json_atomic
from .translate import TrainOptions, _add_threads_argument, _set_threads

__all__ = ["RUN_FILE", "SUMMARY_MODELS", "SummaryData", "Summarizer", "load_summary_splits", "train_summarization",
           "evaluate_summarizer", "evaluate_aclsum", "register"]

RUN_FILE = "run.json"
TEST_FILE = "test.json"
SUMMARY_MODELS = ("transformer", "rnnsearch")
DEFAULT_VOCAB = 4000
DEFAULT_MAX_OUT = 32
LEAD_WORDS = 10
#: Sizes for minutes on a CPU: the synopses are short, the descriptions ~45 words.
DEFAULT_SIZES = {
    "transformer": {"d_model": 128, "ffn_dim": 512, "num_heads": 4, "num_encoder_layers": 2,
                    "num_decoder_layers": 2, "share_embeddings": True, "tie_embeddings": True},
    "rnnsearch": {"emb_size": 128, "enc_hidden": 128, "dec_hidden": 128, "attn_hidden": 128},
}
_TRAINING = {"transformer": {"lr": 1e-3, "schedule": "constant", "warmup": 200},
             "rnnsearch": {"lr": 3e-3, "schedule": "constant", "warmup": 50}}
_LIMITS = ("minutes", "steps", "epochs")


@dataclass(frozen=True)
class SummaryData:
    """Which pairs a run uses (saved in ``run.json``).

    Args:
        lists_dir: apt's lists folder holding ``*_i18n_Translation-en*``.
        min_words: descriptions shorter than this many words are dropped.
        valid, test, split_seed: the held-out splits (:func:`~attnlab.data.summarization.split_summary_pairs`).
        max_src_len: source subword tokens kept (longer descriptions are cut, eos kept last).
        max_tgt_len: synopsis tokens kept for training.
    """

    lists_dir: str = "/var/lib/apt/lists"
    min_words: int = 10
    valid: int = 1000
    test: int = 2000
    split_seed: int = 0
    max_src_len: int = 96
    max_tgt_len: int = 24

    def __post_init__(self):
        from ._checks import check_positive_int as check  # imports torch: not at module level (fast --help)

        for f in ("min_words", "valid", "test", "split_seed"):
            check(getattr(self, f), f, allow_zero=True)
        for f in ("max_src_len", "max_tgt_len"):
            check(getattr(self, f), f)


def load_summary_splits(data: SummaryData = SummaryData()) -> dict:
    """``{"train", "valid", "test"}`` :class:`~attnlab.data.summarization.SummaryPair` lists.

    With apt's own lists folder, fetches a missing ``Translation-en`` index first when it
    can (:func:`~attnlab.data.apt_descriptions.ensure_translation_indexes`).
    """
    from .data.apt_descriptions import APT_LISTS, ensure_translation_indexes, load_descriptions
    from .data.summarization import make_pairs, split_summary_pairs

    if Path(data.lists_dir) == APT_LISTS:
        ensure_translation_indexes(("en",), APT_LISTS)
    pairs = make_pairs(load_descriptions("en", data.lists_dir), data.min_words)
    return split_summary_pairs(pairs, valid=data.valid, test=data.test, seed=data.split_seed)


def _encode(pairs, tok, max_src: int, max_tgt: int | None) -> list[tuple[list[int], list[int]]]:
    """``(x[:max_src-1] + [eos], y[:max_tgt])`` id pairs: long descriptions are cut, never dropped."""
    src = tok.encode_batch([p.source for p in pairs], add_bos=False, add_eos=False)
    tgt = tok.encode_batch([p.summary for p in pairs], add_bos=False, add_eos=False)
    return [(s[: max_src - 1] + [tok.eos_id], t if max_tgt is None else t[:max_tgt]) for s, t in zip(src, tgt)]


def read_run(directory) -> dict:
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no summarization run ({RUN_FILE} missing); train one with "
                                f"`attnlab train summarize --out {directory}`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("task") != "summarize":
        raise ValueError(f"{path} was not written by `attnlab train summarize` (no \"task\": \"summarize\")")
    return record


def build_summary_model(name: str, config, copy: bool):
    """The registry model ``name`` for ``config``, wrapped in a pointer-generator when ``copy``."""
    from .models.pointer import PointerGenerator
    from .models.registry import model_from_config

    net = model_from_config(config)
    return PointerGenerator(net) if copy else net


class Summarizer:
    """A trained summarization model with its tokenizer: text in, synopsis out."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path) -> "Summarizer":
        """Load a run directory (``best/``, else ``last/``)."""
        from .data.tokenizer import SubwordTokenizer
        from .models.registry import build_config
        from .train.checkpoint import STATE_JSON, load_checkpoint

        run_dir = Path(path)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--checkpoint {path}: no such directory; train a model first with "
                                    f"`attnlab train summarize --out {path}`")
        record = read_run(run_dir)
        ckpt = next((run_dir / s for s in ("best", "last") if (run_dir / s / STATE_JSON).is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(f"--checkpoint {path}: no checkpoint inside (expected best/ or last/)")
        config = build_config(record["model"], **{k: v for k, v in record["config"].items() if k != "name"})
        model = build_summary_model(record["model"], config, record["copy"])
        load_checkpoint(ckpt, model, restore_rng=False)
        return cls(model, SubwordTokenizer.load(run_dir))

    def summarize(self, texts: Sequence[str], *, beam: int = 1, max_len: int = DEFAULT_MAX_OUT,
                  max_src_len: int = SummaryData.max_src_len) -> list[str]:
        """One synopsis per text (greedy for ``beam=1``)."""
        from .data.summarization import SummaryPair, description_text
        from .translate import decode_ids

        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            if not t.strip():
                raise ValueError(f"text {i + 1} is empty; give a package description to summarize")
        tok = self.tokenizer
        pairs = [SummaryPair("", "", description_text([t]), "") for t in texts]
        src_ids = [s for s, _ in _encode(pairs, tok, max_src_len, None)]
        out = decode_ids(self.model, src_ids, beam=beam, max_len=max_len, pad_id=tok.pad_id, bos_id=tok.bos_id,
                         eos_id=tok.eos_id)
        return [tok.decode(ids) for ids, _, _ in out]


def evaluate_summarizer(summarizer: Summarizer, pairs, *, beam: int = 1, max_src_len: int = SummaryData.max_src_len,
                        lead_words: int | None = LEAD_WORDS) -> dict:
    """ROUGE-1/2/L F1 of the model and of the lead baseline on ``pairs``."""
    from .data.summarization import lead_summary, rouge_scores

    if not pairs:
        raise ValueError("no pairs to evaluate on")
    hyps = summarizer.summarize([p.source for p in pairs], beam=beam, max_src_len=max_src_len)
    refs = [p.summary for p in pairs]
    result = {"model": rouge_scores(hyps, refs), "beam": beam, "examples": [
        {"package": p.package, "reference": p.summary, "hypothesis": h} for p, h in list(zip(pairs, hyps))[:10]]}
    if lead_words is not None:
        result["lead"] = {**rouge_scores([lead_summary(p.source, lead_words) for p in pairs], refs),
                          "words": lead_words}
    return result


def evaluate_aclsum(summarizer: Summarizer, *, beam: int = 1, max_src_len: int = SummaryData.max_src_len,
                    target: str = "title") -> dict | None:
    """ROUGE on the ACLSum test papers (abstract -> ``target``), or None when ``aclsum`` is not installed."""
    from .data.summarization import load_aclsum

    try:
        pairs = load_aclsum("test", target)
    except ImportError:
        return None
    return {**evaluate_summarizer(summarizer, pairs, beam=beam, max_src_len=max_src_len), "target": target}


def train_summarization(out, model: str | None = "transformer", *, copy: bool = False, sizes: dict | None = None,
                        options: TrainOptions = TrainOptions(minutes=8.0), data: SummaryData = SummaryData(),
                        vocab_size: int = DEFAULT_VOCAB, resume: bool = False, splits: dict | None = None,
                        test_beam: int = 1):
    """Train a summarizer into ``out`` and write ``out/test.json``; returns the trainer's result.

    ``resume=True`` continues the run in ``out`` (model, copy, data and options from its
    ``run.json``; only the limits of ``options`` are taken, as new totals).
    """
    import torch

    from .data.de_en import make_batches
    from .data.summarization import rouge_scores
    from .data.tokenizer import SubwordTokenizer
    from .models.registry import build_config, count_parameters
    from .train.loop import TrainConfig, Trainer, make_scheduler
    from .train.metrics import label_smoothed_cross_entropy

    out = Path(out)
    limits = {k: getattr(options, k) for k in _LIMITS}
    if all(v is None for v in limits.values()):
        raise ValueError("give a training limit: --minutes, --steps or --epochs")
    if resume:
        record = read_run(out)
        if model is not None and model != record["model"]:
            raise ValueError(f"--model {model}: the run in {out} trains {record['model']}; leave --model out to resume it")
        model, copy = record["model"], record["copy"]
        data = SummaryData(**record["data"])
        options = dataclasses.replace(TrainOptions(**record["train"]), **limits, quiet=options.quiet)
        tok = SubwordTokenizer.load(out)
        config = build_config(model, **{k: v for k, v in record["config"].items() if k != "name"})
        splits = splits or load_summary_splits(data)
    else:
        if any((out / n).exists() for n in (RUN_FILE, "last", "best")):
            raise FileExistsError(f"--out {out} already holds a training run; add --resume to continue it, "
                                  "or choose another directory")
        if model not in SUMMARY_MODELS:
            raise ValueError(f"unknown model {model!r}; valid models: {', '.join(SUMMARY_MODELS)}")
        splits = splits or load_summary_splits(data)
        if not splits["train"]:
            raise ValueError("the training split is empty; nothing to learn a vocabulary from")
        tok = SubwordTokenizer.train([s for p in splits["train"] for s in (p.source, p.summary)], vocab_size=vocab_size)
        fields = {**DEFAULT_SIZES[model], **(sizes or {})}
        fields.update(src_vocab=tok.vocab_size, tgt_vocab=tok.vocab_size, pad_id=tok.pad_id)
        config = build_config(model, **fields)
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out)
    torch.manual_seed(options.seed)
    net = build_summary_model(model, config, copy)
    record = {"task": "summarize", "model": model, "copy": copy, "config": dataclasses.asdict(config),
              "parameters": count_parameters(net), "vocab_size": tok.vocab_size, "data": dataclasses.asdict(data),
              "train": dataclasses.asdict(options), "train_pairs": len(splits["train"]),
              "threads": torch.get_num_threads()}
    write_json_atomic(record, out / RUN_FILE)

    pad = tok.pad_id
    train_ids = _encode(splits["train"], tok, data.max_src_len, data.max_tgt_len)
    valid_pairs = list(splits["valid"])[: options.valid_sentences]
    summarizer = Summarizer(net, tok)

    def batches(epoch: int, seed: int):
        return make_batches(train_ids, batch_tokens=options.batch_tokens, shuffle=True, seed=seed * 1_000_003 + epoch,
                            pad_id=pad, bos_id=tok.bos_id, eos_id=tok.eos_id)

    def loss_fn(m, batch):
        # The copy model returns log-probabilities; log_softmax inside the loss leaves them as they are.
        logits = m(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)
        loss = label_smoothed_cross_entropy(logits, batch.tgt_out, smoothing=options.label_smoothing, ignore_index=pad)
        return loss, int((batch.tgt_out != pad).sum())

    def validate() -> dict:
        if not valid_pairs:
            return {"rougeL": 0.0}
        hyps = summarizer.summarize([p.source for p in valid_pairs], max_src_len=data.max_src_len)
        scores = rouge_scores(hyps, [p.summary for p in valid_pairs])
        return {t: scores[t] for t in ("rouge1", "rouge2", "rougeL")}

    defaults = _TRAINING[model]
    schedule = options.schedule or defaults["schedule"]
    warmup = defaults["warmup"] if options.warmup is None else options.warmup
    optimizer = torch.optim.Adam(net.parameters(), lr=defaults["lr"] if options.lr is None else options.lr)
    sched_kwargs = {"warmup_steps": max(1, warmup) if schedule == "inverse_sqrt" else warmup}
    if schedule == "cosine":
        if options.steps is None:
            raise ValueError("--schedule cosine needs --steps (the length of its decay)")
        sched_kwargs["total_steps"] = options.steps
    scheduler = make_scheduler(optimizer, schedule, **sched_kwargs)
    train_config = TrainConfig(
        max_steps=options.steps, max_epochs=options.epochs, max_minutes=options.minutes, grad_clip=options.grad_clip,
        log_every=min(50, options.eval_every), eval_every=options.eval_every, checkpoint_every=options.eval_every,
        select_metric="rougeL", higher_is_better=True, patience=options.patience, seed=options.seed, unit="tok",
        quiet=options.quiet, autocast=autocast_of(options.precision),
    )
    trainer = Trainer(net, optimizer, loss_fn, batches, out, train_config, scheduler=scheduler, validate=validate,
                      model_config=config, resume_hint=f"attnlab train summarize --out {out} --resume")
    result = trainer.fit(resume=resume)
    if result.stop_reason != "interrupted":
        best = Summarizer.load(out)
        scores = evaluate_summarizer(best, splits["test"], beam=test_beam, max_src_len=data.max_src_len)
        scores.update(model_name=model, copy=copy, steps=result.step, train_seconds=result.train_seconds,
                      best_step=result.best_step, parameters=record["parameters"])
        aclsum = evaluate_aclsum(best, beam=test_beam, max_src_len=data.max_src_len)
        if aclsum is not None:
            scores["aclsum"] = aclsum
        write_json_atomic(scores, out / TEST_FILE)
    return result


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train summarize`` and ``summarize`` to the CLI."""
    from .cli import command_group

    train = command_group(subparsers, "train", help="train a model: attnlab train TASK (see 'attnlab train --help')")
    p = train.add_parser(
        "summarize",
        help="train a summarizer: Debian package description -> one-line synopsis",
        description="Train a model that writes a Debian package's one-line synopsis from its long description\n"
        "(apt's Translation-en index). DIR receives run.json, tokenizer.json, last/ and best/ (best validation\n"
        "ROUGE-L), metrics.jsonl and test.json (test ROUGE-1/2/L F1 next to the lead baseline).\n"
        "Ctrl-C saves last/; --resume continues exactly.",
        epilog="example:\n  attnlab train summarize --model transformer --copy --out runs/sum-copy --minutes 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=SUMMARY_MODELS, default=None, help="transformer (default) or rnnsearch")
    p.add_argument("--copy", action="store_true", help="add the pointer-generator copy mechanism (See et al. 2017)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR")
    g = p.add_argument_group("training")
    g.add_argument("--minutes", type=positive_float, metavar="M", help="total training minutes (default 8 when no "
                   "--steps/--epochs)")
    g.add_argument("--steps", type=positive_int, help="total optimizer steps")
    g.add_argument("--epochs", type=positive_int, help="total passes over the training pairs")
    g.add_argument("--batch-tokens", type=positive_int, default=2000, metavar="N",
                   help="padded tokens per batch (default 2000)")
    g.add_argument("--lr", type=positive_float, help="Adam learning rate (default 1e-3 transformer, 3e-3 rnnsearch)")
    g.add_argument("--warmup", type=nonnegative_int, metavar="STEPS",
                   help="linear learning-rate warmup steps (default 200 transformer, 50 rnnsearch)")
    g.add_argument("--label-smoothing", type=probability, default=0.0, metavar="EPS", help="default 0")
    add_precision_argument(g)
    g.add_argument("--eval-every", type=positive_int, default=300, metavar="STEPS",
                   help="validate (greedy ROUGE) and save last/ every this many steps (default 300)")
    g.add_argument("--valid-sentences", type=positive_int, default=300, metavar="N",
                   help="valid descriptions summarized at each validation (default 300)")
    g.add_argument("--seed", type=nonnegative_int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bar or validation lines")
    g.add_argument("--test-beam", type=positive_int, default=1, help="beam size for the final test ROUGE (default 1)")
    _add_threads_argument(g)
    s = p.add_argument_group("model and data")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a model config field, e.g. --set d_model=256 (transformer) or --set enc_hidden=256")
    s.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB, metavar="N",
                   help=f"BPE vocabulary size shared by descriptions and synopses (default {DEFAULT_VOCAB})")
    s.add_argument("--lists-dir", type=Path, default=Path(SummaryData.lists_dir), metavar="DIR",
                   help="apt lists folder with *_i18n_Translation-en* (default /var/lib/apt/lists)")
    s.add_argument("--min-words", type=nonnegative_int, default=SummaryData.min_words, metavar="N",
                   help=f"drop descriptions shorter than N words (default {SummaryData.min_words})")
    s.add_argument("--valid-size", type=positive_int, default=SummaryData.valid, metavar="N")
    s.add_argument("--test-size", type=positive_int, default=SummaryData.test, metavar="N")
    s.add_argument("--max-src-len", type=positive_int, default=SummaryData.max_src_len, metavar="N",
                   help=f"source subword tokens kept (default {SummaryData.max_src_len})")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "summarize",
        help="write a one-line synopsis of a package description with a trained model",
        description="Summarize text with a model trained by `attnlab train summarize`.",
        epilog='example:\n  attnlab summarize --checkpoint runs/sum-copy "A tool to convert images between formats. ..."',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("texts", nargs="+", metavar="TEXT", help="long description(s) (quote each)")
    p.add_argument("--checkpoint", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--max-len", type=positive_int, default=DEFAULT_MAX_OUT, metavar="N",
                   help=f"most output pieces (default {DEFAULT_MAX_OUT})")
    _add_threads_argument(p)
    p.set_defaults(func=run_summarize)
    return p


def _sizes(model: str, overrides: Sequence[str]) -> dict:
    from .translate import _parse_field_value
    from .models.registry import MODELS

    fields = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set d_model=256")
        fields[key.strip()] = _parse_field_value(MODELS[model][0], key.strip(), text.strip())
    return fields


def run_train(args: argparse.Namespace) -> int:
    """``attnlab train summarize``."""
    limits_given = any(getattr(args, k) is not None for k in _LIMITS)
    options = TrainOptions(minutes=args.minutes if limits_given else 8.0, steps=args.steps, epochs=args.epochs,
                           batch_tokens=args.batch_tokens, lr=args.lr, warmup=args.warmup,
                           label_smoothing=args.label_smoothing,
                           eval_every=args.eval_every, valid_sentences=args.valid_sentences, seed=args.seed,
                           quiet=args.quiet, precision=args.precision)
    if args.resume:
        if args.overrides or args.copy:
            raise ValueError("--set/--copy: a resumed run keeps its model; leave them out")
        sizes = None
    else:
        args.model = args.model or "transformer"
        sizes = _sizes(args.model, args.overrides)
    data = SummaryData(lists_dir=str(args.lists_dir), min_words=args.min_words, valid=args.valid_size,
                       test=args.test_size, max_src_len=args.max_src_len)
    _set_threads(args)
    result = train_summarization(args.out, args.model, copy=args.copy, sizes=sizes, options=options, data=data,
                                 vocab_size=args.vocab_size, resume=args.resume, test_beam=args.test_beam)
    if result.stop_reason == "interrupted":
        return 130
    scores = json.loads((Path(args.out) / TEST_FILE).read_text(encoding="utf-8"))
    m, lead = scores["model"], scores.get("lead", {})
    print(f"test ROUGE-1/2/L F1: model {m['rouge1']:.1f}/{m['rouge2']:.1f}/{m['rougeL']:.1f}"
          + (f", lead-{lead['words']} {lead['rouge1']:.1f}/{lead['rouge2']:.1f}/{lead['rougeL']:.1f}" if lead else "")
          + f" ({m['n']} pairs; {Path(args.out) / TEST_FILE})")
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    """``attnlab summarize``."""
    _set_threads(args)
    summarizer = Summarizer.load(args.checkpoint)
    for line in summarizer.summarize(args.texts, beam=args.beam, max_len=args.max_len):
        print(line)
    sys.stdout.flush()
    return 0
