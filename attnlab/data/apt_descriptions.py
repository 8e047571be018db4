"""Debian package descriptions, read from apt's translated description indexes.

Every Debian package has a one-line synopsis and a long description, written in
English and translated by the Debian Description Translation Project (DDTP). apt
keeps them in ``/var/lib/apt/lists/*_i18n_Translation-<lang>[.lz4|.xz|.gz|...]``
once it was told to fetch those languages::

    apt-get -o Acquire::Languages=en,de update

Each index is a list of stanzas (deb822), separated by blank lines::

    Package: 0ad-data
    Description-md5: 26581e685027d5ae84824362a4ba59ee
    Description-en: Real-time strategy game of ancient warfare (data files)
     0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
     real-time strategy (RTS) game of ancient warfare. ...
     .
     This package contains the main data files required by 0 A.D.

``Description-md5`` is the md5 of the *English* original, so it is the same in every
language: two records with the same md5 are translations of each other. In the long
text (Debian policy 5.6.13) a line ``" ."`` breaks paragraphs, a line with one leading
space is wrapped prose (joined with spaces when read), and a line with two or more
leading spaces is shown verbatim (lists, code).

Usage::

    en = load_descriptions("en")          # {md5: Description}
    de = load_descriptions("de")
    pairs = [(en[m], de[m]) for m in de.keys() & en.keys()]
"""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .debian import APT_LISTS, _apt_get, _is_root, _run, _tail

__all__ = [
    "APT_LISTS",
    "Description",
    "translation_index_files",
    "ensure_translation_indexes",
    "load_descriptions",
    "parse_translation_index",
]


# Compressions apt may keep its lists in (Acquire::GzipIndexes / KeepCompressedAs).
_SUFFIXES = ("", ".lz4", ".xz", ".gz", ".bz2", ".zst", ".lzma")
_PY_OPENERS = {".gz": gzip.decompress, ".xz": lzma.decompress, ".lzma": lzma.decompress,
               ".bz2": bz2.decompress}
# A DDTP language code: "en", "de", "pt_BR", "zh_CN".
_LANG = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")
_MD5 = re.compile(r"[0-9a-f]{32}")
_APT_HELPER = "/usr/lib/apt/apt-helper"


@dataclass(frozen=True)
class Description:
    """One package description in one language.

    Attributes:
        package: the (first) binary package that carries this description.
        md5: ``Description-md5``, the md5 of the English original; equal md5 in two
            languages means one record is the translation of the other.
        short: the one-line synopsis.
        paragraphs: the long description, one string per paragraph: wrapped prose lines
            are joined with single spaces; verbatim lines (two or more leading spaces
            in the index) keep their own line, with their indent minus the one space
            that marks a continuation line, separated by ``"\\n"``.
    """

    package: str
    md5: str
    short: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        """The long description as plain text, paragraphs separated by a blank line."""
        return "\n\n".join(self.paragraphs)


def _check_lang(lang) -> str:
    if not isinstance(lang, str) or not _LANG.fullmatch(lang):
        raise ValueError(f"lang must be a language code like 'en', 'de' or 'pt_BR', got {lang!r}")
    return lang


def translation_index_files(lang: str, lists_dir: str | os.PathLike = APT_LISTS) -> list[Path]:
    """apt's ``Translation-<lang>`` index files in ``lists_dir``, sorted by name.

    One file per suite/component (e.g. bookworm main, bookworm-updates main,
    bookworm-security main), plain or compressed. Files under ``partial/`` (downloads
    in progress) are ignored. An empty list means apt has not fetched ``lang``.
    """
    _check_lang(lang)
    lists_dir = Path(lists_dir)
    if not lists_dir.is_dir():
        return []
    stem = f"_i18n_Translation-{lang}"
    found = []
    for path in lists_dir.iterdir():
        name = path.name
        i = name.rfind(stem)
        if i > 0 and name[i + len(stem):] in _SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


def _command(langs) -> str:
    return f"apt-get -o Acquire::Languages={','.join(langs)} update"


def ensure_translation_indexes(langs=("en", "de"), lists_dir: str | os.PathLike = APT_LISTS) -> None:
    """Make sure apt's translated description indexes for ``langs`` are on disk.

    When one is missing and the process runs as root with ``apt-get`` on the PATH (and
    ``lists_dir`` is apt's own lists folder), runs ``apt-get -o
    Acquire::Languages=<langs> update`` after a one-line note on stderr. Otherwise
    nothing is run.

    Raises:
        ValueError: a language code is malformed or ``langs`` is empty.
        FileNotFoundError: an index is still missing; the message names the command to run.
    """
    if isinstance(langs, str):
        langs = (langs,)
    langs = tuple(_check_lang(lang) for lang in langs)
    if not langs:
        raise ValueError("langs must name at least one language, e.g. ('en', 'de')")
    lists_dir = Path(lists_dir)
    missing = [lang for lang in langs if not translation_index_files(lang, lists_dir)]
    if not missing:
        return
    command = _command(langs)
    what = f"apt's package description index for {', '.join(missing)} (Translation-{missing[0]}) is missing in {lists_dir}"
    apt = _apt_get()
    if apt is None or not _is_root() or lists_dir.resolve() != APT_LISTS.resolve():
        raise FileNotFoundError(f"{what}; fetch it with `sudo {command}`")
    print(f"attnlab: {what}; running `{command}` ...", file=sys.stderr, flush=True)
    proc = _run([apt, "-o", f"Acquire::Languages={','.join(langs)}", "update"])
    if proc.returncode != 0:
        raise FileNotFoundError(f"{what} and `{command}` failed (exit {proc.returncode}):\n  {_tail(proc)}")
    still = [lang for lang in langs if not translation_index_files(lang, lists_dir)]
    if still:
        raise FileNotFoundError(
            f"ran `{command}` but Translation-{still[0]} is still missing in {lists_dir}; "
            "the configured mirrors may not carry it (check `apt-get update` output and sources.list)"
        )


def _read_index(path: Path) -> str:
    """The text of one index file, decompressed whatever apt's compression setting."""
    suffix = path.suffix if path.suffix in _SUFFIXES else ""
    if suffix == "":
        data = path.read_bytes()
    elif suffix in _PY_OPENERS:
        data = _PY_OPENERS[suffix](path.read_bytes())
    else:
        # lz4 / zstd are not in the standard library; apt's own helper reads every
        # format apt writes, so the lists can be read wherever apt wrote them.
        if os.access(_APT_HELPER, os.X_OK):
            cmd = [_APT_HELPER, "cat-file", str(path)]
        else:
            tool = {".lz4": "lz4", ".zst": "zstd"}[suffix]
            if shutil.which(tool) is None:
                raise FileNotFoundError(
                    f"cannot decompress {path}: neither {_APT_HELPER} nor `{tool}` is installed"
                )
            cmd = [tool, "-dc", str(path)]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0:
            raise OSError(f"cannot decompress {path}: {' '.join(cmd)} exited {proc.returncode}: "
                          f"{proc.stderr.decode(errors='replace').strip()[:300]}")
        data = proc.stdout
    return data.decode("utf-8", errors="replace")


def _paragraphs(lines: list[str]) -> tuple[str, ...]:
    """Debian policy 5.6.13: ' .' breaks paragraphs, ' text' is wrapped prose, '  text' verbatim."""
    paragraphs: list[str] = []
    parts: list[str] = []   # finished lines of the current paragraph
    prose: list[str] = []   # wrapped words waiting to be joined into one line

    def flush_prose():
        if prose:
            parts.append(" ".join(prose))
            prose.clear()

    def flush_paragraph():
        flush_prose()
        if parts:
            paragraphs.append("\n".join(parts))
            parts.clear()

    for raw in lines:
        line = raw[1:] if raw[:1] in (" ", "\t") else raw  # drop the continuation marker
        if line.strip() == ".":
            flush_paragraph()
        elif line[:1] in (" ", "\t"):
            flush_prose()
            parts.append(line.rstrip())
        elif line.strip():
            prose.append(line.strip())
    flush_paragraph()
    return tuple(paragraphs)


def parse_translation_index(text: str) -> list[Description]:
    """Parse the text of one ``Translation-<lang>`` index into descriptions, in file order.

    Stanzas without ``Package``, a valid ``Description-md5`` or a ``Description-<lang>``
    field are skipped (apt would not use them either).
    """
    out: list[Description] = []
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None

    def finish():
        package = fields.get("package", [""])[0].strip()
        md5 = fields.get("description-md5", [""])[0].strip().lower()
        desc = next((v for k, v in fields.items() if k.startswith("description-") and k != "description-md5"), None)
        if package and desc is not None and _MD5.fullmatch(md5):
            out.append(Description(package, md5, desc[0].strip(), _paragraphs(desc[1:])))

    for line in text.split("\n"):
        if not line.strip():
            if fields:
                finish()
                fields = {}
            current = None
        elif line[0] in (" ", "\t"):
            if current is not None:
                current.append(line)
        else:
            key, sep, value = line.partition(":")
            if not sep:
                current = None
                continue
            current = [value]
            fields[key.strip().lower()] = current
    if fields:
        finish()
    return out


@functools.lru_cache(maxsize=8)
def _load_cached(lang: str, stamps: tuple[tuple[str, int, int], ...]) -> dict[str, Description]:
    # ``stamps`` (path, mtime_ns, size) is the cache key: a rewritten index re-reads.
    result: dict[str, Description] = {}
    for path, _, _ in stamps:
        for d in parse_translation_index(_read_index(Path(path))):
            result.setdefault(d.md5, d)
    return result


def load_descriptions(lang: str, lists_dir: str | os.PathLike = APT_LISTS) -> dict[str, Description]:
    """All package descriptions in ``lang``, keyed by ``Description-md5``.

    Reads every ``Translation-<lang>`` index in ``lists_dir`` (in name order) and keeps
    the first description per md5, so the packages that share one description (e.g.
    ``foo`` and ``foo-data``) count once. Parsed results are cached in-process per file
    paths and modification times; each call returns a new dict (the values are frozen).

    Raises:
        ValueError: ``lang`` is not a language code.
        FileNotFoundError: no index for ``lang``; the message names the command to fetch it.
    """
    _check_lang(lang)
    files = translation_index_files(lang, lists_dir)
    if not files:
        raise FileNotFoundError(
            f"no apt description index Translation-{lang} in {lists_dir}; fetch it with "
            f"`sudo {_command(('en', lang) if lang != 'en' else ('en',))}` "
            "or call ensure_translation_indexes()"
        )
    stamps = []
    for p in files:
        st = p.stat()
        stamps.append((str(p), st.st_mtime_ns, st.st_size))
    return dict(_load_cached(lang, tuple(stamps)))
