"""The combined German-English corpus: each source's parser on real-format fixtures,
filters, de-duplication, leak exclusion, source tags, caching, determinism."""

import gettext
import shutil
import struct
from pathlib import Path

import pytest

from attnlab.data import corpus_de_en as cd
from attnlab.data import de_en
from attnlab.data.corpus_de_en import (
    SOURCES,
    Corpus,
    Pair,
    corpus_summary,
    description_pairs,
    ding_word_pairs,
    gettext_pairs,
    load_corpus,
    normalize,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "corpus_de_en"
DING = FIXTURES / "ding.txt"
LISTS = FIXTURES / "lists"
# The fixture's 19 + 2 + 2 strict sentences, split with valid=2, test=2, seed 0.
TEST = [("Er lernt rasch.", "He's quick at learning."),
        ("Wie schaut's denn jetzt geldmäßig beim Club aus?", "How's the club fixed for money now?")]
VALID = [("Wir haben das Haus gemietet.", "We rented the house on a lease."),
         ("Kann Brand verursachen.", "May cause fire.")]

CATALOG = {
    "": "Content-Type: text/plain; charset=UTF-8\n",  # header: skipped
    "Open File": "Datei öffnen",
    "_Open": "Ö_ffnen",  # accelerators on both sides
    "&Save": "&Speichern",
    "Tom && Jerry": "Tom && Jerry",  # identical after unescaping: dropped
    "menu\x04Quit": "Beenden",  # msgctxt dropped
    "Could not open %s": "Konnte %s nicht öffnen",  # placeholder: dropped
    "Hello {name}": "Hallo {name}",
    "Usage: foo [OPTION]\nShow things.": "Aufruf: foo [OPTION]\nDinge zeigen.",  # multi-line: skipped
    "Use --force to overwrite": "Verwenden Sie --force zum Überschreiben",  # option: dropped
    "See <b>help</b>": "Siehe <b>Hilfe</b>",  # markup: dropped
    "max_depth of the tree": "max_depth des Baums",  # same identifier both sides: skipped
    "Empty": "",  # untranslated: skipped
}
PLURAL = {("One file", 0): "Eine Datei", ("One file", 1): "Viele Dateien"}


def write_mo(path: Path, messages: dict, plurals: dict = (), charset_bytes=None) -> Path:
    """A GNU .mo file (the format `msgfmt` writes, hash table omitted) from {msgid: msgstr};
    plural entries {(singular, i): msgstr} are written as 'singular\\0plural' -> 'str0\\0str1'."""
    messages = {"": "Content-Type: text/plain; charset=UTF-8\n", **messages}  # a header as msgfmt writes
    entries = {k.encode(): v.encode() for k, v in messages.items()}
    groups: dict[str, list[str]] = {}
    for (sing, i), s in dict(plurals).items():
        groups.setdefault(sing, []).append(s)
    for sing, strs in groups.items():
        entries[(sing + "\0" + sing + "s").encode()] = "\0".join(strs).encode()
    if charset_bytes is not None:
        entries.update(charset_bytes)
    keys = sorted(entries)
    ids = strs = b""
    offsets = []
    for k in keys:
        offsets.append((len(ids), len(k), len(strs), len(entries[k])))
        ids += k + b"\0"
        strs += entries[k] + b"\0"
    n = len(keys)
    start = 7 * 4 + 16 * n
    head = struct.pack("Iiiiiii", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    koffs = b"".join(struct.pack("ii", ln, start + o) for o, ln, _, _ in offsets)
    voffs = b"".join(struct.pack("ii", ln, start + len(ids) + o) for _, _, o, ln in offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + koffs + voffs + ids + strs)
    return path


@pytest.fixture()
def locale(tmp_path):
    write_mo(tmp_path / "locale" / "de" / "LC_MESSAGES" / "demo.mo", CATALOG, PLURAL)
    return tmp_path / "locale"


@pytest.fixture(autouse=True)
def _fresh_cache():
    cd.clear_cache()
    yield
    cd.clear_cache()


def corpus(tmp_path, locale_dir, **kw) -> Corpus:
    args = dict(ding_path=DING, locale_dir=locale_dir, lists_dir=LISTS, valid=2, test=2, cache_dir=None, quiet=True)
    return load_corpus(**{**args, **kw})


# ----------------------------------------------------------------------------- parsers


def test_mo_writer_is_read_by_stdlib(locale):
    # The fixture writer makes files the stdlib parser accepts (so the parser test is real).
    tr = gettext.GNUTranslations(open(locale / "de" / "LC_MESSAGES" / "demo.mo", "rb"))
    assert tr.gettext("Open File") == "Datei öffnen"
    assert tr.ngettext("One file", "One files", 5) == "Viele Dateien"


def test_gettext_pairs_strip_accelerators_context_and_take_singular(locale):
    pairs = gettext_pairs([locale / "de" / "LC_MESSAGES" / "demo.mo"])
    assert ("Datei öffnen", "Open File") in pairs
    assert ("Öffnen", "Open") in pairs
    assert ("Speichern", "Save") in pairs
    assert ("Tom & Jerry", "Tom & Jerry") in pairs  # '&&' is a literal '&'
    assert ("Beenden", "Quit") in pairs  # context "menu" gone
    assert ("Eine Datei", "One file") in pairs  # plural: singular only
    assert all("Viele" not in d for d, _ in pairs)
    assert all("\n" not in d and "\n" not in e for d, e in pairs)
    assert all(e != "Empty" for _, e in pairs)
    assert all("depth" not in e for _, e in pairs)
    assert ("", "") not in pairs and all(d and e for d, e in pairs)


def test_gettext_undecodable_catalog_skipped_with_warning(tmp_path, locale):
    bad = write_mo(tmp_path / "bad.mo", {}, charset_bytes={b"Hello": "Grüße".encode("latin-1")})
    warnings = []
    pairs = gettext_pairs([bad, locale / "de" / "LC_MESSAGES" / "demo.mo"], warnings.append)
    assert len(warnings) == 1 and "bad.mo" in warnings[0] and "UnicodeDecodeError" in warnings[0]
    assert ("Datei öffnen", "Open File") in pairs  # the good catalog still read


def test_gettext_latin1_catalog_with_a_non_ascii_header_is_read(tmp_path):
    # Old catalogs declare charset=iso-8859-1 and name the translator in Latin-1; the
    # stdlib parser decodes that header as UTF-8 and fails, attnlab reads it anyway.
    header = "Last-Translator: Ralf Bächle\nContent-Type: text/plain; charset=iso-8859-1\n".encode("latin-1")
    mo = write_mo(tmp_path / "net-tools.mo", {}, charset_bytes={
        b"": header, b"Active connections": "Aktive Verbindungen für Geräte".encode("latin-1")})
    with pytest.raises(UnicodeDecodeError):
        gettext.GNUTranslations(open(mo, "rb"))  # the stdlib alone
    warnings = []
    pairs = gettext_pairs([mo], warnings.append)
    assert warnings == []
    assert pairs == [("Aktive Verbindungen für Geräte", "Active connections")]


def test_strip_accelerator_refuses_identifiers():
    assert cd._strip_accelerator("Ö_ffnen") == "Öffnen"
    assert cd._strip_accelerator("_a_b") is None
    assert cd._strip_accelerator("Rock & Roll") == "Rock & Roll"


def test_ding_word_pairs_rules():
    lines = [
        "# comment",
        "Aalleiter {f}; Aaltreppe {f}; Aalpass {m} (Wasserbau) | Aalleitern {pl} :: eel ladder (water engineering) | eel ladders",
        "Akte {f}; Akt {m} [Ös.] :: file; record",  # n x m: first with first only
        "Abkürzung {f} /Abk./ :: abbreviation /abbr./",  # abbreviation marks go
        "kollektivistisch {adj} ~ Kollektivismus :: collectivist {adj} ~ collectivism",  # '~' zipped
        "eins ~ zwei :: one",  # '~' counts differ: dropped
        "kaputt (defekt :: broken",  # unbalanced bracket: dropped
        "a; b; c; d; e; f; g; h; i :: x; y",  # more than MAX_ALTERNATIVES: first pair only
        "Er lernt rasch. :: He's quick at learning.",  # excluded below
    ]
    pairs = ding_word_pairs(lines, exclude=[("Er lernt rasch.", "He's quick at learning.")])
    assert pairs == [
        ("Aalleiter", "eel ladder"), ("Aaltreppe", "eel ladder"), ("Aalpass", "eel ladder"),
        ("Aalleitern", "eel ladders"),
        ("Akte", "file"),
        ("Abkürzung", "abbreviation"),
        ("kollektivistisch", "collectivist"), ("Kollektivismus", "collectivism"),
        ("a", "x"),
    ]


def test_pair_alternatives_one_to_many_both_ways():
    assert cd._pair_alternatives(["a"], ["x", "y"]) == [("a", "x"), ("a", "y")]
    assert cd._pair_alternatives(["a", "b"], ["x"]) == [("a", "x"), ("b", "x")]
    assert cd._pair_alternatives([], ["x"]) == []


def _desc(md5, short, *paragraphs):
    from attnlab.data.apt_descriptions import Description

    return Description("pkg", md5, short, tuple(paragraphs))


def test_description_pairs_paragraphs_sentences_bullets_verbatim():
    en = {
        "m1": _desc("m1", "tool", "It works. It is fast.", "Intro:\n - one thing\n - two things", "Run:\n  $ make"),
        "m2": _desc("m2", "lib", "One paragraph.", "Another one."),  # counts differ from German
        "m3": _desc("m3", "only English"),
        "m4": _desc("m4", "wrapped", " * item one\n   continues here"),
    }
    de = {
        "m1": _desc("m1", "Werkzeug", "Es geht. Es ist schnell.", "Einführung:\n - ein Ding\n - zwei Dinge",
                    "Ausführen:\n  $ make"),
        "m2": _desc("m2", "Bibliothek", "Ein einziger Absatz."),
        "m4": _desc("m4", "umbrochen", " * Punkt eins\n   geht weiter"),
    }
    assert description_pairs(en, de) == [
        ("Werkzeug", "tool"),
        ("Es geht.", "It works."), ("Es ist schnell.", "It is fast."),
        ("Einführung:", "Intro:"), ("ein Ding", "one thing"), ("zwei Dinge", "two things"),
        # the verbatim paragraph is skipped
        ("Bibliothek", "lib"),
        ("umbrochen", "wrapped"), ("Punkt eins geht weiter", "item one continues here"),
    ]


def test_description_pairs_unequal_sentence_counts_keep_the_paragraph():
    en = {"m": _desc("m", "s", "First. Second.")}
    de = {"m": _desc("m", "S", "Erster und zweiter.")}
    assert description_pairs(en, de)[1] == ("Erster und zweiter.", "First. Second.")


def test_description_pairs_on_real_index_fixture():
    from attnlab.data.apt_descriptions import load_descriptions

    pairs = description_pairs(load_descriptions("en", LISTS), load_descriptions("de", LISTS))
    assert ("Datenbankverschlüsselung", "database encryption") in pairs  # almanah's bullet list
    assert ("Dieses Paket enthält die Beispielspiele, die FLTK beiliegen.",
            "This package contains the example games that accompany FLTK.") in pairs
    # a bullet wrapped over two verbatim lines is one item
    assert any(e.startswith("update-catalog(8): tool") and e.endswith("directory.") for _, e in pairs)
    # "500 B.C. and 500 A.D. The project": 3 sentences on both sides, paired one by one
    assert ("Dieses Paket enthält die wichtigsten von 0 A.D. benötigten Datendateien.",
            "This package contains the main data files required by 0 A.D.") in pairs
    assert any(d.startswith("In Kürze") and e.startswith("In short") for d, e in pairs)


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("text", [
    "Could not open %s", "%d files", "%(name)s left", "%1$s of %2$s", "Hello {0}", "Hi {name}",
    "set $HOME", "use ${PATH}", "<b>bold</b>", "Tom &amp; Jerry", "use --force", "try -v",
    "see https://x.org", "in /usr/share", "in »/etc/sgml«", "./configure", "max_depth", "a [b]",
])
def test_placeholder_filter_catches(text):
    assert cd._has_placeholder(text)


@pytest.mark.parametrize("text", [
    "Open file", "Wer zuerst kommt, mahlt zuerst.", "50% more", "real-time strategy",
    "Dyn/cm2 angegeben", "Firefox/Linux", "Kriegs-/Wirtschaftsspiel", "It's 3 - 4 days", "Tom & Jerry", "0 A.D. is free",
])
def test_placeholder_filter_lets_prose_through(text):
    assert not cd._has_placeholder(text)


def test_normalize_equates_case_space_punctuation_apostrophes():
    assert normalize("Er  lernt rasch!") == normalize("er lernt RASCH") == "er lernt rasch"
    assert normalize("He\u2019s") == normalize("He's")
    assert normalize("Straße") == normalize("STRASSE")


def test_length_ratio_identical_filters_counted(tmp_path, locale):
    c = corpus(tmp_path, locale, max_words=3, max_ratio=1.5, sources=("gettext",))
    f = c.stats["filters"]["gettext"]
    assert list(f) == list(cd.FILTERS)
    assert all(f[a] >= f[b] for a, b in zip(cd.FILTERS, cd.FILTERS[1:]))  # each filter only drops
    for p in c.train:
        assert len(p.de.split()) <= 3 and len(p.en.split()) <= 3
        assert (max(len(p.de), len(p.en)) + 5) / (min(len(p.de), len(p.en)) + 5) <= 1.5
        assert normalize(p.de) != normalize(p.en)
    assert ("Tom & Jerry", "Tom & Jerry") not in c.pairs()


# ----------------------------------------------------------------------------- load_corpus


def test_held_out_splits_are_de_en_splits(tmp_path, locale):
    c = corpus(tmp_path, locale)
    split = de_en.split_pairs(de_en.load_pairs(DING), valid=2, test=2, seed=0)
    assert list(c.test) == split["test"] == TEST
    assert list(c.valid) == split["valid"] == VALID
    assert c.pairs("ding-sentences") == split["train"]
    assert c.stats["valid"] == 2 and c.stats["test"] == 2


def test_every_source_tagged_and_present(tmp_path, locale):
    c = corpus(tmp_path, locale)
    assert {p.source for p in c.train} == set(SOURCES)
    assert all(isinstance(p, Pair) for p in c.train)
    # grouped by source, in SOURCES order
    order = [p.source for p in c.train]
    assert order == sorted(order, key=SOURCES.index)
    assert Pair("Öffnen", "Open", "gettext") in c.train
    assert Pair("Datenbankverschlüsselung", "database encryption", "debian-descriptions") in c.train
    assert Pair("Aalleiter", "eel ladder", "ding-words") in c.train
    assert c.stats["files"] == {"ding-sentences": 1, "ding-words": 1, "debian-descriptions": 2, "gettext": 1}


def test_sources_subset_and_bad_arguments(tmp_path, locale):
    c = corpus(tmp_path, locale, sources=("gettext",))
    assert {p.source for p in c.train} == {"gettext"} and len(c.test) == 2
    with pytest.raises(ValueError, match="sources must be among.*'bible'"):
        corpus(tmp_path, locale, sources=("gettext", "bible"))
    with pytest.raises(ValueError, match="max_words"):
        corpus(tmp_path, locale, max_words=0)
    with pytest.raises(ValueError, match="max_ratio"):
        corpus(tmp_path, locale, max_ratio=0.5)
    with pytest.raises(TypeError, match="seed"):
        corpus(tmp_path, locale, seed=1.0)
    with pytest.raises(FileNotFoundError, match="ding_path"):
        corpus(tmp_path, locale, ding_path=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="source must be one of"):
        c.pairs("bible")


def test_missing_optional_sources_skipped_with_command(tmp_path, capsys):
    c = load_corpus(ding_path=DING, locale_dir=tmp_path / "none", lists_dir=tmp_path / "none",
                    valid=2, test=2, cache_dir=None)
    err = capsys.readouterr().err
    assert "skipping gettext" in err and "apt-get install" in err
    assert "skipping debian-descriptions" in err and "Acquire::Languages=en,de update" in err
    assert set(c.stats["skipped"]) == {"gettext", "debian-descriptions"}
    assert {p.source for p in c.train} == {"ding-sentences", "ding-words"}
    assert "skipped gettext" in corpus_summary(c)


def _plant(tmp_path, de, en):
    """Fixtures with the pair (de, en) planted in every source: a Ding word entry, a
    catalog message, a description paragraph (German side only, to check either side)."""
    ding = tmp_path / "ding.txt"
    ding.write_text(DING.read_text(encoding="utf-8")
                    + f"Wort {{n}}; {de} :: word\nZeichen {{n}} :: sign; {en}\n", encoding="utf-8")
    write_mo(tmp_path / "loc" / "de" / "LC_MESSAGES" / "x.mo", {en.upper(): de, "Open File": "Datei öffnen"})
    lists = tmp_path / "lists"
    shutil.copytree(LISTS, lists)
    name = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-"
    (lists / f"{name}en").write_text((LISTS / f"{name}en").read_text() + (
        "Package: planted\nDescription-md5: 0123456789abcdef0123456789abcdef\n"
        "Description-en: planted package\n Something else entirely here.\n"), encoding="utf-8")
    (lists / f"{name}de").write_text((LISTS / f"{name}de").read_text() + (
        "Package: planted\nDescription-md5: 0123456789abcdef0123456789abcdef\n"
        f"Description-de: gepflanztes Paket\n {de}\n"), encoding="utf-8")
    return ding, tmp_path / "loc", lists


def test_held_out_sentences_never_reach_train(tmp_path):
    held = TEST + VALID
    ding, loc, lists = _plant(tmp_path, *TEST[0])
    c = load_corpus(ding_path=ding, locale_dir=loc, lists_dir=lists, valid=2, test=2, cache_dir=None, quiet=True)
    assert list(c.test) == TEST  # appending entries did not move the split
    keys = {normalize(s) for pair in held for s in pair}
    for p in c.train:
        assert normalize(p.de) not in keys and normalize(p.en) not in keys, p
    drop = c.stats["leak_dropped"]
    assert drop["ding-words"] == 2 and drop["gettext"] == 1 and drop["debian-descriptions"] == 1
    assert drop["ding-sentences"] == 0
    assert Pair("Wort", "word", "ding-words") in c.train  # the entry's clean alternative stays
    assert Pair("Datei öffnen", "Open File", "gettext") in c.train
    f = c.stats["filters"]
    assert all(f[s]["identical"] - f[s]["leak"] == drop[s] for s in SOURCES)


def test_dedup_across_sources_keeps_first_source(tmp_path):
    # "Aas fressen :: to scavenge" is a Ding word; the same pair (other case and
    # punctuation) in a catalog is a duplicate and counted out of gettext.
    loc = tmp_path / "loc"
    write_mo(loc / "de" / "LC_MESSAGES" / "x.mo", {"To scavenge!": "aas  fressen", "Open File": "Datei öffnen"})
    c = corpus(tmp_path, loc)
    assert Pair("Aas fressen", "to scavenge", "ding-words") in c.train
    assert not any(p.source == "gettext" and normalize(p.en) == "to scavenge" for p in c.train)
    f = c.stats["filters"]["gettext"]
    assert f["leak"] - f["unique"] == 1
    keys = [(normalize(p.de), normalize(p.en)) for p in c.train]
    assert len(keys) == len(set(keys))


def test_deterministic_and_cached_on_disk(tmp_path, locale):
    cache = tmp_path / "cache"
    a = corpus(tmp_path, locale, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert {f.split("-")[0] for f in files} >= {"ding", "gettext", "debian"}
    assert not any(f.endswith(".tmp") for f in files)
    cd.clear_cache()
    b = corpus(tmp_path, locale, cache_dir=cache)  # read back from disk
    cd.clear_cache()
    c = corpus(tmp_path, locale, cache_dir=None)  # parsed again
    assert a.train == b.train == c.train and a.test == b.test == c.test
    assert a.stats == b.stats == c.stats
    assert corpus(tmp_path, locale, cache_dir=None) is c  # in-process reuse


def test_cache_invalidated_when_a_file_changes(tmp_path, locale):
    cache = tmp_path / "cache"
    mo = locale / "de" / "LC_MESSAGES" / "demo.mo"
    a = corpus(tmp_path, locale, cache_dir=cache)
    assert Pair("Beenden", "Quit", "gettext") in a.train
    write_mo(mo, {"Close": "Schließen"})
    b = corpus(tmp_path, locale, cache_dir=cache)
    assert Pair("Schließen", "Close", "gettext") in b.train
    assert Pair("Beenden", "Quit", "gettext") not in b.train


def test_damaged_cache_file_is_rebuilt(tmp_path, locale):
    cache = tmp_path / "cache"
    a = corpus(tmp_path, locale, cache_dir=cache)
    for f in cache.iterdir():
        f.write_text("{not json")
    cd.clear_cache()
    assert corpus(tmp_path, locale, cache_dir=cache).train == a.train


def test_corpus_summary_table(tmp_path, locale):
    c = corpus(tmp_path, locale)
    text = corpus_summary(c)
    lines = text.splitlines()
    assert lines[0].split() == ["filter", *SOURCES, "total"]
    unique = next(ln for ln in lines if ln.startswith("unique")).split()
    assert [int(v.replace(",", "")) for v in unique[1:]] == (
        [c.stats["filters"][s]["unique"] for s in SOURCES] + [len(c.train)])
    assert f"train {len(c.train):,} pairs; valid 2, test 2" in text


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not Path(de_en.DEFAULT_PATH).is_file(), reason="needs Debian trans-de-en")
def test_real_corpus_keeps_translate_splits(tmp_path):
    from attnlab.translate import DataSettings, load_splits

    c = load_corpus(sources=("ding-sentences",), cache_dir=None, quiet=True)
    split = load_splits(DataSettings())
    assert list(c.test) == split["test"] and list(c.valid) == split["valid"]
    assert len(c.test) == 1000 and len(c.valid) == 1000
