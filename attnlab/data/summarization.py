"""Summarization data: Debian package descriptions and their one-line synopses.

Every Debian package description pairs a long text with a one-line synopsis written by
its maintainer for that text (``Description-en``, read by
:mod:`attnlab.data.apt_descriptions`): a small, real, offline abstractive summarization
set of about 60k pairs (one per distinct description)::

    source:  0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
             real-time strategy (RTS) game of ancient warfare. ... This package contains
             the main data files required by 0 A.D.
    summary: Real-time strategy game of ancient warfare (data files)

Split. Packages built from one source often share their first paragraph and differ
only in a line ("This package contains the documentation"); a split by single
description would put near-copies of a test text in the training set. So descriptions
are grouped by their first paragraph, groups are ranked by a keyed hash of it (stable
when packages are added) and taken in rank order for test, then valid; the few
boilerplate paragraphs shared by more than ``max_group`` descriptions stay in train.

A second, out-of-domain test set: ACLSum (Takeshita et al. 2024, PyPI ``aclsum``), 100
ACL papers per test split; :func:`load_aclsum` pairs each abstract with its title (the
closest thing to a one-line synopsis) or with one of its aspect summaries.

Metric: ROUGE-1/2/L F1 (Lin 2004) of the ``rouge-score`` package (Porter stemming),
as percentages; the lead baseline is the first sentence of the description, cut to
``k`` words.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .._checks import check_positive_int

__all__ = [
    "SummaryPair",
    "description_text",
    "make_pairs",
    "split_summary_pairs",
    "lead_summary",
    "rouge_scores",
    "ROUGE_TYPES",
    "ACLSUM_TARGETS",
    "load_aclsum",
]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_SPACES = re.compile(r"\s+")
# A sentence ends at . ! ? followed by a space and an upper-case letter or digit, so that
# "e.g. the", "v2.0" and "A.D. (pronounced" do not end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


@dataclass(frozen=True)
class SummaryPair:
    """One description: ``source`` the long text on one line, ``summary`` its synopsis."""

    md5: str
    package: str
    source: str
    summary: str


def description_text(paragraphs: Sequence[str]) -> str:
    """The long description as one line: paragraphs and verbatim lines joined by spaces."""
    return _SPACES.sub(" ", " ".join(paragraphs)).strip()


def make_pairs(descriptions: Mapping[str, "object"], min_words: int = 10) -> list[SummaryPair]:
    """(long text, synopsis) pairs from :func:`~attnlab.data.apt_descriptions.load_descriptions`.

    Drops descriptions whose synopsis is empty or whose long text has fewer than
    ``min_words`` words, and exact repeats of a (text, synopsis) pair. Keeps input order.
    """
    check_positive_int(min_words, "min_words", allow_zero=True)
    seen: set[tuple[str, str]] = set()
    out = []
    for md5, d in descriptions.items():
        summary = _SPACES.sub(" ", d.short).strip()
        source = description_text(d.paragraphs)
        if not summary or len(source.split()) < min_words or (source, summary) in seen:
            continue
        seen.add((source, summary))
        out.append(SummaryPair(md5, d.package, source, summary))
    return out


def _rank(key: str, seed: int) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16, key=str(seed).encode()).digest()


def split_summary_pairs(
    pairs: Sequence[SummaryPair],
    valid: int = 1000,
    test: int = 2000,
    seed: int = 0,
    max_group: int = 20,
    group_key=None,
) -> dict[str, list[SummaryPair]]:
    """Deterministic train/valid/test split with descriptions grouped by their first sentence block.

    Args:
        pairs: from :func:`make_pairs`.
        valid, test: pairs wanted in each held-out split (a group is never cut, so a
            split may hold a few more).
        seed: mixed into the hash; another seed gives another stable split.
        max_group: groups larger than this (boilerplate shared by many packages) stay in train.
        group_key: ``pair -> str`` (default: the first 200 characters of the source,
            i.e. about its first paragraph).

    Returns:
        ``{"train", "valid", "test"}``, each in input order.
    """
    check_positive_int(valid, "valid", allow_zero=True)
    check_positive_int(test, "test", allow_zero=True)
    check_positive_int(max_group, "max_group")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    pairs = list(pairs)
    if valid + test > len(pairs):
        raise ValueError(f"valid + test ({valid} + {test}) must not exceed the {len(pairs)} pairs")
    key = group_key or (lambda p: p.source[:200])
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(key(p), []).append(i)
    ranked = sorted((k for k, members in groups.items() if len(members) <= max_group), key=lambda k: _rank(k, seed))
    where = ["train"] * len(pairs)
    counts = {"test": 0, "valid": 0}
    for k in ranked:
        split = "test" if counts["test"] < test else "valid" if counts["valid"] < valid else None
        if split is None:
            break
        for i in groups[k]:
            where[i] = split
        counts[split] += len(groups[k])
    if counts["test"] < test or counts["valid"] < valid:
        raise ValueError(f"only {counts['test']} test and {counts['valid']} valid pairs outside the groups larger "
                         f"than max_group={max_group}; ask for fewer")
    out: dict[str, list[SummaryPair]] = {"train": [], "valid": [], "test": []}
    for p, split in zip(pairs, where):
        out[split].append(p)
    return out


def lead_summary(text: str, words: int | None = 10) -> str:
    """The lead baseline: the first sentence of ``text``, cut to its first ``words`` words
    (``None``: the whole sentence)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if words is not None:
        check_positive_int(words, "words")
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    tokens = first.split()
    return " ".join(tokens if words is None else tokens[:words]).rstrip(".,;:")


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str], *, stemmer: bool = True) -> dict:
    """Mean ROUGE-1/2/L F1 (x100) of ``rouge-score`` over the pairs (Lin 2004).

    Returns ``{"rouge1", "rouge2", "rougeL", "n"}``.
    """
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("ROUGE needs the rouge-score package: pip install rouge-score==0.1.2") from None
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses and references must have the same length, got {len(hypotheses)} and "
                         f"{len(references)}")
    if not hypotheses:
        raise ValueError("hypotheses is empty; nothing to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for h, r in zip(hypotheses, references):
        s = scorer.score(r, h)  # (target, prediction)
        for t in ROUGE_TYPES:
            totals[t] += s[t].fmeasure
    n = len(hypotheses)
    return {**{t: 100.0 * v / n for t, v in totals.items()}, "n": n}


#: What an ACLSum abstract can be paired with: the paper's title, or an aspect summary.
ACLSUM_TARGETS = ("title", "challenge", "approach", "outcome")
_DETOK = re.compile(r" ([,.;:!?)\]])|([(\[]) ")


def load_aclsum(split: str = "test", target: str = "title") -> list[SummaryPair]:
    """ACLSum papers as ``(abstract, target)`` pairs (needs ``pip install aclsum==0.1.2``).

    Args:
        split: "train", "val" or "test" (100, 50, 100 papers).
        target: a name of :data:`ACLSUM_TARGETS`.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of train, val, test, got {split!r}")
    if target not in ACLSUM_TARGETS:
        raise ValueError(f"unknown target {target!r}; valid targets: {', '.join(ACLSUM_TARGETS)}")
    try:
        from aclsum import ACLSum
    except ImportError:
        raise ImportError("the ACLSum test set needs the aclsum package: pip install aclsum==0.1.2") from None
    out = []
    for doc in ACLSum(split).documents:
        # The sentences are space-tokenized ("terms ."): undo that around punctuation.
        source = _DETOK.sub(lambda m: m.group(1) or m.group(2), " ".join(doc.sentences["abstract"]))
        summary = doc.title if target == "title" else doc.summaries[target]
        out.append(SummaryPair(doc.id, doc.id, _SPACES.sub(" ", source).strip(), _SPACES.sub(" ", summary).strip()))
    return out
