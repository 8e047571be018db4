"""German-English pairs: loading/filters on a real excerpt, split, batching, Debian install."""

import random
import subprocess
import unicodedata
from pathlib import Path

import pytest
import torch

from attnlab.data import de_en, debian
from attnlab.data.de_en import (
    Batch,
    clean_item,
    encode_pairs,
    load_pairs,
    load_pairs_with_counts,
    make_batches,
    padding_fraction,
    pair_stats,
    split_pairs,
)
from attnlab.data.debian import DebianPackageMissing, ensure_debian_package
from attnlab.data.tokenizer import SubwordTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "de-en-excerpt.txt"
REAL = Path(de_en.DEFAULT_PATH)

# Worked out by hand from the 22 entries of the fixture, in file order.
STRICT = [
    ("Holen Sie mir die Akte / den Akt.", "Get me the record of the case."),  # "[Ös.]." -> "."
    ("Wir haben Besuch.", "We've got visitors."),  # "(ungebetenen)" dropped, ’ -> '
    ("Alle Mann an Deck!", "All hands on deck!"),  # appears again later: kept once
    (
        "Der Schalldruck wird in Einheiten wie Pascal, Mikrobar oder Dyn/cm2 angegeben.",
        "Sound pressure is expressed in units such as pascal, microbar, or dyne/cm2.",
    ),
    (
        "Seine Zeit wäre mit dem Erlernen neuer Fähigkeiten besser genutzt.",
        "His time could be better employed in learning new skills.",
    ),  # "Arbeiten mit Firefox/Linux/Windows usw." in the same entry is dropped
    ("Pausenloses Üben kann zu Problemen führen.", "Continual exercise can cause problems."),
    ("Es gab laufend Interventionsversuche.", "There were continual attempts to intervene."),
    (
        "Die fortgesetzten Angriffe von Hackern legten den Internetrechner lahm.",
        "Continual attacks by hackers knocked out the Internet server.",
    ),
    (
        "Es tut mir leid, bei diesen ständigen Unterbrechungen kann ich nicht arbeiten.",
        "I'm sorry, I can't work with these continual interruptions.",
    ),
    (
        "Mit dem Auto habe ich vom ersten Tag an nur Probleme gehabt.",
        "I've had continual problems with this car ever since I bought it.",
    ),
    ("Das geht mir zu schnell.", "That's too quick for me."),
    ("Er lernt rasch.", "He's quick at learning."),  # its second entry adds nothing
    ("Er ist jetzt sicherer in Bezug auf seine Fähigkeiten.", "He has become more confident in his skills."),
    ("Sie war zuversichtlich, dass sie gewinnen würde.", "She was confident that she would win."),
    (
        "Ich bin optimistisch, dass ich da noch gegensteuern kann.",
        "I am confident about my ability to turn this situation around.",
    ),
    (
        "„Sind Sie sich sicher?“, fragte der Quizmoderator den Kandidaten.",
        "'Are you confident?', the quizmaster asked the contestant.",
    ),
    ("Wie sieht's bei dir mit Bargeld aus?", "How are you fixed/off for cash?"),  # "[Br.]", "[coll.]"
    ("Wie schaut's denn jetzt geldmäßig beim Club aus?", "How's the club fixed for money now?"),
    ("Wie sind wir für Samstag verblieben?", "How are we fixed for Saturday?"),
    ("Was war zuerst da? Die Henne oder das Ei?", "Which came first? The chicken or the egg?"),
    ("Wer zuerst kommt, mahlt zuerst.", "First come, first served."),  # "[Sprw.]" dropped
    ("Wir haben das Haus gemietet.", "We rented the house on a lease."),  # "(gepachtet)" dropped
    ("Kann Brand verursachen.", "May cause fire."),  # "(Gefahrenhinweis)" / "(hazard note)"
]
# strict=False also keeps items with {..} braces or ';' synonyms, taking the first synonym.
LENIENT_EXTRA = {
    ("Er hat seine Meinung geändert.", "He has changed his view/opinion."),
    ("Deine/Ihre Frage ist nicht einfach zu beantworten.", "Answering your question is not easy."),
    ("Wir freuen uns über euer/Ihr zahlreiches Erscheinen.", "We are pleased to see so many of you here today."),
    ("Es gibt ihm mehr Sicherheit.", "It makes him feel more confident."),
    ("Wie sieht's denn bei dir am Montag zeitlich aus?", "How are you fixed for time on Monday?"),
}


# --------------------------------------------------------------------------- loading


def test_strict_pairs_of_the_real_format_excerpt():
    assert load_pairs(FIXTURE) == STRICT


def test_lenient_adds_exactly_the_first_synonyms_and_braced_items():
    lenient = load_pairs(FIXTURE, strict=False)
    assert len(lenient) == len(set(lenient)) == len(STRICT) + len(LENIENT_EXTRA)
    assert set(lenient) - set(STRICT) == LENIENT_EXTRA
    assert [p for p in lenient if p in set(STRICT)] == STRICT  # file order kept


def test_filter_counts_on_excerpt():
    _, counts = load_pairs_with_counts(FIXTURE)
    assert dict(counts) == {
        "aligned": 96, "no_grammar": 73, "has_punct": 40, "clean": 40, "no_synonyms": 35,
        "sentence": 30, "no_templates": 28, "min_words": 25, "unique": 23,
    }


def test_dropped_items_for_the_right_reason():
    got = set(load_pairs(FIXTURE, strict=False))
    # placeholders: "Wie sieht/schaut ... es bei jdm. mit etw. aus?"
    assert not any("jdm." in d or "sb." in e for d, e in got)
    # 2-word side: "Das wundert mich (nicht)." / "I’m (not) surprised.", "Im Ernst!" / "No kidding!"
    assert ("Das wundert mich.", "I'm surprised.") not in got
    assert not any(d == "Im Ernst!" for d, _ in got)
    # ends with an ellipsis, not .?!: "Es wird wohl niemanden verwundern, dass …"
    assert not any(d.endswith("…") for d, _ in got)


def test_clean_item():
    assert clean_item("Aal {m} (auf der Speisekarte) [cook.]") == "Aal"
    assert clean_item("to express sth. (as a value / in (terms of) a unit)") == "to express sth."
    assert clean_item("Holen Sie mir die Akte / den Akt [Ös.].") == "Holen Sie mir die Akte / den Akt."
    assert clean_item("to file away <> sth.  [Br.] ") == "to file away sth."
    assert clean_item("I’m  (not) surprised , really .") == "I'm surprised, really."
    assert clean_item(unicodedata.normalize("NFD", "Grüße")) == "Grüße"  # NFC
    assert clean_item("ein (offener Satz.") == "ein (offener Satz."  # unbalanced stays (then filtered)


def test_unbalanced_and_misaligned_lines_are_skipped(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text(
        "# comment :: Kommentar | x\n"
        "\n"
        "Das ist ein (offener Satz. :: This is an (open sentence.\n"
        "Eins. | Zwei drei vier. :: One two three.\n"  # 2 items vs 1: misaligned
        "Das ist gut so. :: That is fine.\n",
        encoding="utf-8",
    )
    pairs, counts = load_pairs_with_counts(f)
    assert pairs == [("Das ist gut so.", "That is fine.")]
    assert counts["aligned"] == 2 and counts["clean"] == 1


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="path must be a Ding-format dictionary file"):
        load_pairs(tmp_path / "nope")
    with pytest.raises(TypeError, match="strict must be a bool"):
        load_pairs(FIXTURE, strict="yes")


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not installed (Debian package trans-de-en)")
def test_real_dictionary_strict_size_and_cleanliness():
    pairs, counts = load_pairs_with_counts(REAL)
    assert 15_000 <= len(pairs) <= 20_000
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    assert len(set(pairs)) == len(pairs)
    for d, e in pairs:
        for s in (d, e):
            assert s[-1] in ".?!" and ";" not in s and "{" not in s and "[" not in s and "  " not in s
            assert len(s.split()) >= 3
    stats = pair_stats(pairs)
    assert 6 < stats["mean_words_de"] < 10 and 6 < stats["mean_words_en"] < 10


# --------------------------------------------------------------------------- splitting


def _synthetic(n, offset=0):
    return [(f"Das ist Satz {i}.", f"This is sentence {i}.") for i in range(offset, offset + n)]


def test_split_sizes_disjoint_and_deterministic():
    pairs = _synthetic(300)
    a = split_pairs(pairs, valid=30, test=20, seed=7)
    assert split_pairs(list(pairs), valid=30, test=20, seed=7) == a
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (250, 30, 20)
    assert sorted(a["train"] + a["valid"] + a["test"]) == sorted(pairs)
    assert [p for p in pairs if p in set(a["test"])] == a["test"]  # input order kept
    b = split_pairs(pairs, valid=30, test=20, seed=8)
    assert set(b["test"]) != set(a["test"])
    # shuffling the input changes nothing
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    c = split_pairs(shuffled, valid=30, test=20, seed=7)
    assert {k: set(v) for k, v in c.items()} == {k: set(v) for k, v in a.items()}


def test_split_keeps_shared_sentences_together():
    pairs = _synthetic(200)
    # other translations of the same English (case differs), and of the same German
    pairs += [(f"Dies ist Satz {i}.", f"THIS IS SENTENCE {i}.") for i in range(0, 200, 3)]
    pairs += [(f"Das ist Satz {i}.", f"Here is sentence {i}.") for i in range(0, 200, 5)]
    s = split_pairs(pairs, valid=25, test=25, seed=1)
    assert sum(map(len, s.values())) == len(pairs)
    for held in ("valid", "test"):
        train_en = {e.casefold() for _, e in s["train"]}
        train_de = {d.casefold() for d, _ in s["train"]}
        assert not any(e.casefold() in train_en or d.casefold() in train_de for d, e in s[held])
        assert len(s[held]) >= 25


def test_split_is_stable_when_data_is_added():
    old = _synthetic(400)
    new = old + _synthetic(100, offset=1000)
    a = split_pairs(old, valid=40, test=40, seed=3)
    b = split_pairs(new, valid=40, test=40, seed=3)
    # ranks do not depend on other pairs, so new pairs only push old ones toward train:
    # nothing from old train enters valid or test, nothing from old valid enters test
    assert not set(a["train"]) & (set(b["test"]) | set(b["valid"]))
    assert not set(a["valid"]) & set(b["test"])
    assert len(set(a["test"]) & set(b["test"])) >= 25  # ~80% of the old test survives 25% more data
    grown = split_pairs(new, valid=40, test=60, seed=3)
    assert set(a["test"]) <= set(grown["test"])


def test_split_bad_arguments():
    with pytest.raises(ValueError, match=r"valid \+ test \(60 \+ 50\) must not exceed the 100 pairs"):
        split_pairs(_synthetic(100), valid=60, test=50)
    with pytest.raises(TypeError, match="seed must be an int"):
        split_pairs(_synthetic(10), valid=1, test=1, seed="a")
    with pytest.raises(ValueError, match="valid must be >= 0"):
        split_pairs(_synthetic(10), valid=-1, test=1)


def test_pair_stats():
    pairs = [("a b c.", "x y."), ("a b.", "x y z w."), ("a b.", "v w.")]
    s = pair_stats(pairs)
    assert s["pairs"] == 3 and s["unique_de"] == 2 and s["unique_en"] == 3
    assert s["mean_words_de"] == pytest.approx(7 / 3) and s["mean_words_en"] == pytest.approx(8 / 3)
    assert s["max_words_de"] == 3 and s["max_words_en"] == 4
    with pytest.raises(ValueError, match="pairs is empty"):
        pair_stats([])


# --------------------------------------------------------------------------- batching


def _ids(n, seed=0, max_len=30):
    """Random (src + [eos], tgt) id pairs whose lengths are correlated, as in translation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s_len = rng.randrange(0, max_len)
        t_len = max(1, s_len + rng.randrange(-2, 3))
        out.append(([rng.randrange(4, 50) for _ in range(s_len)] + [2], [rng.randrange(4, 50) for _ in range(t_len)]))
    return out


def _check_batch(b: Batch, items):
    B = len(items)
    assert b.src.dtype == b.src_lengths.dtype == b.tgt_in.dtype == b.tgt_out.dtype == torch.long
    assert b.src.shape == (B, max(len(s) for s, _ in items))
    assert b.tgt_in.shape == b.tgt_out.shape == (B, max(len(t) for _, t in items) + 1)
    for i, (s, t) in enumerate(items):
        assert b.src[i].tolist() == s + [0] * (b.src.shape[1] - len(s))
        assert b.src_lengths[i].item() == len(s)
        pad = [0] * (b.tgt_in.shape[1] - len(t) - 1)
        assert b.tgt_in[i].tolist() == [1] + t + pad
        assert b.tgt_out[i].tolist() == t + [2] + pad


def _rows(b: Batch):
    """Recover each row's (src_ids, tgt_ids) from a batch."""
    out = []
    for i in range(b.src.shape[0]):
        n = int(b.src_lengths[i])
        t = b.tgt_out[i].tolist()
        out.append((b.src[i, :n].tolist(), t[: t.index(2)]))
    return out


def test_batches_hand_checked():
    items = [([5, 6, 2], [7, 8, 9]), ([5, 2], [7]), ([9, 9, 9, 9, 2], [8, 8])]
    (b,) = list(make_batches(items, batch_size=3, shuffle=False))
    assert b.src.tolist() == [[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [9, 9, 9, 9, 2]]
    assert b.src_lengths.tolist() == [3, 2, 5]
    assert b.tgt_in.tolist() == [[1, 7, 8, 9], [1, 7, 0, 0], [1, 8, 8, 0]]
    assert b.tgt_out.tolist() == [[7, 8, 9, 2], [7, 2, 0, 0], [8, 8, 2, 0]]
    # 2 + 3 pads of 15 src positions, 2 + 1 of 12 tgt_out positions
    assert padding_fraction([b]) == pytest.approx(8 / 27)


def test_unshuffled_batches_keep_order():
    items = _ids(23)
    batches = list(make_batches(items, batch_size=5, shuffle=False))
    assert [b.src.shape[0] for b in batches] == [5, 5, 5, 5, 3]
    for k, b in enumerate(batches):
        _check_batch(b, items[5 * k : 5 * k + 5])


def test_shuffled_bucketed_batches_cover_every_pair_once_and_pad_less():
    items = _ids(400, seed=1)
    batches = list(make_batches(items, batch_size=16, shuffle=True, seed=5, chunk_batches=10))
    rows = [r for b in batches for r in _rows(b)]
    assert sorted(map(repr, rows)) == sorted(map(repr, items))
    for b in batches:
        _check_batch(b, _rows(b))
    again = list(make_batches(items, batch_size=16, shuffle=True, seed=5, chunk_batches=10))
    assert all(torch.equal(x.src, y.src) and torch.equal(x.tgt_out, y.tgt_out) for x, y in zip(batches, again))
    other = list(make_batches(items, batch_size=16, shuffle=True, seed=6, chunk_batches=10))
    assert [_rows(b) for b in other] != [_rows(b) for b in batches]
    plain = list(make_batches(items, batch_size=16, shuffle=False))
    assert padding_fraction(batches) < 0.5 * padding_fraction(plain)


@pytest.mark.parametrize("shuffle", [True, False])
def test_token_budget(shuffle):
    items = _ids(200, seed=2)
    budget = 120
    batches = list(make_batches(items, batch_tokens=budget, shuffle=shuffle, seed=0))
    assert sum(b.src.shape[0] for b in batches) == 200
    for b in batches:
        # padded tokens on the longer side; a single over-long pair may exceed it alone
        assert b.src.shape[0] * max(b.src.shape[1], b.tgt_out.shape[1]) <= budget or b.src.shape[0] == 1


def test_encode_pairs_with_tokenizer():
    pairs = load_pairs(FIXTURE)
    tok = SubwordTokenizer.train([s for p in pairs for s in p], vocab_size=200)
    ids = encode_pairs(pairs, tok)
    assert len(ids) == len(pairs)
    for (de, en), (s, t) in zip(pairs, ids):
        assert s == tok.encode(de) and s[-1] == tok.eos_id
        assert t == tok.encode(en, add_eos=False) and tok.bos_id not in t and tok.eos_id not in t
    short = encode_pairs(pairs, tok, max_len=12)
    assert short == [(s, t) for s, t in ids if len(s) <= 12 and len(t) < 12]
    assert 0 < len(short) < len(ids)
    kept = [p for p, (s, t) in zip(pairs, ids) if len(s) <= 12 and len(t) < 12]
    (b,) = list(make_batches(short, batch_size=len(short), shuffle=False))
    for i, (de, en) in enumerate(kept):
        assert (tok.decode(b.src[i]), tok.decode(b.tgt_in[i]), tok.decode(b.tgt_out[i])) == (de, en, en)
    stats = pair_stats(pairs, tok)
    assert stats["mean_tokens_en"] == pytest.approx(sum(len(t) for _, t in ids) / len(ids))


def test_batching_bad_arguments():
    items = _ids(5)
    with pytest.raises(ValueError, match="give exactly one of batch_size"):
        make_batches(items, batch_size=2, batch_tokens=100)
    with pytest.raises(ValueError, match="give exactly one of batch_size"):
        make_batches(items)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        make_batches(items, batch_size=0)
    with pytest.raises(ValueError, match=r"pairs_ids\[1\] has an empty source"):
        make_batches([([3, 2], [4]), ([], [4])], batch_size=2)
    with pytest.raises(TypeError, match=r"pairs_ids\[0\] must be a \(src_ids, tgt_ids\) pair"):
        make_batches([[1, 2, 3]], batch_size=2)
    with pytest.raises(ValueError, match="max_len must be > 0"):
        encode_pairs([("a.", "b.")], None, max_len=0)
    assert list(make_batches([], batch_size=4)) == []
    with pytest.raises(ValueError, match="batches is empty"):
        padding_fraction([])


# --------------------------------------------------------------------------- Debian package


class FakeApt:
    """Records apt-get calls; the first install fails for lack of package lists."""

    def __init__(self, creates: Path, needs_update=True, fail=False):
        self.calls, self.creates, self.needs_update, self.fail = [], creates, needs_update, fail

    def __call__(self, cmd):
        self.calls.append(cmd[1:])
        if self.fail:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Sub-process /usr/bin/dpkg returned an error code (1)")
        if cmd[-1] == "update":
            self.needs_update = False
            return subprocess.CompletedProcess(cmd, 0, "Reading package lists... Done", "")
        if self.needs_update:
            return subprocess.CompletedProcess(cmd, 100, "", f"E: Unable to locate package {cmd[-1]}")
        self.creates.write_text("installed")
        return subprocess.CompletedProcess(cmd, 0, "Setting up ...", "")


def _system(monkeypatch, *, root, apt, run=None):
    monkeypatch.setattr(debian, "_is_root", lambda: root)
    monkeypatch.setattr(debian, "_apt_get", lambda: "/usr/bin/apt-get" if apt else None)
    monkeypatch.setattr(debian, "_run", run or (lambda cmd: pytest.fail(f"ran {cmd}")))
    monkeypatch.setattr(debian, "APT_LISTS", Path("/nonexistent/apt/lists"))  # no Translation indexes


def test_existing_path_runs_nothing(monkeypatch, tmp_path):
    _system(monkeypatch, root=True, apt=True)
    assert ensure_debian_package("trans-de-en", tmp_path) == tmp_path


def test_missing_without_apt_says_what_to_run(monkeypatch, tmp_path):
    _system(monkeypatch, root=True, apt=False)
    missing = tmp_path / "de-en"
    with pytest.raises(DebianPackageMissing, match=r"de-en not found; it is shipped by the Debian package 'trans-de-en', "
                       r"and apt-get is not available here\. On Debian/Ubuntu run `sudo apt-get install trans-de-en`"):
        ensure_debian_package("trans-de-en", missing)
    assert issubclass(DebianPackageMissing, FileNotFoundError)


def test_missing_without_root_says_sudo(monkeypatch, tmp_path):
    _system(monkeypatch, root=False, apt=True)
    with pytest.raises(DebianPackageMissing, match=r"Install it with `sudo apt-get install dataset-fashion-mnist`"):
        ensure_debian_package("dataset-fashion-mnist", tmp_path / "fashion")


def test_root_installs_after_update(monkeypatch, tmp_path, capsys):
    target = tmp_path / "de-en"
    apt = FakeApt(target)
    _system(monkeypatch, root=True, apt=True, run=apt)
    assert ensure_debian_package("trans-de-en", target) == target
    install = ["install", "-y", "--no-install-recommends", "trans-de-en"]
    assert apt.calls == [install, ["update"], install]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "installing Debian package trans-de-en" in err


def test_update_keeps_the_translation_indexes_already_fetched(monkeypatch, tmp_path):
    # Translation-de was fetched with -o Acquire::Languages=en,de (combined corpus); a plain
    # `apt-get update` would delete it, so the update names the languages found.
    target = tmp_path / "de-en"
    apt = FakeApt(target)
    _system(monkeypatch, root=True, apt=True, run=apt)
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in ("deb.debian.org_debian_dists_bookworm_main_i18n_Translation-de.lz4",
                 "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-pt_BR",
                 "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4"):
        (lists / name).write_text("")
    monkeypatch.setattr(debian, "APT_LISTS", lists)
    assert ensure_debian_package("trans-de-en", target) == target
    assert apt.calls[1] == ["-o", "Acquire::Languages=de,en,pt_BR", "update"]


def test_root_install_failure_reports_apt_output(monkeypatch, tmp_path):
    _system(monkeypatch, root=True, apt=True, run=FakeApt(tmp_path / "x", fail=True))
    with pytest.raises(DebianPackageMissing, match=r"`apt-get install trans-de-en` failed \(exit 100\):\n  E: Sub-process"):
        ensure_debian_package("trans-de-en", tmp_path / "x")


def test_installed_but_still_missing(monkeypatch, tmp_path):
    apt = FakeApt(tmp_path / "elsewhere", needs_update=False)
    _system(monkeypatch, root=True, apt=True, run=apt)
    with pytest.raises(DebianPackageMissing, match=r"installed the Debian package 'trans-de-en' but .* is still missing"):
        ensure_debian_package("trans-de-en", tmp_path / "de-en")


def test_bad_package_name(tmp_path):
    with pytest.raises(ValueError, match="package must be a Debian package name"):
        ensure_debian_package("trans de-en; rm -rf /", tmp_path / "x")


def test_load_pairs_default_path_goes_through_ensure(monkeypatch, tmp_path):
    _system(monkeypatch, root=False, apt=False)
    missing = str(tmp_path / "trans" / "de-en")
    monkeypatch.setattr(de_en, "DEFAULT_PATH", missing)
    with pytest.raises(DebianPackageMissing, match="sudo apt-get install trans-de-en"):
        load_pairs(missing)
