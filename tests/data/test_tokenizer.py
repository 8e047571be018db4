"""SubwordTokenizer: special ids, round trips (umlauts, quotes, punctuation), save/load."""

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from attnlab.data.de_en import load_pairs
from attnlab.data.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, SubwordTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "de-en-excerpt.txt"
EXTRA = [
    "Schöne Grüße aus Köln!",
    "Ärger über Öl, Übermut und Äpfel; ist das gemäß der Maße?",
    "Er sagte: „Ich weiß es nicht.“ (Wirklich?)",
    "She said: “It's 5 o'clock - isn't it?”",
]


@pytest.fixture(scope="module")
def texts():
    pairs = load_pairs(FIXTURE, strict=False)
    return [s for pair in pairs for s in pair] + EXTRA


@pytest.fixture(scope="module")
def tok(texts):
    return SubwordTokenizer.train(texts, vocab_size=300, min_frequency=2)


def test_special_tokens_at_fixed_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    for i, name in enumerate(["<pad>", "<s>", "</s>", "<unk>"]):
        assert tok.backend.token_to_id(name) == i
    assert SPECIAL_TOKENS == ("<pad>", "<s>", "</s>", "<unk>")


def test_vocab_size_reached_and_bounded(texts):
    small = SubwordTokenizer.train(texts, vocab_size=150)
    assert small.vocab_size == 150
    # the tiny corpus cannot support 5000 merges: fewer, never more
    big = SubwordTokenizer.train(texts, vocab_size=5000)
    assert 150 < big.vocab_size < 5000


def test_round_trip_training_sentences(tok, texts):
    for s in texts:
        assert tok.decode(tok.encode(s)) == s, s


def test_umlauts_are_whole_characters(tok):
    pieces = tok.tokens(tok.encode("Schöne Grüße aus Köln!", add_eos=False))
    assert "".join(pieces).replace("\u2581", " ").strip() == "Schöne Grüße aus Köln!"
    # pieces are text, not UTF-8 bytes shown as Latin-1 ("Ã¶" for "ö") as in byte-level BPE
    assert any("ö" in p for p in pieces) and not any("Ã" in p for p in pieces)
    assert tok.unk_id not in tok.encode("Öl Äpfel Übermut ß ä ö ü")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_round_trip_any_normalized_text(tok, texts, data):
    # any single-spaced text over characters seen in training round-trips exactly
    alphabet = sorted({c for s in texts for c in s} - {" "})
    words = data.draw(st.lists(st.text(alphabet=alphabet, min_size=1, max_size=8), min_size=1, max_size=6))
    s = " ".join(words)
    assert tok.decode(tok.encode(s)) == s


def test_encode_bos_eos_flags(tok):
    core = tok.encode("Er lernt rasch.", add_eos=False)
    assert tok.encode("Er lernt rasch.") == core + [2]
    assert tok.encode("Er lernt rasch.", add_bos=True) == [1] + core + [2]
    assert tok.encode("Er lernt rasch.", add_bos=True, add_eos=False) == [1] + core
    assert not {0, 1, 2} & set(core)
    assert tok.encode_batch(["Er lernt rasch.", "Alle Mann an Deck!"], add_bos=True) == [
        tok.encode("Er lernt rasch.", add_bos=True),
        tok.encode("Alle Mann an Deck!", add_bos=True),
    ]


def test_decode_strips_special_tokens_and_accepts_tensors(tok):
    s = "Wir haben das Haus gemietet."
    ids = tok.encode(s, add_bos=True) + [0, 0]
    assert tok.decode(ids) == s
    assert tok.decode(torch.tensor(ids)) == s
    assert tok.decode([]) == ""


def test_unseen_character_maps_to_unk(tok):
    ids = tok.encode("Er lernt ☃ rasch.")
    assert tok.unk_id in ids
    assert tok.decode(ids) == "Er lernt  rasch."  # unk is a special token: dropped


def test_tokens_are_readable_pieces(tok):
    ids = tok.encode("Er lernt rasch.", add_bos=True)
    pieces = tok.tokens(ids)
    assert len(pieces) == len(ids)
    assert pieces[0] == "<s>" and pieces[-1] == "</s>"
    assert "".join(pieces[1:-1]).replace("\u2581", " ") == " Er lernt rasch."


def test_save_load_identity(tok, tmp_path):
    path = tok.save(tmp_path / "nested" / "tok")
    assert path == tmp_path / "nested" / "tok" / TOKENIZER_FILE and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [TOKENIZER_FILE]
    loaded = SubwordTokenizer.load(path.parent)
    assert loaded == tok and loaded.vocab_size == tok.vocab_size
    for s in EXTRA:
        assert loaded.encode(s, add_bos=True) == tok.encode(s, add_bos=True)
        assert loaded.decode(loaded.encode(s)) == s


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory must contain tokenizer.json"):
        SubwordTokenizer.load(tmp_path)


def test_wrapping_a_tokenizer_without_fixed_specials_fails():
    bare = Tokenizer(models.BPE(vocab={"a": 0, "<pad>": 1, "<s>": 2, "</s>": 3}, merges=[]))
    with pytest.raises(ValueError, match=r"special tokens .* at ids 0\.\.3"):
        SubwordTokenizer(bare)
    with pytest.raises(TypeError, match="tokenizer must be a tokenizers.Tokenizer"):
        SubwordTokenizer("tokenizer.json")


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="vocab_size must be > 4"):
        SubwordTokenizer.train(["ein Satz."], vocab_size=4)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        SubwordTokenizer.train(["ein Satz."], vocab_size=100.0)
    with pytest.raises(TypeError, match="texts must be an iterable of str"):
        SubwordTokenizer.train("ein Satz.", vocab_size=100)
    with pytest.raises(ValueError, match="texts is empty"):
        SubwordTokenizer.train([], vocab_size=100)
    with pytest.raises(TypeError, match="texts must contain str"):
        SubwordTokenizer.train(["ein Satz.", 3], vocab_size=100)
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(["Er", "lernt"])
    with pytest.raises(ValueError, match=r"ids contains id 300, outside the vocabulary \[0, 300\)"):
        tok.decode([5, 300])
    with pytest.raises(TypeError, match="ids must be a sequence of int"):
        tok.tokens("Er lernt")
