"""``attnlab viz``: open a model's attention in one self-contained HTML page.

    attnlab viz minilm "The animal did not cross the street because it was too tired ."
    attnlab viz runs/rnnsearch "Ich möchte dir helfen." --view heatmap
    attnlab viz random "the cat sat on the mat" --out demo.html

``MODEL_OR_CHECKPOINT`` is one of :data:`SOURCES` or a translation run directory:

- ``minilm``: the pretrained all-MiniLM-L6-v2 BERT (:func:`attnlab.models.bert.load_minilm`),
  6 layers x 12 heads of self-attention over its WordPiece tokens, ``[CLS]``/``[SEP]``
  included (much of BERT's attention rests on them: Clark et al. 2019, "What Does BERT
  Look At?").
- ``random``: seeded random :class:`attnlab.nn.MultiheadAttention` layers over MiniLM's
  word embeddings (seeded random vectors when the MiniLM package is missing): a demo, and
  a source that depends on no trained model.
- a run directory of ``attnlab train translate`` (or its ``best/`` / ``last/``): the
  sentence is translated greedily and the page shows the source-target alignment
  (Bahdanau et al. 2014, Fig. 3): the generated tokens attend to the source tokens.

The page itself comes from :func:`attnlab.viz.viewer.build_viewer_html`. Heavy libraries
(torch, tokenizers) are imported inside functions so that ``attnlab --help`` stays instant.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ._argtypes import nonnegative_int

__all__ = [
    "SOURCES",
    "ViewerInput",
    "minilm_attention",
    "random_attention",
    "checkpoint_attention",
    "load_attention",
    "register",
    "run",
]

RANDOM_LAYERS = 2
RANDOM_HEADS = 4
_RANDOM_DIM = 384  # MiniLM's embedding width, also used for the seeded fallback vectors


@dataclass(frozen=True)
class ViewerInput:
    """The arguments of :func:`attnlab.viz.viewer.build_viewer_html` for one model and text.

    Shape:
        ``layers[l]["heads"]``: ``(H, Tq, Tk)`` float tensor; ``Tq = len(query_tokens)``,
        ``Tk = len(key_tokens)`` (``key_tokens`` None: self-attention, keys = queries).
    """

    title: str
    layers: list
    query_tokens: list
    key_tokens: list | None = None
    meta: dict = field(default_factory=dict)
    query_label: str = "query (attends)"
    key_label: str = "key (attended to)"

    def html(self, *, view: str = "lines") -> str:
        """The viewer page for this input."""
        from .viz.viewer import build_viewer_html

        return build_viewer_html(
            self.title, self.layers, self.query_tokens, self.key_tokens, self.meta,
            query_label=self.query_label, key_label=self.key_label, view=view,
        )


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError('text is empty; give a sentence to look at, e.g. attnlab viz minilm "The cat sat on the mat."')
    return text


# ----------------------------------------------------------------------------- sources


def minilm_attention(text: str, **_: Any) -> ViewerInput:
    """Every head of every layer of the pretrained MiniLM BERT on ``text``.

    Shape: layers: 6 x ``(12, T, T)``, T = WordPiece tokens with ``[CLS]``/``[SEP]``
    (at most 256: the model's sentence-transformers limit).
    """
    import torch

    from .models.bert import load_minilm

    text = _check_text(text)
    enc = load_minilm()
    batch = enc.tokenize([text])
    with torch.no_grad():
        out = enc.bert(batch.input_ids, batch.attention_mask, need_weights=True)
    weights = out.attentions[:, 0].float()  # (L, H, T, T)
    tokens = list(batch.tokens[0])
    cfg = enc.bert.config
    return ViewerInput(
        title="all-MiniLM-L6-v2: self-attention",
        layers=[{"name": f"layer {l}", "heads": w} for l, w in enumerate(weights)],
        query_tokens=tokens,
        meta={
            "model": f"all-MiniLM-L6-v2 (BERT, {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
                     f"hidden {cfg.hidden_size})",
            "text": text,
            "tokens": len(tokens),
        },
    )


def random_attention(text: str, *, seed: int = 0, **_: Any) -> ViewerInput:
    """Seeded random self-attention: :data:`RANDOM_LAYERS` post-LN layers
    ``x <- LN(x + MultiheadAttention(x, x, x))`` with :data:`RANDOM_HEADS` heads each,
    over MiniLM's word embeddings of ``text`` (seeded random vectors and whitespace tokens
    when the MiniLM package is missing). The global RNG is left untouched.

    Shape: layers: 2 x ``(4, T, T)``.
    """
    import torch
    import torch.nn.functional as F

    from .data import minilm
    from .nn import MultiheadAttention

    text = _check_text(text)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    try:
        tokenizer = minilm.load_tokenizer()
        enc = tokenizer.encode(text)
        tokens = list(enc.tokens)
        _, table = minilm.load_word_embeddings()  # (V, D)
        x = table[torch.tensor(enc.ids)].float()  # (T, D)
        embeddings = "MiniLM word embeddings"
    except minilm.MiniLMNotAvailable:
        tokens = text.split()
        x = torch.randn(len(tokens), _RANDOM_DIM, generator=gen)  # (T, D)
        embeddings = "seeded random vectors (MiniLM package not installed)"
    D = x.shape[-1]
    with torch.random.fork_rng(devices=[]):  # the modules' init draws from the global RNG
        torch.manual_seed(seed)
        mhas = [MultiheadAttention(D, RANDOM_HEADS, batch_first=True) for _ in range(RANDOM_LAYERS)]
    x = F.layer_norm(x, (D,))[None]  # (1, T, D)
    layers = []
    with torch.no_grad():
        for l, mha in enumerate(mhas):
            y, w = mha(x, x, x, need_weights=True, average_attn_weights=False)  # (1, T, D), (1, H, T, T)
            x = F.layer_norm(x + y, (D,))  # (1, T, D)
            layers.append({"name": f"layer {l}", "heads": w[0]})  # (H, T, T)
    return ViewerInput(
        title="Random multi-head self-attention (demo)",
        layers=layers,
        query_tokens=tokens,
        meta={
            "model": f"{RANDOM_LAYERS} random MultiheadAttention layers x {RANDOM_HEADS} heads, seed {seed}",
            "embeddings": embeddings,
            "text": text,
            "tokens": len(tokens),
        },
    )


def checkpoint_attention(path, text: str, **_: Any) -> ViewerInput:
    """The source-target alignment of a translation model on ``text`` (greedy decoding).

    ``path`` is a run directory of ``attnlab train translate`` or a checkpoint inside one
    (loaded by :meth:`attnlab.translate.Translator.load`).

    Shape: one layer ``(1, T_out, S)``: row ``i`` = where the model looked (over the source
    pieces, ``</s>`` last) when it wrote target piece ``i``.

    Raises:
        ValueError: the model reads no attention (rnnenc, seq2seq), or the translation is empty.
    """
    from .translate import Translator

    text = _check_text(text)
    translator = Translator.load(path)
    (tr,) = translator.translate([text])
    name = translator.name
    if tr.attention is None:
        raise ValueError(
            f"model {name!r} at {path} reads no attention (it encodes the source into one vector), "
            "so there is no alignment to draw; use a model with attention (rnnsearch, luong, transformer)"
        )
    if not tr.target_tokens:
        raise ValueError(f"model {name!r} at {path} translated {text!r} into nothing; there is no alignment to draw")
    config = getattr(translator.model, "config", None)
    what = "alignment"
    align, layers = getattr(config, "align_layer", None), getattr(config, "num_decoder_layers", None)
    if isinstance(align, int) and isinstance(layers, int):  # a Transformer: one decoder layer's heads, averaged
        heads = getattr(config, "num_heads", "all")
        what = f"cross-attention of decoder layer {align % layers}, mean of {heads} heads"
    return ViewerInput(
        title=f"{name}: source-target alignment",
        layers=[{"name": what, "heads": tr.attention[None]}],  # (1, T_out, S)
        query_tokens=list(tr.target_tokens),
        key_tokens=list(tr.source_tokens),
        meta={
            "model": name,
            "checkpoint": str(path),
            "source": text,
            "translation (greedy)": tr.text,
            "log p": f"{tr.score:.3f}",
        },
        query_label="target (generated)",
        key_label="source",
    )


#: Named attention sources; any other ``MODEL_OR_CHECKPOINT`` is a translation checkpoint.
SOURCES: dict[str, Callable[..., ViewerInput]] = {
    "minilm": minilm_attention,
    "random": random_attention,
}


def load_attention(model: str, text: str, *, seed: int = 0) -> ViewerInput:
    """The attention of ``model`` (a name of :data:`SOURCES`, else a checkpoint directory) on ``text``."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a str (a name or a checkpoint directory), got {type(model).__name__}")
    text = _check_text(text)
    from .translate import PRETRAINED, pretrained_path

    if model in SOURCES:
        return SOURCES[model](text, seed=seed)
    if Path(model).exists():
        return checkpoint_attention(model, text)
    if model in PRETRAINED:
        return checkpoint_attention(pretrained_path(model), text)
    raise ValueError(
        f"unknown model {model!r}: give one of {', '.join([*SOURCES, *PRETRAINED])}, or the directory of a translation run "
        f"(attnlab train translate --out DIR); no file or directory {model!r} exists"
    )


# ----------------------------------------------------------------------------- CLI


def _default_out(model: str) -> Path:
    from .translate import PRETRAINED

    if model in SOURCES or (model in PRETRAINED and not Path(model).exists()):
        stem = model
    else:
        p = Path(model).resolve()
        stem = f"{p.parent.name}-{p.name}" if p.name in ("best", "last") else p.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return Path(f"attention-{stem}.html")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``viz`` command to the ``attnlab`` CLI (see :mod:`attnlab.cli`)."""
    from .viz.viewer import VIEWS

    p = subparsers.add_parser(
        "viz",
        help="explore a model's attention in an interactive HTML page",
        description=(
            "Write one self-contained HTML page (no network, works offline) showing the\n"
            "attention of a model on a text: layer and head selectors, the mean of all heads,\n"
            "token-to-token lines and a heatmap; hover a token to highlight where it looks.\n\n"
            "MODEL_OR_CHECKPOINT:\n"
            "  minilm   the pretrained all-MiniLM-L6-v2 BERT (6 layers x 12 heads)\n"
            "  random   seeded random multi-head attention layers (a demo)\n"
            "  transformer, rnnsearch\n"
            "           the German-English translation models shipped with attnlab: translates the text\n"
            "           greedily and shows the source-target alignment\n"
            "  DIR      a translation run (attnlab train translate --out DIR) or its best/ or last/:\n"
            "           translates the text greedily and shows the source-target alignment"
        ),
        epilog=(
            "examples:\n"
            '  attnlab viz minilm "The animal did not cross the street because it was too tired ."\n'
            '  attnlab viz runs/rnnsearch "Ich möchte dir helfen." --view heatmap --out align.html'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT",
                   help="minilm, random, transformer, rnnsearch, or a translation run directory")
    p.add_argument("text", help="the text to look at (quote it)")
    p.add_argument("--out", metavar="PATH", type=Path, default=None,
                   help="where to write the page (default: attention-<model>.html in the current directory)")
    p.add_argument("--view", choices=VIEWS, default="lines", help="the view shown first (default lines)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random model (default 0)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``attnlab viz`` with parsed arguments; returns the exit status."""
    from ._io import check_output_path

    # Cheap checks first: a typo should not wait for torch to import.
    _check_text(args.text)
    out = args.out if args.out is not None else _default_out(args.model)
    check_output_path(out, "--out")
    if args.seed != 0 and args.model != "random":
        raise ValueError("--seed only applies to the random model")

    from .viz.viewer import save_viewer_html

    html = load_attention(args.model, args.text, seed=args.seed).html(view=args.view)
    save_viewer_html(html, out)
    print(f"Attention viewer written to {out} ({len(html.encode('utf-8')) / 1024:.0f} KiB); "
          "open it in a web browser (it works offline).")
    return 0
