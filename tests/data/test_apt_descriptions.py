"""apt Translation-<lang> index parsing, on fixtures written in the real stanza format."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from attnlab.data import apt_descriptions as ad
from attnlab.data.apt_descriptions import (
    Description,
    ensure_translation_indexes,
    load_descriptions,
    parse_translation_index,
    translation_index_files,
)

MD5_A = "d943033bedada21853d2ae54a2578a7b"
MD5_B = "183c49f6505eb3432d1b069800f1f5b6"
MD5_C = "2d3a24661b5ec0391d6bd1aedf7c20b7"

MAIN_EN = f"""Package: 0ad
Description-md5: {MD5_A}
Description-en: Real-time strategy game of ancient warfare
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare.

Package: 0xffff
Description-md5: {MD5_B}
Description-en: Open Free Fiasco Firmware Flasher
 The 0xFFFF utility implements
 a free userspace handler.
 .
 Supported operations include:
  * generating images
  * flashing   devices
 .
 Supported are the Nokia 770 and N9.

Package: 0ad-dup
Description-md5: {MD5_A}
Description-en: a later duplicate that must not win
 ignored

Package: broken-no-md5
Description-en: skipped
 no md5 here
"""

UPDATES_EN = f"""Package: 2048
Description-md5: {MD5_C}
Description-en: Slide and add puzzle game for text mode
 A puzzle.
"""

MAIN_DE = f"""Package: 0ad
Description-md5: {MD5_A}
Description-de: Echtzeit-Strategiespiel über antike Kriegsführung
 0 A.D. ist ein freies Spiel.
"""


def write_lists(folder: Path, compress=gzip.compress) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "partial").mkdir()
    # Names sort so that the 'a_' suite is read before 'b_'.
    (folder / "a_dists_bookworm_main_i18n_Translation-en.gz").write_bytes(compress(MAIN_EN.encode()))
    (folder / "b_dists_bookworm-updates_main_i18n_Translation-en").write_text(UPDATES_EN + "\n" + MAIN_EN)
    (folder / "a_dists_bookworm_main_i18n_Translation-de.xz").write_bytes(lzma.compress(MAIN_DE.encode()))
    # Neither a download in progress nor another language's index is read.
    (folder / "partial" / "c_i18n_Translation-en").write_text(UPDATES_EN.replace("2048", "partial"))
    (folder / "a_dists_bookworm_main_i18n_Translation-de_DE").write_text(MAIN_DE)
    (folder / "a_dists_bookworm_main_binary-amd64_Packages").write_text("Package: x\n")
    return folder


def test_parse_paragraphs_verbatim_and_skips():
    descs = parse_translation_index(MAIN_EN)
    assert [d.package for d in descs] == ["0ad", "0xffff", "0ad-dup"]
    b = descs[1]
    assert b == Description(
        package="0xffff",
        md5=MD5_B,
        short="Open Free Fiasco Firmware Flasher",
        paragraphs=(
            "The 0xFFFF utility implements a free userspace handler.",
            "Supported operations include:\n * generating images\n * flashing   devices",
            "Supported are the Nokia 770 and N9.",
        ),
    )
    assert b.text.count("\n\n") == 2


def test_parse_without_trailing_newline_and_crlf_free_tail():
    descs = parse_translation_index(UPDATES_EN.rstrip("\n"))
    assert descs == [Description("2048", MD5_C, "Slide and add puzzle game for text mode", ("A puzzle.",))]


def test_index_files_filters_language_partial_and_suffix(tmp_path):
    lists = write_lists(tmp_path / "lists")
    en = translation_index_files("en", lists)
    assert [p.name for p in en] == [
        "a_dists_bookworm_main_i18n_Translation-en.gz",
        "b_dists_bookworm-updates_main_i18n_Translation-en",
    ]
    assert [p.name for p in translation_index_files("de", lists)] == ["a_dists_bookworm_main_i18n_Translation-de.xz"]
    assert translation_index_files("fr", lists) == []
    assert translation_index_files("en", tmp_path / "nope") == []


def test_load_multiple_files_dedup_first_wins(tmp_path):
    lists = write_lists(tmp_path / "lists")
    en = load_descriptions("en", lists)
    assert set(en) == {MD5_A, MD5_B, MD5_C}
    assert en[MD5_A].package == "0ad"  # first file, first stanza
    assert en[MD5_C].short == "Slide and add puzzle game for text mode"
    de = load_descriptions("de", lists)
    assert set(de) == {MD5_A}
    assert de[MD5_A].short == "Echtzeit-Strategiespiel über antike Kriegsführung"
    # translations share the English md5
    assert de.keys() & en.keys() == {MD5_A}


def test_cache_returns_copies_and_rereads_changed_files(tmp_path):
    lists = write_lists(tmp_path / "lists")
    first = load_descriptions("en", lists)
    first.clear()
    assert len(load_descriptions("en", lists)) == 3
    plain = lists / "b_dists_bookworm-updates_main_i18n_Translation-en"
    plain.write_text(UPDATES_EN.replace("A puzzle.", "A changed puzzle, longer now."))
    os.utime(plain, ns=(1, 10**18))
    assert load_descriptions("en", lists)[MD5_C].paragraphs == ("A changed puzzle, longer now.",)


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 tool not installed")
def test_lz4_index(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    src = tmp_path / "plain"
    src.write_text(MAIN_DE)
    subprocess.run(["lz4", "-q", str(src), str(folder / "x_i18n_Translation-de.lz4")], check=True)
    assert load_descriptions("de", folder)[MD5_A].package == "0ad"


def test_missing_index_names_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get -o Acquire::Languages=en,de update"):
        load_descriptions("de", tmp_path)
    # Not apt's own lists folder: never runs apt, says what to run.
    with pytest.raises(FileNotFoundError, match=r"Acquire::Languages=en,fr update"):
        ensure_translation_indexes(("en", "fr"), tmp_path)


def test_ensure_present_runs_nothing(tmp_path, monkeypatch):
    lists = write_lists(tmp_path / "lists")
    monkeypatch.setattr(ad, "_run", lambda cmd: pytest.fail("must not run apt"))
    ensure_translation_indexes(("en", "de"), lists)


def test_ensure_runs_apt_as_root(tmp_path, monkeypatch, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    calls = []

    def fake_run(cmd):
        calls.append(cmd)
        write_lists(tmp_path / "scratch")
        for p in (tmp_path / "scratch").glob("*Translation-*"):
            shutil.copy(p, lists / p.name)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ad, "APT_LISTS", lists)
    monkeypatch.setattr(ad, "_is_root", lambda: True)
    monkeypatch.setattr(ad, "_apt_get", lambda: "/usr/bin/apt-get")
    monkeypatch.setattr(ad, "_run", fake_run)
    ensure_translation_indexes(("en", "de"), lists)
    assert calls == [["/usr/bin/apt-get", "-o", "Acquire::Languages=en,de", "update"]]
    assert "Acquire::Languages=en,de" in capsys.readouterr().err


def test_ensure_reports_apt_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(ad, "APT_LISTS", tmp_path)
    monkeypatch.setattr(ad, "_is_root", lambda: True)
    monkeypatch.setattr(ad, "_apt_get", lambda: "/usr/bin/apt-get")
    monkeypatch.setattr(ad, "_run", lambda cmd: subprocess.CompletedProcess(cmd, 100, "", "E: no network"))
    with pytest.raises(FileNotFoundError, match="exit 100"):
        ensure_translation_indexes("de", tmp_path)


@pytest.mark.parametrize("bad", ["EN", "english", "", "de-DE", 5, "../x"])
def test_bad_lang(bad, tmp_path):
    with pytest.raises(ValueError, match="lang must be"):
        translation_index_files(bad, tmp_path)
    with pytest.raises(ValueError, match="lang must be"):
        load_descriptions(bad, tmp_path)


def test_ensure_empty_langs(tmp_path):
    with pytest.raises(ValueError, match="langs"):
        ensure_translation_indexes((), tmp_path)


@pytest.mark.skipif(not translation_index_files("en"), reason="apt has no Translation-en here")
def test_real_english_index():
    en = load_descriptions("en")
    assert len(en) > 10_000
    d = next(iter(en.values()))
    assert d.short and len(d.md5) == 32
