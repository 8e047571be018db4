"""A larger German-English training corpus from four offline sources, one loader.

:func:`load_corpus` joins, with a source tag on every pair:

``ding-sentences``
    The everyday example sentences of the Ding dictionary (Debian ``trans-de-en``), the
    *train* split of :func:`attnlab.data.de_en.load_pairs` + :func:`~attnlab.data.de_en.split_pairs`
    (strict filter, 1000 valid, 1000 test, split seed 0 by default): exactly the data of
    ``attnlab train translate``.
``ding-words``
    Every other item of the same file: headwords, inflections and phrases. Each item is
    cleaned like :func:`~attnlab.data.de_en.clean_item` (``{f}``, ``[coll.]``, ``(...)``,
    ``<...>`` groups go) after removing ``/Abk./``-style abbreviation marks, then split
    at ``;`` into alternatives. Alternatives are paired only where the pairing is sure:
    one alternative against n on the other side gives n pairs (each synonym translates
    the single side); n against m (both > 1) gives only the first with the first, since
    the synonym lists are not aligned by position; more than
    :data:`MAX_ALTERNATIVES` alternatives also gives only the first pair. ``~`` joins
    related words (``anomisch ~ Anomie``) and is zipped like ``|`` when both sides hold
    the same number of them. Items that are strict example sentences are left to
    ``ding-sentences``.
``debian-descriptions``
    Debian package descriptions in English and German (apt's ``Translation-en`` /
    ``Translation-de`` indexes, read by :mod:`attnlab.data.apt_descriptions`): the same
    ``Description-md5`` in both languages is a translation. Short synopses are paired;
    long descriptions are paired paragraph by paragraph when both have the same number
    of paragraphs (verbatim/code paragraphs and bullet lists with different item counts
    skipped), and each paragraph further sentence by sentence when both sides split into
    the same number of sentences.
``gettext``
    The German message catalogs ``/usr/share/locale/de/LC_MESSAGES/*.mo`` (msgid English,
    msgstr German), parsed with the stdlib :class:`gettext.GNUTranslations`. Plural
    entries give their singular form, ``msgctxt`` is dropped, keyboard accelerators
    (``_Datei``, ``Ö_ffnen``, ``&File``) are removed, multi-line strings (usage text,
    whose lines German rewraps) are skipped.

Filters, applied to every source in this order (:attr:`Corpus.stats` counts the pairs left
after each, per source)::

    raw           pairs the source yields
    empty         both sides non-empty
    placeholders  no printf/format placeholders (%s %d %(x)s %1$s {0} {name}), shell
                  variables ($VAR ${VAR}), markup (<b> &amp;), command-line options
                  (-v --all), URLs, file paths, leftover brackets or underscores
    length        1 to max_words whitespace words per side
    ratio         (longer + 5) / (shorter + 5) <= max_ratio, in characters (characters,
                  not words, because one German compound is often several English words)
    identical     German != English (normalized): an untranslated copy teaches nothing
    leak          neither side equals (normalized) any German or English sentence of the
                  valid or test split -- the held-out split stays out of every source
    unique        first of each normalized (German, English) pair, sources taken in
                  :data:`SOURCES` order (so a pair found in two sources keeps the first tag)

"Normalized" is NFKC, casefolded, ``’`` -> ``'``, every run of non-alphanumeric
characters one space: ``"Er lernt rasch!"`` and ``"er  lernt rasch"`` are the same.

Each source is parsed and filtered once, then cached in the process and on disk
(``~/.cache/attnlab/corpus_de_en``, JSON written atomically, ~70 MB), keyed by the paths,
sizes and modification times of its files and the filter settings. Measured on the shared
2-core machine with all four sources: parsing 35 s CPU; from the disk cache about 3 s
CPU (8 s wall under load); again in the same process 0.1 s.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import gettext
import hashlib
import io
import json
import os
import re
import struct
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

from attnlab._checks import check_positive_int
from attnlab._io import write_json_atomic
from attnlab.data import de_en

__all__ = [
    "SOURCES",
    "FILTERS",
    "MAX_ALTERNATIVES",
    "DEFAULT_LOCALE_DIR",
    "DEFAULT_LISTS_DIR",
    "DEFAULT_CACHE_DIR",
    "Pair",
    "Corpus",
    "load_corpus",
    "corpus_summary",
    "normalize",
    "ding_word_pairs",
    "gettext_pairs",
    "description_pairs",
    "clear_cache",
]

SOURCES = ("ding-sentences", "ding-words", "debian-descriptions", "gettext")
FILTERS = ("raw", "empty", "placeholders", "length", "ratio", "identical", "leak", "unique")
DEFAULT_LOCALE_DIR = "/usr/share/locale"
DEFAULT_LISTS_DIR = "/var/lib/apt/lists"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnlab" / "corpus_de_en"
#: More ';' alternatives than this in an item: keep only the first pair of the item.
MAX_ALTERNATIVES = 8
#: Bump when a parser changes, so stale disk caches are not read.
_CACHE_VERSION = 4

_RawPair = tuple[str, str]


class Pair(NamedTuple):
    """One training pair and the source it came from (one of :data:`SOURCES`).

    A NamedTuple rather than a frozen dataclass: building 600k of them is 10x cheaper.
    """

    de: str
    en: str
    source: str


@dataclass(frozen=True)
class Corpus:
    """Training pairs of all sources, and the held-out Ding sentence splits.

    Attributes:
        train: tagged training pairs, grouped by source in :data:`SOURCES` order, each
            source in file order.
        valid, test: ``(german, english)`` pairs, exactly those of
            ``split_pairs(load_pairs(ding_path), valid, test, seed)`` (by default the
            splits of ``attnlab train translate``).
        stats: ``{"filters": {source: {filter: pairs left}}, "leak_dropped": {source: n},
            "skipped": {source: reason}, "files": {source: n files read}}``.
    """

    train: tuple[Pair, ...]
    valid: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]
    stats: dict

    def pairs(self, source: str | None = None) -> list[tuple[str, str]]:
        """Training ``(german, english)`` pairs, all or of one source."""
        if source is not None and source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        return [(p.de, p.en) for p in self.train if source is None or p.source == source]


# ----------------------------------------------------------------------------- text helpers

_NON_ALNUM = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Comparison key of a sentence: NFKC, casefold, ``’`` -> ``'``, non-alphanumerics to one space."""
    s = unicodedata.normalize("NFKC", text).replace("\u2019", "'").casefold()
    return _NON_ALNUM.sub(" ", s).strip()


_PLACEHOLDER = re.compile(
    r"%(?:\(\w+\)|\d+\$)?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcspnm%]"
    r"|\{\w*(?:[:!][^{}]*)?\}"  # {0} {name} {x:>3}
    r"|\$\{?[A-Za-z_]\w*"  # $VAR ${VAR}
    r"|<[A-Za-z/!][^<>]*>"  # <b> </a> <!-- -->
    r"|&[#\w]+;"  # &amp; &#169;
    r"|(?<![\w-])--?[A-Za-z]"  # command-line options -v --all
    r"|\w+://|www\.\w"  # URLs
    r"|(?:^|(?<=[\s\"'»«„“(]))(?:\.{0,2}/|~/)\w"  # file paths /usr ./x ~/x (not "Kriegs-/Wirtschaft")
    r"|[{}\[\]<>_\\|`]"  # leftover brackets, identifiers, escapes
)


def _has_placeholder(text: str) -> bool:
    return _PLACEHOLDER.search(text) is not None


def _ratio_ok(de: str, en: str, max_ratio: float) -> bool:
    a, b = len(de), len(en)
    return (max(a, b) + 5) / (min(a, b) + 5) <= max_ratio


# ----------------------------------------------------------------------------- ding

# "/Abk./", "/NBCRV/": abbreviation marks, a whitespace-delimited /.../ token.
_ABBREV = re.compile(r"(?:(?<=\s)|^)/[^/\s][^/]*?/(?=\s|;|$)")
_BRACKET = re.compile(r"[{}\[\]()<>]")


def _alternatives(item: str) -> list[str] | None:
    """The cleaned ';' alternatives of one dictionary item; None when brackets do not balance."""
    s = de_en.clean_item(_ABBREV.sub(" ", item))
    if _BRACKET.search(s):
        return None
    return [a for a in (" ".join(x.split()) for x in s.split(";")) if a]


def _pair_alternatives(de_alts: Sequence[str], en_alts: Sequence[str]) -> list[_RawPair]:
    if not de_alts or not en_alts:
        return []
    if len(de_alts) > MAX_ALTERNATIVES or len(en_alts) > MAX_ALTERNATIVES:
        return [(de_alts[0], en_alts[0])]
    if len(de_alts) == 1:
        return [(de_alts[0], e) for e in en_alts]
    if len(en_alts) == 1:
        return [(d, en_alts[0]) for d in de_alts]
    return [(de_alts[0], en_alts[0])]  # n x m synonym lists are not aligned by position


def ding_word_pairs(lines: Iterable[str], exclude: Iterable[_RawPair] = ()) -> list[_RawPair]:
    """Word and phrase pairs of Ding lines (every aligned item that is not in ``exclude``).

    Args:
        lines: lines of a Ding-format file (``German :: English``, ``#`` comments).
        exclude: cleaned ``(german, english)`` items to leave out, normally the strict
            example sentences of :func:`attnlab.data.de_en.load_pairs`.

    Returns:
        ``(german, english)`` pairs in file order, not yet filtered or de-duplicated.
    """
    skip = set(exclude)
    out: list[_RawPair] = []
    for de_item, en_item in de_en._aligned_items(lines):
        if (de_en.clean_item(de_item), de_en.clean_item(en_item)) in skip:
            continue
        de_parts, en_parts = de_item.split(" ~ "), en_item.split(" ~ ")
        if len(de_parts) != len(en_parts):
            continue  # related-word chains of different lengths cannot be aligned
        for d, e in zip(de_parts, en_parts):
            de_alts, en_alts = _alternatives(d), _alternatives(e)
            if de_alts is None or en_alts is None:
                continue
            out.extend(_pair_alternatives(de_alts, en_alts))
    return out


# ----------------------------------------------------------------------------- gettext

# An accelerator: '_' or '&' right before a letter/digit ("_Datei", "Ö_ffnen", "&File").
_ACCEL = re.compile(r"[_&](?=\w)")


_IDENTIFIER = re.compile(r"\w+_\w+")


def _strip_accelerator(text: str) -> str | None:
    """``text`` without its one keyboard accelerator; None when it holds several markers
    (an identifier like ``max_depth``, or ``&`` used otherwise), which stays unpaired."""
    marks = _ACCEL.findall(text)
    if len(marks) > 1:
        return None
    return _ACCEL.sub("", text, count=1).replace("&&", "&")


def _read_mo(path: str) -> dict:
    """The catalog of one ``.mo`` file, as :class:`gettext.GNUTranslations` reads it.

    The standard library decodes the header entry as UTF-8 before it has read the
    header's own ``charset``; an old Latin-1 catalog (net-tools: ``Last-Translator: Ralf
    B\xe4chle``) then fails on a translator's name. Such a header is read again with
    its non-ASCII bytes replaced by ``?`` (same length, so every offset holds), and the
    messages are decoded with the charset it declares.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return gettext.GNUTranslations(io.BytesIO(data))._catalog
    except UnicodeDecodeError:
        fixed = _ascii_mo_header(data)
        if fixed is None:
            raise
        return gettext.GNUTranslations(io.BytesIO(fixed))._catalog


def _ascii_mo_header(data: bytes) -> bytes | None:
    """``data`` with the non-ASCII bytes of its header entry (the translation of the empty
    msgid) replaced by ``?``; ``None`` when the header is plain ASCII or missing."""
    if len(data) < 20:
        return None
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        return None
    n, ids_at, strs_at = struct.unpack(order + "3I", data[8:20])
    for i in range(n):
        id_len, _ = struct.unpack(order + "2I", data[ids_at + 8 * i : ids_at + 8 * i + 8])
        if id_len:
            continue
        length, offset = struct.unpack(order + "2I", data[strs_at + 8 * i : strs_at + 8 * i + 8])
        header = data[offset : offset + length]
        if header.isascii():
            return None
        clean = bytes(b if b < 0x80 else 0x3F for b in header)
        return data[:offset] + clean + data[offset + length :]
    return None


def gettext_pairs(paths: Iterable[str | os.PathLike], warn: Callable[[str], None] | None = None) -> list[_RawPair]:
    """``(german, english)`` pairs of compiled gettext catalogs (msgstr German, msgid English).

    Plural entries give their singular (``msgstr[0]`` against the singular ``msgid``);
    a ``msgctxt`` prefix is dropped; empty and header entries are skipped (``msgfmt``
    already leaves out fuzzy ones); one accelerator per side is removed and strings
    with more markers are skipped; strings with a line break inside are skipped.
    A catalog that cannot be decoded (a wrong charset header) is skipped with ``warn``.
    """
    out: list[_RawPair] = []
    for path in paths:
        try:
            catalog = _read_mo(str(path))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if warn is not None:
                warn(f"skipped {path}: {type(exc).__name__}: {exc}")
            continue
        for key, msgstr in catalog.items():
            if isinstance(key, tuple):
                key, index = key
                if index != 0:
                    continue
            if not key or not isinstance(msgstr, str):
                continue
            msgid = key.split("\x04", 1)[-1]  # msgctxt \x04 msgid
            en, de = msgid.strip(), msgstr.strip()
            if not en or not de or "\n" in en or "\n" in de:
                continue
            if _IDENTIFIER.findall(en) and set(_IDENTIFIER.findall(en)) & set(_IDENTIFIER.findall(de)):
                continue  # "max_depth" kept verbatim in German: a program identifier, not an accelerator
            en, de = _strip_accelerator(en), _strip_accelerator(de)
            if en is None or de is None:
                continue
            out.append((" ".join(de.split()), " ".join(en.split())))
    return out


# ----------------------------------------------------------------------------- descriptions

# A sentence ends at . ! ? followed by space and an upper-case letter, digit or quote.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[\"'„“(]?[A-ZÄÖÜ0-9])")
_BULLET = re.compile(r"\s*(?:[-*+o•]|\d+[.)])\s+")


def _paragraph_units(paragraph: str) -> list[str] | None:
    """The prose and the bullet items a paragraph is made of, or None if it holds verbatim text.

    :mod:`attnlab.data.apt_descriptions` joins wrapped prose into one line and keeps
    verbatim lines (Debian policy 5.6.13: two leading spaces) on their own, indented.
    An indented line is a bullet item (``- x``, ``* x``, ``1. x``), the continuation of
    the bullet above it, or else verbatim text (code, tables), which is not paired.
    """
    units: list[list[str]] = []
    in_bullet = False
    for line in paragraph.splitlines():
        if not line.strip():
            continue
        if _BULLET.match(line):
            units.append([_BULLET.sub("", line, count=1)])
            in_bullet = True
        elif line.startswith((" ", "\t")):
            if not in_bullet:
                return None
            units[-1].append(line)
        else:
            units.append([line])
            in_bullet = False
    return [" ".join(" ".join(u).split()) for u in units]


def _split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_SPLIT.split(text) if s]


def description_pairs(en: dict, de: dict) -> list[_RawPair]:
    """``(german, english)`` pairs of package descriptions found in both languages.

    Args:
        en, de: ``{md5: Description}`` from :func:`attnlab.data.apt_descriptions.load_descriptions`
            (``.short`` the synopsis, ``.paragraphs`` the long description).

    Returns:
        the synopses, then the paragraphs of descriptions whose paragraph counts match
        (verbatim ones skipped; bullet items paired one by one when the counts match),
        each split into sentences where both sides have as many; in md5 order.
    """
    out: list[_RawPair] = []
    for md5 in sorted(en.keys() & de.keys()):
        e, d = en[md5], de[md5]
        if e.short and d.short:
            out.append((" ".join(d.short.split()), " ".join(e.short.split())))
        if len(e.paragraphs) != len(d.paragraphs):
            continue
        for ep, dp in zip(e.paragraphs, d.paragraphs):
            eu, du = _paragraph_units(ep), _paragraph_units(dp)
            if eu is None or du is None or len(eu) != len(du):
                continue
            for eunit, dunit in zip(eu, du):
                es, ds = _split_sentences(eunit), _split_sentences(dunit)
                if len(es) == len(ds):
                    out.extend(zip(ds, es))
                else:
                    out.append((dunit, eunit))
    return out


# ----------------------------------------------------------------------------- caching

_MEMORY: dict[str, object] = {}


def clear_cache() -> None:
    """Forget the parsed sources and corpora held in this process (the disk cache stays)."""
    _MEMORY.clear()


def _fingerprint(files: Sequence[str | os.PathLike]) -> list:
    out = []
    for f in sorted(map(str, files)):
        try:
            st = os.stat(f)
            out.append([f, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f, None, None])
    return out


def _key(name: str, files: Sequence[str | os.PathLike], params: dict) -> str:
    src = json.dumps([_CACHE_VERSION, name, params, _fingerprint(files)], sort_keys=True)
    return f"{name}-{hashlib.sha256(src.encode()).hexdigest()[:20]}"


@contextlib.contextmanager
def _no_gc():
    """Pause the cyclic garbage collector (no cycles are built here)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _cached(key: str, cache_dir, build: Callable[[], object]):
    """``build()``, remembered under ``key`` in memory and (with ``cache_dir``) on disk as
    JSON written atomically; a damaged cache file is rebuilt."""
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
    value = None
    if path is not None and path.is_file():
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            value = None
    if value is None:
        value = build()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(value, path, indent=None)
            except OSError as exc:
                print(f"attnlab: could not write the corpus cache {path} ({exc})", file=sys.stderr)
    _MEMORY[key] = value
    return value


# ----------------------------------------------------------------------------- sources


def _prepare(pairs: Iterable[_RawPair], max_words: int, max_ratio: float) -> dict:
    """The per-pair filters (``empty`` .. ``identical``) and the normalized keys, which
    do not depend on the other sources and so are cached with the source."""
    counts: dict[str, int] = {}
    pairs = [(d.strip(), e.strip()) for d, e in pairs]
    counts["raw"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if d and e]
    counts["empty"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if not _has_placeholder(d) and not _has_placeholder(e)]
    counts["placeholders"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if len(d.split()) <= max_words and len(e.split()) <= max_words]
    counts["length"] = len(pairs)
    pairs = [(d, e) for d, e in pairs if _ratio_ok(d, e, max_ratio)]
    counts["ratio"] = len(pairs)
    rows = [(normalize(d), normalize(e), d, e) for d, e in pairs]
    rows = [r for r in rows if r[0] and r[1] and r[0] != r[1]]
    counts["identical"] = len(rows)
    return {"counts": counts, "rows": rows}


def _ding_split(ding_path: str, split: tuple[int, int, int], cache_dir) -> dict:
    """``{"train", "valid", "test"}``: the strict Ding sentences split as ``attnlab train translate`` does."""
    if ding_path == de_en.DEFAULT_PATH:
        from attnlab.data.debian import ensure_debian_package

        ensure_debian_package(de_en.PACKAGE, ding_path)
    if not Path(ding_path).is_file():
        raise FileNotFoundError(f"ding_path must be a Ding-format dictionary file, {ding_path} not found")

    def build():
        valid, test, seed = split
        return de_en.split_pairs(de_en.load_pairs(ding_path, strict=True), valid=valid, test=test, seed=seed)

    value = _cached(_key("ding-split", [ding_path], {"split": split}), cache_dir, build)
    return {k: [tuple(p) for p in v] for k, v in value.items()}


def _ding_words_raw(ding_path: str) -> list[_RawPair]:
    strict = de_en.load_pairs(ding_path, strict=True)
    lines = Path(ding_path).read_text(encoding="utf-8").splitlines()
    return ding_word_pairs(lines, exclude=strict)


def _mo_files(locale_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(str(locale_dir), "de", "LC_MESSAGES", "*.mo")))


def _gettext_files(locale_dir) -> tuple[list[str], str | None]:
    files = _mo_files(locale_dir)
    if files:
        return files, None
    return [], (
        f"no German catalogs {locale_dir}/de/LC_MESSAGES/*.mo; install the packages that ship them "
        "(e.g. `apt-get install --reinstall coreutils apt`) with no dpkg path-exclude for /usr/share/locale"
    )


def _description_files(lists_dir) -> tuple[list[str], str | None]:
    try:
        from attnlab.data import apt_descriptions
    except ImportError as exc:
        return [], f"attnlab.data.apt_descriptions cannot be imported ({exc})"
    try:
        apt_descriptions.ensure_translation_indexes(("en", "de"), lists_dir=lists_dir)
    except FileNotFoundError as exc:
        return [], str(exc)
    files = [str(f) for lang in ("en", "de") for f in apt_descriptions.translation_index_files(lang, lists_dir)]
    return files, None


def _description_raw(lists_dir) -> list[_RawPair]:
    from attnlab.data.apt_descriptions import load_descriptions

    return description_pairs(load_descriptions("en", lists_dir=lists_dir), load_descriptions("de", lists_dir=lists_dir))


# ----------------------------------------------------------------------------- the corpus


def _combine(prepared: dict, held: set, filters: dict, leak_dropped: dict) -> list[Pair]:
    """The ``leak`` and ``unique`` filters over all sources in order; fills ``filters`` and
    ``leak_dropped``."""
    seen: set[tuple[str, str]] = set()
    train: list[Pair] = []
    for name, prep in prepared.items():
        counts = dict(prep["counts"])
        # Either side against both held-out sides: an identical name or a German sentence
        # quoted in an English string counts too.
        rows = [r for r in prep["rows"] if r[0] not in held and r[1] not in held]
        counts["leak"] = len(rows)
        leak_dropped[name] = counts["identical"] - counts["leak"]
        n0 = len(train)
        for nd, ne, d, e in rows:
            if (nd, ne) not in seen:
                seen.add((nd, ne))
                train.append(Pair(d, e, name))
        counts["unique"] = len(train) - n0
        filters[name] = counts
    return train


def load_corpus(
    sources: Sequence[str] = SOURCES,
    *,
    ding_path: str | os.PathLike = de_en.DEFAULT_PATH,
    locale_dir: str | os.PathLike = DEFAULT_LOCALE_DIR,
    lists_dir: str | os.PathLike = DEFAULT_LISTS_DIR,
    max_words: int = 60,
    max_ratio: float = 3.0,
    valid: int = 1000,
    test: int = 1000,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    quiet: bool = False,
) -> Corpus:
    """German-English training pairs from several sources, held-out splits from Ding only.

    Args:
        sources: which of :data:`SOURCES` go into ``train`` (valid/test always come from
            the Ding sentences).
        ding_path: the Ding dictionary (installed from ``trans-de-en`` on demand as root).
        locale_dir: holds ``de/LC_MESSAGES/*.mo``.
        lists_dir: apt's lists folder with the ``Translation-en``/``-de`` indexes
            (fetched on demand as root, see
            :func:`attnlab.data.apt_descriptions.ensure_translation_indexes`).
        max_words: most whitespace words per side of a training pair.
        max_ratio: most ``(longer + 5) / (shorter + 5)`` character-length ratio.
        valid, test, seed: sizes and hash key of the held-out split
            (:func:`attnlab.data.de_en.split_pairs`); the defaults give the split of
            ``attnlab train translate`` (keep them for comparable BLEU).
        cache_dir: where parsed sources are cached on disk; None caches in memory only.
        quiet: no warnings on stderr for skipped sources or unreadable catalogs.

    Returns:
        a :class:`Corpus`. Missing optional sources (descriptions, gettext) are skipped
        with a one-line warning naming the command that adds them, and listed in
        ``stats["skipped"]``.

    Raises:
        ValueError: unknown source names, or bad ``max_words``/``max_ratio``.
        FileNotFoundError: ``ding_path`` is missing (it is needed for the held-out splits).
    """
    if isinstance(sources, str):
        sources = (sources,)
    sources = tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"sources must be among {', '.join(SOURCES)}; unknown: {', '.join(map(repr, unknown))}")
    check_positive_int(max_words, "max_words")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not max_ratio >= 1:
        raise ValueError(f"max_ratio must be a number >= 1, got {max_ratio!r}")
    check_positive_int(valid, "valid", allow_zero=True)
    check_positive_int(test, "test", allow_zero=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")

    def warn(msg: str) -> None:
        if not quiet:
            print(f"attnlab: corpus: {msg}", file=sys.stderr)

    # Paused collector: the parsed sources are ~10^6 small tuples, and every collection
    # otherwise walks them all (seconds, for no cycles to find).
    with _no_gc():
        return _load(sources, str(ding_path), locale_dir, lists_dir, max_words, max_ratio,
                     (valid, test, seed), cache_dir, warn)


def _load(sources, ding_path, locale_dir, lists_dir, max_words, max_ratio, split, cache_dir, warn) -> Corpus:
    ding = _ding_split(ding_path, split, cache_dir)
    valid, test = ding["valid"], ding["test"]
    held_de = {normalize(d) for d, _ in valid + test}
    held_en = {normalize(e) for _, e in valid + test}
    held = held_de | held_en
    limits = {"max_words": max_words, "max_ratio": max_ratio}

    prepared: dict[str, dict] = {}
    keys: list[str] = []
    skipped: dict[str, str] = {}
    files: dict[str, int] = {}
    for name in (s for s in SOURCES if s in sources):
        if name == "ding-sentences":
            key = _key(name, [ding_path], {**limits, "split": split})
            fs, build = [ding_path], lambda: ding["train"]
        elif name == "ding-words":
            key = _key(name, [ding_path], limits)
            fs, build = [ding_path], lambda: _ding_words_raw(ding_path)
        elif name == "gettext":
            fs, reason = _gettext_files(locale_dir)
            key = _key(name, fs, limits)
            build = lambda fs=fs: gettext_pairs(fs, warn)  # noqa: E731
        else:
            fs, reason = _description_files(lists_dir)
            key = _key(name, fs, limits)
            build = lambda: _description_raw(lists_dir)  # noqa: E731
        if name in ("gettext", "debian-descriptions") and reason is not None:
            skipped[name] = reason
            warn(f"skipping {name}: {reason}")
            continue
        prepared[name] = _cached(key, cache_dir, lambda build=build: _prepare(build(), max_words, max_ratio))
        files[name] = len(fs)
        keys.append(key)

    # The same files and parameters give the same corpus: reuse it within the process.
    memo = ("corpus", _key("ding-split", [ding_path], {"split": split}), *keys)
    if memo in _MEMORY:
        return _MEMORY[memo]
    filters: dict[str, dict] = {}
    leak_dropped: dict[str, int] = {}
    train = _combine(prepared, held, filters, leak_dropped)
    stats = {
        "filters": filters,
        "leak_dropped": leak_dropped,
        "skipped": skipped,
        "files": files,
        "train": len(train),
        "valid": len(valid),
        "test": len(test),
    }
    corpus = Corpus(tuple(train), tuple(map(tuple, valid)), tuple(map(tuple, test)), stats)
    _MEMORY[memo] = corpus
    return corpus


def corpus_summary(corpus: Corpus) -> str:
    """A plain-text table: pairs left after each filter, per source, and the split sizes."""
    filters = corpus.stats["filters"]
    names = list(filters)
    width = max([len(f) for f in FILTERS] + [14])
    cols = [max(len(n), 9) for n in names]
    lines = [f"{'filter':<{width}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(names, cols)) + f"  {'total':>9}"]
    for f in FILTERS:
        vals = [filters[n][f] for n in names]
        lines.append(f"{f:<{width}}  " + "  ".join(f"{v:>{c},}" for v, c in zip(vals, cols)) + f"  {sum(vals):>9,}")
    leak = [corpus.stats["leak_dropped"][n] for n in names]
    lines.append(f"{'dropped (leak)':<{width}}  " + "  ".join(f"{v:>{c},}" for v, c in zip(leak, cols)) + f"  {sum(leak):>9,}")
    for n, words in (("mean words de", 0), ("mean words en", 1)):
        vals = []
        for name in names:
            ps = [p for p in corpus.train if p.source == name]
            vals.append(sum(len((p.de, p.en)[words].split()) for p in ps) / len(ps) if ps else 0.0)
        lines.append(f"{n:<{width}}  " + "  ".join(f"{v:>{c}.1f}" for v, c in zip(vals, cols)))
    lines.append(f"train {len(corpus.train):,} pairs; valid {len(corpus.valid):,}, test {len(corpus.test):,} "
                 "(Ding sentences, kept out of every training source)")
    for name, reason in corpus.stats["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)
