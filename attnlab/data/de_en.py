"""German-English sentence pairs from the Ding dictionary, split and batched for seq2seq.

Source: the Debian package ``trans-de-en`` (the TU Chemnitz "Ding" dictionary by Frank
Richter, GPL-2+), one file at ``/usr/share/trans/de-en``. Each line reads
``German side :: English side``; ``#`` starts a comment. Each side is a ``' | '``
separated list of items aligned by position (headword first, then inflections, phrases
and example sentences); inside an item ``;`` separates synonyms; ``{n}``, ``{vt}``
(grammar), ``[coll.]``, ``[Br.]`` (usage), ``(...)`` (optional words, glosses) and
``<...>`` (hidden search keys) annotate it.

:func:`load_pairs` keeps the items that are everyday sentences on both sides. Filters, in
order, with the pairs left after each on the 2023-01-30 file (206,233 entries), as
:func:`load_pairs_with_counts` reports them::

    step             what                                                   strict  lenient
    aligned          items zipped by position over ' :: ' and ' | '         391763   391763
    no_grammar       strict only: drop items with {...} (dictionary         118938   391763
                     entries: headwords, inflections, phrase templates)
    has_punct        both raw items contain '.', '?' or '!' (a cheap         25958    45071
                     precondition of `sentence`: cleaning never adds them)
    clean            clean_item() both sides (brackets, whitespace, ’);      25958    45071
                     drop items whose brackets do not balance
    no_synonyms      strict: drop items with a ';' synonym list;             22758    45071
                     lenient: keep the first synonym of each side
    sentence         both sides end with '.', '?' or '!'                     19034    21007
    no_templates     no placeholder etw. jdm. jdn. jds. jd. sth. sb.,        18888    20749
                     no final usw./etc.
    min_words        at least 3 words on each side                           18409    19903
    unique           exact duplicate pairs removed (first kept)              18399    19888

Strict pairs average 7.8 German and 8.1 English words. About 13% still hold ``/``
alternatives (``This/That needs character.``), left as they are. Brackets inside sentences
mostly hold optional words (``Das wundert mich (nicht).`` / ``I'm (not) surprised.``);
dropping them on both sides keeps the pair a translation.

:func:`split_pairs` assigns pairs to test/valid/train by a keyed hash, never by a
shuffle; :func:`encode_pairs` and :func:`make_batches` turn pairs into padded,
length-bucketed :class:`Batch` tensors for the seq2seq models.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch

from attnlab._checks import check_positive_int
from attnlab.data.debian import ensure_debian_package

__all__ = [
    "DEFAULT_PATH",
    "PACKAGE",
    "Batch",
    "clean_item",
    "load_pairs",
    "load_pairs_with_counts",
    "split_pairs",
    "pair_stats",
    "encode_pairs",
    "make_batches",
    "padding_fraction",
]

PACKAGE = "trans-de-en"
DEFAULT_PATH = "/usr/share/trans/de-en"

Pair = tuple[str, str]
IdPair = tuple[list[int], list[int]]

_GROUP = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|<[^<>]*>|\([^()]*\)")  # innermost bracket group
_BRACKET = re.compile(r"[{}\[\]()<>]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")
_SENTENCE_END = (".", "?", "!")
# The dictionary's argument placeholders: "etw. tun" / "to do sth." are templates, not sentences.
# An item ending in "usw."/"etc." is a pattern too ("Arbeiten mit Firefox/Linux usw.").
_PLACEHOLDER = re.compile(r"(?<!\w)(?:etw|jdm|jdn|jds|jd|sth|sb)\.|(?<!\w)(?:usw|etc)\.$")
_MIN_WORDS = 3


class Batch(NamedTuple):
    """One padded batch of sentence pairs (padding uses ``pad_id``).

    Shape:
        src: (B, S) long, source ids ``x + [eos]``, right-padded.
        src_lengths: (B,) long, unpadded source lengths (eos included).
        tgt_in: (B, T) long, decoder input ``[bos] + y``.
        tgt_out: (B, T) long, decoder target ``y + [eos]`` (pad positions carry no loss).
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


# --------------------------------------------------------------------------- loading


def clean_item(text: str) -> str:
    """One dictionary item as plain text: annotation groups removed, whitespace normalized.

    Removes every ``{...}``, ``[...]``, ``<...>`` and ``(...)`` group (innermost first, so
    nesting works), applies NFC, maps the typographic apostrophe ``’`` to ``'`` (the file
    mixes both), collapses whitespace and removes spaces before ``. , ! ? ; :`` that a
    removed group leaves behind. Unbalanced brackets are left in place.
    """
    s = unicodedata.normalize("NFC", text).replace("\u2019", "'")
    while True:
        t = _GROUP.sub(" ", s)
        if t == s:
            break
        s = t
    s = " ".join(s.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", s)


def _aligned_items(lines: Iterable[str]) -> Iterator[Pair]:
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sides = line.split(" :: ")
        if len(sides) != 2:
            continue  # not an entry (none in the 2023 file)
        de_items, en_items = sides[0].split(" | "), sides[1].split(" | ")
        if len(de_items) != len(en_items):
            continue  # misaligned entry (none in the 2023 file)
        yield from zip(de_items, en_items)


def _has_end_punct(text: str) -> bool:
    return "." in text or "?" in text or "!" in text


def _filter(lines: Iterable[str], strict: bool) -> tuple[list[Pair], "OrderedDict[str, int]"]:
    counts: OrderedDict[str, int] = OrderedDict()
    pairs = list(_aligned_items(lines))
    counts["aligned"] = len(pairs)
    if strict:
        pairs = [(d, e) for d, e in pairs if "{" not in d and "{" not in e]
    counts["no_grammar"] = len(pairs)
    # Cleaning never adds end punctuation, so items without any cannot pass `sentence`;
    # dropping them first saves cleaning ~90% of the file.
    pairs = [(d, e) for d, e in pairs if _has_end_punct(d) and _has_end_punct(e)]
    counts["has_punct"] = len(pairs)
    pairs = [(clean_item(d), clean_item(e)) for d, e in pairs]
    pairs = [(d, e) for d, e in pairs if not _BRACKET.search(d) and not _BRACKET.search(e)]
    counts["clean"] = len(pairs)
    if strict:
        pairs = [(d, e) for d, e in pairs if ";" not in d and ";" not in e]
    else:
        pairs = [(d.split(";")[0].strip(), e.split(";")[0].strip()) for d, e in pairs]
    counts["no_synonyms"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if d.endswith(_SENTENCE_END) and e.endswith(_SENTENCE_END)]
    counts["sentence"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if not _PLACEHOLDER.search(d) and not _PLACEHOLDER.search(e)]
    counts["no_templates"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if len(d.split()) >= _MIN_WORDS and len(e.split()) >= _MIN_WORDS]
    counts["min_words"] = len(pairs)
    pairs = list(dict.fromkeys(pairs))
    counts["unique"] = len(pairs)
    return pairs, counts


def _open_lines(path: str | os.PathLike) -> list[str]:
    if str(path) == DEFAULT_PATH:
        ensure_debian_package(PACKAGE, path)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"path must be a Ding-format dictionary file (lines 'Deutsch :: English'), {path} not found"
        )
    return path.read_text(encoding="utf-8").splitlines()


def load_pairs_with_counts(
    path: str | os.PathLike = DEFAULT_PATH, strict: bool = True
) -> tuple[list[Pair], "OrderedDict[str, int]"]:
    """:func:`load_pairs` plus the number of pairs left after each filter (see the module doc)."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    return _filter(_open_lines(path), strict)


def load_pairs(path: str | os.PathLike = DEFAULT_PATH, strict: bool = True) -> list[Pair]:
    """Everyday German-English sentence pairs from a Ding dictionary file.

    Args:
        path: the dictionary file; the default is installed by the Debian package
            ``trans-de-en`` (installed on demand when running as root, see
            :func:`attnlab.data.debian.ensure_debian_package`).
        strict: ``True`` drops every item with grammar annotations or ``;`` synonyms
            (18,399 pairs on the 2023 file); ``False`` keeps the first synonym of
            each side instead (19,888 pairs). The filters are listed in the module doc.

    Returns:
        list of unique ``(german, english)`` pairs in file order.
    """
    return load_pairs_with_counts(path, strict)[0]


# --------------------------------------------------------------------------- splitting


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def _rank(key: str, seed: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big")


def split_pairs(
    pairs: Sequence[Pair], valid: int = 1000, test: int = 1000, seed: int = 0
) -> dict[str, list[Pair]]:
    """Deterministic train/valid/test split by a keyed hash, stable when data is added.

    Pairs that share a German or an English sentence (compared case-folded) form one
    group, so no test or valid sentence appears in train on either side. Each group's rank
    is the smallest keyed BLAKE2b hash of its sentences: a group's rank does not depend
    on the rest of the data, so adding pairs moves only groups near the cut points,
    instead of reshuffling everything. Groups are taken in rank order: the first
    ``test`` pairs go to test, the next ``valid`` to valid, the rest to train (a group is
    never cut, so a split can hold a few pairs more than asked).

    Args:
        pairs: ``(german, english)`` pairs, e.g. from :func:`load_pairs`.
        valid, test: number of pairs wanted in each held-out split.
        seed: int mixed into the hash; another seed gives another (equally stable) split.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}``, each in input order.
    """
    check_positive_int(valid, "valid", allow_zero=True)
    check_positive_int(test, "test", allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    pairs = list(pairs)
    if valid + test > len(pairs):
        raise ValueError(f"valid + test ({valid} + {test}) must not exceed the {len(pairs)} pairs")

    # Union-find over sentences: a pair joins its German and its English sentence.
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for de, en in pairs:
        a, b = find("de:" + _key(de)), find("en:" + _key(en))
        if a != b:
            parent[a] = b
    group_rank: dict[str, int] = {}
    for node in parent:
        root = find(node)
        r = _rank(node, seed)
        if r < group_rank.get(root, 1 << 64):
            group_rank[root] = r
    group_of = [find("en:" + _key(en)) for _, en in pairs]

    members: dict[str, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    order = sorted(members, key=lambda g: (group_rank[g], g))
    where = {}
    taken = {"test": 0, "valid": 0}
    for g in order:
        name = "test" if taken["test"] < test else "valid" if taken["valid"] < valid else "train"
        if name != "train":
            taken[name] += len(members[g])
        for i in members[g]:
            where[i] = name
    out: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for i, p in enumerate(pairs):
        out[where[i]].append(p)
    return out


def pair_stats(pairs: Sequence[Pair], tokenizer=None) -> dict[str, float]:
    """Counts and mean lengths: pairs, unique German/English sentences, words per side
    (whitespace-separated), and with a ``tokenizer`` subword tokens per side (no bos/eos)."""
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        raise ValueError("pairs is empty; need at least one (german, english) pair")
    stats: dict[str, float] = {
        "pairs": n,
        "unique_de": len({d for d, _ in pairs}),
        "unique_en": len({e for _, e in pairs}),
        "mean_words_de": sum(len(d.split()) for d, _ in pairs) / n,
        "mean_words_en": sum(len(e.split()) for _, e in pairs) / n,
        "max_words_de": max(len(d.split()) for d, _ in pairs),
        "max_words_en": max(len(e.split()) for _, e in pairs),
    }
    if tokenizer is not None:
        de = tokenizer.encode_batch([d for d, _ in pairs], add_eos=False)
        en = tokenizer.encode_batch([e for _, e in pairs], add_eos=False)
        stats["mean_tokens_de"] = sum(map(len, de)) / n
        stats["mean_tokens_en"] = sum(map(len, en)) / n
        stats["max_tokens_de"] = max(map(len, de))
        stats["max_tokens_en"] = max(map(len, en))
    return stats


# --------------------------------------------------------------------------- batching


def encode_pairs(pairs: Sequence[Pair], tokenizer, max_len: int | None = None) -> list[IdPair]:
    """Token ids for each pair: ``(x + [eos], y)``, with bos/eos for ``y`` added at batching.

    Args:
        pairs: ``(source, target)`` text pairs.
        tokenizer: a :class:`~attnlab.data.tokenizer.SubwordTokenizer` (``encode_batch``,
            ``eos_id``).
        max_len: drop pairs whose source (eos included) or decoder sequence (``len(y) + 1``)
            is longer; ``None`` keeps all.

    Returns:
        list of ``(src_ids, tgt_ids)`` in input order (minus dropped pairs).
    """
    if max_len is not None:
        check_positive_int(max_len, "max_len")
    pairs = list(pairs)
    src = tokenizer.encode_batch([d for d, _ in pairs], add_bos=False, add_eos=True)
    tgt = tokenizer.encode_batch([e for _, e in pairs], add_bos=False, add_eos=False)
    out = list(zip(src, tgt))
    if max_len is not None:
        out = [(s, t) for s, t in out if len(s) <= max_len and len(t) + 1 <= max_len]
    return out


def _collate(items: Sequence[IdPair], pad_id: int, bos_id: int, eos_id: int) -> Batch:
    s_len = max(len(s) for s, _ in items)
    t_len = max(len(t) for _, t in items) + 1
    # pad in Python and build each tensor once: far cheaper than a tensor per row
    src = [s + [pad_id] * (s_len - len(s)) for s, _ in items]
    tgt_in = [[bos_id, *t] + [pad_id] * (t_len - 1 - len(t)) for _, t in items]
    tgt_out = [[*t, eos_id] + [pad_id] * (t_len - 1 - len(t)) for _, t in items]
    return Batch(
        torch.tensor(src, dtype=torch.long),  # (B, S)
        torch.tensor([len(s) for s, _ in items], dtype=torch.long),  # (B,)
        torch.tensor(tgt_in, dtype=torch.long),  # (B, T)
        torch.tensor(tgt_out, dtype=torch.long),  # (B, T)
    )


def _cost(item: IdPair) -> int:
    return max(len(item[0]), len(item[1]) + 1)


def _cut(indices: Sequence[int], costs: Sequence[int], batch_size, batch_tokens) -> list[list[int]]:
    """Consecutive groups of ``indices``: ``batch_size`` each, or as many as fit in
    ``batch_tokens`` padded tokens (B * longest side); a longer pair gets a batch of its own."""
    if batch_size is not None:
        return [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    groups, cur, longest = [], [], 0
    for i in indices:
        c = costs[i]
        if cur and (len(cur) + 1) * max(longest, c) > batch_tokens:
            groups.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, c)
    if cur:
        groups.append(cur)
    return groups


def make_batches(
    pairs_ids: Sequence[IdPair],
    batch_size: int | None = None,
    *,
    batch_tokens: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    chunk_batches: int = 100,
    pad_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Iterator[Batch]:
    """Padded :class:`Batch` es from ``(src_ids, tgt_ids)`` pairs, bucketed by length.

    With ``shuffle=True`` the pairs are shuffled (``random.Random(seed)``), cut into chunks
    of about ``chunk_batches`` batches, each chunk sorted by length and cut into batches,
    and the batch order shuffled again: batches hold pairs of similar length (little
    padding, see :func:`padding_fraction`) yet differ from epoch to epoch (pass
    ``seed=epoch``). With ``shuffle=False`` the pairs keep their order and are cut into
    consecutive batches (no sorting), so outputs line up with the input, e.g. for BLEU.

    Args:
        pairs_ids: ``(src_ids, tgt_ids)`` from :func:`encode_pairs`; src ends with eos,
            tgt has no bos/eos (they are added here).
        batch_size: pairs per batch; give this or ``batch_tokens``.
        batch_tokens: most padded tokens per batch, ``B * max(S, T)``.
        shuffle: bucket and shuffle (training) or keep the order (evaluation).
        seed: seed of the shuffles.
        chunk_batches: size of a sorting chunk in batches (larger: less padding, less
            randomness).
        pad_id, bos_id, eos_id: special ids (SubwordTokenizer's 0, 1, 2 by default).

    Shape:
        See :class:`Batch`: src (B, S), src_lengths (B,), tgt_in and tgt_out (B, T).
    """
    if (batch_size is None) == (batch_tokens is None):
        raise ValueError("give exactly one of batch_size (pairs per batch) or batch_tokens (padded tokens per batch)")
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    else:
        check_positive_int(batch_tokens, "batch_tokens")
    check_positive_int(chunk_batches, "chunk_batches")
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
    items = list(pairs_ids)
    for k, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"pairs_ids[{k}] must be a (src_ids, tgt_ids) pair, got {type(item).__name__}")
        if len(item[0]) == 0:
            raise ValueError(f"pairs_ids[{k}] has an empty source; encode it with eos (encode_pairs does)")
    if not items:
        return iter(())
    return _batches(items, batch_size, batch_tokens, shuffle, seed, chunk_batches, pad_id, bos_id, eos_id)


def _batches(items, batch_size, batch_tokens, shuffle, seed, chunk_batches, pad_id, bos_id, eos_id):
    order = list(range(len(items)))
    costs = [_cost(it) for it in items]
    if not shuffle:
        groups = _cut(order, costs, batch_size, batch_tokens)
    else:
        rng = random.Random(seed)
        rng.shuffle(order)
        if batch_size is not None:
            chunk = batch_size * chunk_batches
        else:  # about chunk_batches batches of average-length pairs
            mean_cost = sum(costs) / len(costs)
            chunk = max(1, math.ceil(batch_tokens / mean_cost) * chunk_batches)
        groups = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: (costs[i], len(items[i][0])))
            groups.extend(_cut(part, costs, batch_size, batch_tokens))
        rng.shuffle(groups)
    for g in groups:
        yield _collate([items[i] for i in g], pad_id, bos_id, eos_id)


def padding_fraction(batches: Iterable[Batch], pad_id: int = 0) -> float:
    """Share of pad positions among all src and tgt_out positions of ``batches``."""
    pad = total = 0
    for b in batches:
        for t in (b.src, b.tgt_out):
            pad += int((t == pad_id).sum())
            total += t.numel()
    if total == 0:
        raise ValueError("batches is empty; need at least one Batch")
    return pad / total
