"""A joint German+English subword tokenizer: byte-pair encoding over Hugging Face ``tokenizers``.

BPE (Sennrich, Haddow & Birch 2016, "Neural Machine Translation of Rare Words with
Subword Units") starts from characters and repeatedly merges the most frequent adjacent
pair until the vocabulary reaches ``vocab_size``; one vocabulary is learned from both
languages so that names and cognates share pieces.

Pre-tokenization is SentencePiece's "Metaspace" (Kudo & Richardson 2018): every space
becomes ``▁`` glued to the next word, so the spaces live in the pieces themselves and
``decode(encode(s)) == s`` for any text whose characters were seen in training (umlauts,
``ß``, „quotes“ and punctuation included; whitespace runs too). Punctuation is then split
off as its own pre-token, so ``Köln`` and ``Köln!`` share the piece ``▁Köln`` instead of
spending vocabulary on both. Byte-level BPE would round-trip unseen characters as well,
but its pieces (``Ã¶`` for ``ö``) make unreadable heatmap labels; here a character never
seen in training encodes to ``<unk>``.

Special tokens sit at fixed ids: ``<pad>`` 0, ``<s>`` (bos) 1, ``</s>`` (eos) 2, ``<unk>`` 3.
The whole tokenizer is one ``tokenizer.json`` file in a directory.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from attnlab._checks import check_positive_int

__all__ = ["SPECIAL_TOKENS", "TOKENIZER_FILE", "SubwordTokenizer"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"
_SPACE = "\u2581"  # ▁, SentencePiece's visible space


def _check_ids(ids, name: str, vocab_size: int) -> list[int]:
    if hasattr(ids, "tolist"):  # a torch tensor or numpy array
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a sequence of int token ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{name} must contain int token ids, got {type(i).__name__}")
        if not 0 <= i < vocab_size:
            raise ValueError(f"{name} contains id {i}, outside the vocabulary [0, {vocab_size})")
        out.append(int(i))
    return out


class SubwordTokenizer:
    """Joint de+en BPE tokenizer with fixed special ids (pad 0, bos 1, eos 2, unk 3).

    Build one with :meth:`train` or :meth:`load`; wrapping an existing
    ``tokenizers.Tokenizer`` checks that its special tokens sit at ids 0..3.
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(self, tokenizer: Tokenizer):
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        found = tuple(tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS)))
        if found != SPECIAL_TOKENS:
            raise ValueError(
                f"tokenizer must have the special tokens {SPECIAL_TOKENS} at ids 0..3, got {found}"
            )
        self._tok = tokenizer
        self._special = frozenset(range(len(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> "SubwordTokenizer":
        """Learn a BPE vocabulary from ``texts`` (pass German and English sentences together).

        Args:
            texts: training sentences; an iterable of str (read once).
            vocab_size: the target vocabulary size, special tokens included; the result is
                smaller when the texts do not support that many merges.
            min_frequency: a pair must occur at least this often to be merged.
        """
        check_positive_int(vocab_size, "vocab_size")
        check_positive_int(min_frequency, "min_frequency")
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}")
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be an iterable of str sentences, got a single str")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty; need at least one sentence to train the tokenizer")
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must contain str, got {type(bad).__name__}")

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ])
        tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always", split=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),  # trainer gives them ids 0..3 in this order
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = True) -> list[int]:
        """Token ids of ``text``, optionally wrapped in ``<s>`` ... ``</s>``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = True) -> list[list[int]]:
        """:meth:`encode` for many texts at once (parallel in the Rust backend)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        head = [self.bos_id] if add_bos else []
        tail = [self.eos_id] if add_eos else []
        return [head + e.ids + tail for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (pad, bos, eos, unk) are dropped."""
        ids = _check_ids(ids, "ids", self.vocab_size)
        return self._tok.decode([i for i in ids if i not in self._special], skip_special_tokens=False)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """One readable piece per id (``▁`` marks a word start), e.g. for heatmap labels."""
        ids = _check_ids(ids, "ids", self.vocab_size)
        return [self._tok.id_to_token(i) for i in ids]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/tokenizer.json`` (atomically); returns the file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        tmp = directory / (TOKENIZER_FILE + ".tmp")
        self._tok.save(str(tmp))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SubwordTokenizer":
        """Read ``directory/tokenizer.json`` written by :meth:`save`."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"directory must contain {TOKENIZER_FILE} (written by SubwordTokenizer.save); {path} not found"
            )
        return cls(Tokenizer.from_file(str(path)))

    def __eq__(self, other) -> bool:
        return isinstance(other, SubwordTokenizer) and self._tok.to_str() == other._tok.to_str()

    __hash__ = None  # mutable backend; equality is by content

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"
