"""Evaluation metrics and the training loss.

BLEU and chrF come from sacrebleu (Post, 2018, "A Call for Clarity in Reporting BLEU
Scores"), each with its signature string, which says exactly how the score was computed
(tokenizer, casing, smoothing, version) and belongs next to every reported number.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_probability, check_tensor, fmt_shape

__all__ = [
    "REDUCTIONS",
    "Score",
    "corpus_bleu",
    "corpus_chrf",
    "label_smoothed_cross_entropy",
    "perplexity",
    "token_accuracy",
]


class Score(NamedTuple):
    """A corpus score (0-100) and sacrebleu's signature, e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``."""

    score: float
    signature: str


def _reference_streams(hypotheses, references) -> list[list[str]]:
    """``references[i]`` (a string, or a list of strings) belongs to ``hypotheses[i]``;
    sacrebleu wants the transpose: one list per reference set ("stream")."""
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise TypeError(
            f"hypotheses must be a list of strings, one per sentence, got {type(hypotheses).__name__}"
        )
    if not hypotheses:
        raise ValueError("hypotheses is empty; need at least one sentence")
    bad = next((i for i, h in enumerate(hypotheses) if not isinstance(h, str)), None)
    if bad is not None:
        raise TypeError(f"hypotheses[{bad}] must be a string (detokenized text), got {type(hypotheses[bad]).__name__}")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(
            "references must be a list with one entry per hypothesis (a string, or a list of strings "
            f"for several references), got {type(references).__name__}"
        )
    if len(references) != len(hypotheses):
        raise ValueError(
            f"references has {len(references)} entries but hypotheses has {len(hypotheses)}; "
            "give one reference (or one list of references) per hypothesis"
        )
    per_sentence = [[r] if isinstance(r, str) else list(r) for r in references]
    n = len(per_sentence[0])
    for i, refs in enumerate(per_sentence):
        if len(refs) != n or n == 0 or not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f"references[{i}] must be a string or a list of {n or 'at least 1'} strings like references[0]; "
                f"got {refs!r}"
            )
    return [list(stream) for stream in zip(*per_sentence)]


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence, *, tokenize: str = "13a", lowercase: bool = False
) -> Score:
    """Corpus BLEU (Papineni et al., 2002) with sacrebleu's defaults.

    ``BLEU = BP * exp(sum_n 1/4 log p_n)``, ``p_n`` the clipped n-gram precisions (n = 1..4)
    summed over the corpus, ``BP = min(1, exp(1 - r / c))`` for reference/hypothesis
    lengths ``r``, ``c``.

    Args:
        hypotheses: detokenized system outputs, one string per sentence.
        references: ``references[i]`` is the reference of ``hypotheses[i]`` (a string) or
            its references (a list of strings, the same number for every sentence).
        tokenize: sacrebleu tokenizer ("13a", "intl", "none", ...).
    Returns:
        :class:`Score` ``(score in [0, 100], signature)``.
    """
    from sacrebleu.metrics import BLEU

    streams = _reference_streams(hypotheses, references)
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    return Score(float(metric.corpus_score(list(hypotheses), streams).score), str(metric.get_signature()))


def corpus_chrf(
    hypotheses: Sequence[str], references: Sequence, *, word_order: int = 0, lowercase: bool = False
) -> Score:
    """Corpus chrF (Popovic, 2015): character n-gram (n = 1..6) F-score with beta = 2;
    ``word_order=2`` gives chrF++ (Popovic, 2017), adding word uni- and bigrams.
    Arguments as in :func:`corpus_bleu`; returns ``(score in [0, 100], signature)``."""
    from sacrebleu.metrics import CHRF

    if word_order not in (0, 1, 2):
        raise ValueError(f"word_order must be 0 (chrF), 1 or 2 (chrF++), got {word_order!r}")
    streams = _reference_streams(hypotheses, references)
    metric = CHRF(word_order=word_order, lowercase=lowercase)
    return Score(float(metric.corpus_score(list(hypotheses), streams).score), str(metric.get_signature()))


def _check_logits_target(logits, target) -> None:
    check_tensor(logits, "logits", min_ndim=1)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target of shape {fmt_shape(target.shape)} must match logits of shape {fmt_shape(logits.shape)} "
            "without its last (vocabulary) dimension"
        )


def token_accuracy(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None) -> float:
    """Fraction of positions whose argmax prediction equals the target.

    Shape:
        logits (..., V), target (...) integer. Positions where ``target == ignore_index``
        (padding) are left out. Returns NaN when no position is left.
    """
    _check_logits_target(logits, target)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    total = int(keep.sum())
    if total == 0:
        return float("nan")
    correct = int(((logits.argmax(dim=-1) == target) & keep).sum())
    return correct / total


def perplexity(mean_nll) -> float:
    """``exp(mean NLL)`` for a mean negative log-likelihood in nats per token; ``inf``
    when it overflows."""
    if isinstance(mean_nll, torch.Tensor):
        if mean_nll.numel() != 1:
            raise ValueError(f"mean_nll must be a single number, got a tensor of shape {fmt_shape(mean_nll.shape)}")
        mean_nll = mean_nll.item()
    if isinstance(mean_nll, bool) or not isinstance(mean_nll, (int, float)):
        raise TypeError(f"mean_nll must be a number, got {type(mean_nll).__name__}")
    if mean_nll < 0:
        raise ValueError(f"mean_nll must be >= 0 (a negative log-likelihood in nats), got {mean_nll}")
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


#: Valid ``reduction`` values of :func:`label_smoothed_cross_entropy`.
REDUCTIONS = ("mean", "sum", "none")


def label_smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross entropy against a smoothed target (Szegedy et al., 2016; used by Vaswani
    et al., 2017 with ``smoothing = 0.1``):

        loss_i = (1 - eps) * (-log p(y_i)) + eps * mean_k(-log p(k))

    i.e. the target distribution puts ``1 - eps + eps / V`` on the gold token and
    ``eps / V`` on every other one. This is torch's built-in ``label_smoothing`` of
    ``F.cross_entropy`` (computed in float32 at least, for bf16 logits).

    Args:
        smoothing: eps in [0, 1); 0 gives the plain NLL (use that for perplexity).
        ignore_index: target value that contributes nothing (pass the padding id).
        reduction: "mean" over the positions not ignored, "sum", or "none" (shape of target,
            zeros at ignored positions).
    Shape:
        logits (..., V), target (...) integer.
    """
    _check_logits_target(logits, target)
    smoothing = check_probability(smoothing, "smoothing")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid reductions: {', '.join(REDUCTIONS)}")
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)  # (N, V)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        flat_logits = flat_logits.float()
    loss = F.cross_entropy(
        flat_logits,
        target.reshape(-1).long(),  # (N,)
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction=reduction,
    )
    return loss.reshape(target.shape) if reduction == "none" else loss
