"""An interactive attention viewer: one self-contained HTML file, no server, no CDN.

:func:`build_viewer_html` turns attention weights into a page with

- layer and head selectors (plus "all heads (mean)"), and a strip of per-head
  thumbnails for the selected layer (click one to select it; arrow keys step through
  heads and layers),
- a *lines* view in the style of bertviz (Vig, 2019, "A Multiscale Visualization of
  Attention in the Transformer Model"): query tokens in the left column, key tokens in
  the right, one line per pair whose opacity is the weight,
- a *heatmap* view: rows are queries (the token that attends), columns keys (the token
  attended to), so row ``i`` reads as "where token ``i`` looks" (as in
  :mod:`attnlab.viz.heatmap`),
- hovering a token highlights its row (a query) or its column (a key) in either view
  and names the tokens it attends to most.

Everything the page needs is inside the file: the weights travel as JSON in a
``<script type="application/json">`` element, the drawing code and styles are inline,
and a Content-Security-Policy allows exactly those two inline blocks (by hash) and no
network request at all. Token text is untrusted: the JSON is escaped so that no ``<``,
``>`` or ``&`` appears inside the script element, and the page builds every label with
``textContent`` (never ``innerHTML``), so a token such as ``<script>alert(1)</script>``
shows as text and runs nothing.

Example::

    html = build_viewer_html(
        "my model",
        [{"name": "layer 0", "heads": weights}],       # weights (H, Tq, Tk)
        query_tokens=["the", "cat", "sat"],
        key_tokens=["the", "cat", "sat"],
        meta={"text": "the cat sat"},
    )
    save_viewer_html(html, "attention.html")
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import numbers
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["VIEWS", "build_viewer_html", "save_viewer_html"]

#: The views the page offers, in the order of its toggle.
VIEWS = ("lines", "heatmap")

# Weights are rounded to this many decimals in the page: 1e-4 is below what an opacity or
# a colour can show, and it keeps each number at most 6 characters.
_DECIMALS = 4
_MAX_TOKEN_CHARS = 200  # a longer token is cut (with an ellipsis) before it enters the page


# --------------------------------------------------------------------------- validation


def _as_array(heads, name: str):
    """``heads`` as a float64 numpy array, from a torch tensor, numpy array or nested lists."""
    import numpy as np

    if hasattr(heads, "detach") and hasattr(heads, "cpu"):  # a torch tensor, without importing torch
        heads = heads.detach().cpu().double().numpy()
    try:
        arr = np.asarray(heads)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array (H, Tq, Tk) of weights: {exc}") from None
    if arr.dtype == object or arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (attention weights), got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_tokens(tokens, name: str, expected: int, axis_desc: str) -> list[str]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of str (one per {axis_desc}), got {type(tokens).__name__}")
    out = []
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
        out.append(t if len(t) <= _MAX_TOKEN_CHARS else t[: _MAX_TOKEN_CHARS - 1] + "\u2026")
    if len(out) != expected:
        raise ValueError(f"{name} has {len(out)} tokens but the weights have {expected} {axis_desc}s")
    return out


def _check_meta(meta) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict of str -> str/number, got {type(meta).__name__}")
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be str, got {type(key).__name__} ({key!r})")
        if value is None or isinstance(value, (str, bool, numbers.Real)):
            out[key] = "" if value is None else str(value)
        else:
            raise TypeError(f"meta[{key!r}] must be a str, number, bool or None, got {type(value).__name__}")
    return out


def _check_layers(layers) -> tuple[list[str], list, int, int]:
    """Names and arrays of ``layers``; every layer must have the same (Tq, Tk)."""
    import numpy as np

    if isinstance(layers, Mapping) or not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        raise TypeError(
            'layers must be a list of {"name": str, "heads": array (H, Tq, Tk)} dicts, '
            f"got {type(layers).__name__}"
        )
    if not layers:
        raise ValueError('layers is empty; give at least one {"name": ..., "heads": (H, Tq, Tk)} layer')
    names, arrays, shape = [], [], None
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or "heads" not in layer or "name" not in layer:
            raise TypeError(f'layers[{i}] must be a dict with keys "name" (str) and "heads" (array (H, Tq, Tk))')
        if not isinstance(layer["name"], str):
            raise TypeError(f'layers[{i}]["name"] must be a str, got {type(layer["name"]).__name__}')
        where = f'layers[{i}]["heads"]'
        arr = _as_array(layer["heads"], where)
        if arr.ndim != 3:
            hint = " (one head: add a leading axis, e.g. weights[None])" if arr.ndim == 2 else ""
            raise ValueError(f"{where} must have shape (H, Tq, Tk), got shape {tuple(arr.shape)}{hint}")
        if 0 in arr.shape:
            raise ValueError(f"{where} has shape {tuple(arr.shape)}; need at least one head, query and key")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where} contains NaN or infinite weights")
        if (arr < 0).any():
            raise ValueError(f"{where} contains negative weights (min {arr.min():.4g}); attention weights are >= 0")
        if shape is not None and arr.shape[1:] != shape:
            raise ValueError(
                f"{where} has (Tq, Tk) = {tuple(arr.shape[1:])} but layers[0] has {shape}; "
                "every layer must attend over the same tokens"
            )
        shape = arr.shape[1:]
        names.append(layer["name"])
        arrays.append(arr)
    return names, arrays, shape[0], shape[1]


# --------------------------------------------------------------------------- page


def _script_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>``, ``&`` (so no
    ``</script>`` or ``<!--`` can end or confuse the element) and no U+2028/U+2029."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _round(arr) -> list:
    import numpy as np

    # +0.0 turns the -0.0 that rounding can make into 0.0 (shorter JSON, same value).
    return (np.round(arr, _DECIMALS) + 0.0).tolist()


def build_viewer_html(
    title: str,
    layers: Sequence[Mapping[str, Any]],
    query_tokens: Sequence[str],
    key_tokens: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    query_label: str = "query (attends)",
    key_label: str = "key (attended to)",
    view: str = "lines",
) -> str:
    """A self-contained, offline HTML page to explore attention weights.

    Args:
        title: the page's heading.
        layers: one ``{"name": str, "heads": weights}`` per layer (or per attention
            module: "encoder 3", "cross-attention"); ``weights`` is a torch tensor, numpy
            array or nested lists of shape ``(H, Tq, Tk)``, row ``i`` of head ``h`` the
            weights query ``i`` gives to each key. Layers may have different numbers of
            heads but must share ``(Tq, Tk)``. Weights must be finite and >= 0 (they need
            not sum to 1); they are shown rounded to 4 decimals.
        query_tokens: ``Tq`` labels of the queries (rows / left column).
        key_tokens: ``Tk`` labels of the keys (columns / right column); default: the
            query tokens (self-attention).
        meta: facts shown under the title (``{"model": "MiniLM-L6", "text": ...}``);
            values are str, numbers, bools or None.
        query_label, key_label: what the two sides are called (a seq2seq alignment
            says "target (generated)" and "source").
        view: the view shown first, one of :data:`VIEWS`.

    Shape:
        ``layers[l]["heads"]``: ``(H_l, Tq, Tk)``.

    Returns:
        The page as a string (UTF-8 text); write it with :func:`save_viewer_html`.

    Raises:
        TypeError / ValueError naming the argument (bad shapes, token counts that do not
        match the weights, NaN or negative weights, an unknown view).
    """
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    for value, name in ((query_label, "query_label"), (key_label, "key_label")):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; valid views: {', '.join(VIEWS)}")
    names, arrays, tq, tk = _check_layers(layers)
    q_tokens = _check_tokens(query_tokens, "query_tokens", tq, "query (rows of the weights)")
    if key_tokens is None:
        if tq != tk:
            raise ValueError(
                f"key_tokens is required when the weights are not square (Tq={tq}, Tk={tk}); "
                "only self-attention can reuse query_tokens"
            )
        k_tokens = list(q_tokens)
    else:
        k_tokens = _check_tokens(key_tokens, "key_tokens", tk, "key (columns of the weights)")
    data = {
        "title": title,
        "meta": _check_meta(meta),
        "query_label": query_label,
        "key_label": key_label,
        "view": view,
        "query_tokens": q_tokens,
        "key_tokens": k_tokens,
        "layers": [{"name": n, "heads": _round(a)} for n, a in zip(names, arrays)],
    }
    csp = (
        "default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
        f"style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}"
    )
    fills = {
        "CSP": csp,  # hashes and keywords only: no quote or markup character to escape
        "CSS": _CSS,
        "JS": _JS,
        "TITLE": _html.escape(title, quote=True),
        "DATA": _script_json(data),
    }
    # One pass, so text put in (a title holding "%%DATA%%") is never searched again.
    page = re.sub(r"%%(CSP|CSS|JS|TITLE|DATA)%%", lambda m: fills[m.group(1)], _TEMPLATE)
    return page


def save_viewer_html(html: str, path: str | os.PathLike) -> Path:
    """Write ``html`` to ``path`` (UTF-8) atomically: a temporary file in the same folder
    is renamed over it, so a reader never sees half a page. Returns the path written.

    Raises:
        FileNotFoundError: the folder does not exist.
    """
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    from .._io import write_text_atomic

    return write_text_atomic(html, path)


# --------------------------------------------------------------------------- template
#
# Kept inline (not a package data file) so that the page builds from any install of the
# package. Hooks the browser test relies on: #layer, #head, #scale selects; #view-lines /
# #view-heatmap buttons; svg#lines-svg line.link[data-q][data-k]; svg#heat-svg
# rect.cell[data-q][data-k]; #status; body[data-ready="1"] once drawn.

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%%CSP%%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="attnlab">
<link rel="icon" href="data:,">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body>
<header>
  <h1>%%TITLE%%</h1>
  <dl id="meta"></dl>
</header>
<main>
  <section class="controls" aria-label="what to show">
    <label>Layer <select id="layer"></select></label>
    <label>Head <select id="head"></select></label>
    <span class="group" role="group" aria-label="view">
      <button type="button" id="view-lines" data-view="lines">Lines</button><button
        type="button" id="view-heatmap" data-view="heatmap">Heatmap</button>
    </span>
    <label>Scale <select id="scale">
      <option value="absolute">0 to 1 (absolute)</option>
      <option value="stretch">0 to the largest weight</option>
    </select></label>
    <span class="hint">&larr; &rarr; head &middot; &uarr; &darr; layer</span>
  </section>
  <section id="thumbs" aria-label="heads of this layer"></section>
  <section class="panel">
    <div id="legend"></div>
    <p id="status" aria-live="polite"></p>
    <div id="canvas-wrap"></div>
  </section>
  <noscript><p>This page draws the attention weights with JavaScript; please enable it.</p></noscript>
</main>
<footer>Made with attnlab &middot; one self-contained file, works offline</footer>
<script type="application/json" id="attnlab-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

_CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f7f8fa; --card: #fff; --accent: #1d4ed8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 "Liberation Sans", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
header { padding: 18px 24px 6px; }
h1 { margin: 0 0 6px; font-size: 21px; font-weight: 650; overflow-wrap: anywhere; }
#meta { display: flex; flex-wrap: wrap; gap: 6px 8px; margin: 0; }
#meta div { display: flex; max-width: 100%; border: 1px solid var(--line); border-radius: 6px;
  background: var(--card); overflow: hidden; }
#meta dt { padding: 2px 8px; background: #eef2f7; color: var(--muted); font-size: 12px; }
#meta dd { margin: 0; padding: 2px 8px; font-size: 12px; overflow-wrap: anywhere; }
main { padding: 6px 24px 12px; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 18px; padding: 10px 14px;
  background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.controls label { font-weight: 600; }
select, button { font: inherit; color: inherit; }
select { margin-left: 6px; padding: 4px 8px; border: 1px solid #cbd5e1; border-radius: 6px; background: #fff; }
.group button { padding: 4px 14px; border: 1px solid #cbd5e1; background: #fff; cursor: pointer; }
.group button:first-child { border-radius: 6px 0 0 6px; }
.group button:last-child { border-radius: 0 6px 6px 0; border-left: 0; }
.group button[aria-pressed="true"] { background: var(--accent); border-color: var(--accent); color: #fff; }
.hint { color: var(--muted); font-size: 12px; margin-left: auto; }
#thumbs[hidden] { display: none; }
#thumbs { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0; }
#thumbs button { display: flex; flex-direction: column; align-items: center; gap: 3px; padding: 5px;
  border: 2px solid transparent; border-radius: 8px; background: var(--card); cursor: pointer;
  box-shadow: 0 0 0 1px var(--line); font-size: 11px; color: var(--muted); }
#thumbs button[aria-pressed="true"] { color: var(--fg); font-weight: 700; }
#thumbs canvas { width: 52px; height: 52px; image-rendering: pixelated; border-radius: 3px; }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
#legend { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 12px; font-size: 12px; color: var(--muted); }
#legend .bar { width: 180px; height: 12px; border-radius: 3px; border: 1px solid #d1d5db; }
#legend .ticks { display: flex; justify-content: space-between; width: 180px; }
#legend .scale { display: flex; flex-direction: column; gap: 1px; }
#status { min-height: 1.45em; margin: 8px 0; font-size: 13px; }
#status b { font-weight: 700; }
#canvas-wrap { overflow-x: auto; }
svg text { font-family: "Liberation Sans", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; font-size: 14px;
  fill: var(--fg); }
#heat-svg .tok text { font-size: var(--label-size, 14px); }
svg .axis { font-size: 12px; font-weight: 700; fill: var(--muted); letter-spacing: .02em; }
svg .tok { cursor: default; }
svg .tok rect { fill: transparent; }
svg .tok.focus text { font-weight: 700; }
svg .cell-value { font-size: 10px; pointer-events: none; }
footer { padding: 4px 24px 18px; color: var(--muted); font-size: 12px; }
"""

_JS = r"""
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  // viridis (matplotlib), 10 stops
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  var HEAD_COLOURS = ["#1f77b4", "#e8590c", "#2f9e44", "#d62728", "#7048e8", "#8c564b", "#d6336c",
    "#5c677d", "#a48b00", "#0c8599", "#364fc7", "#c2255c"];
  var MEAN_COLOUR = "#1e3a8a";
  var AXIS_FONT = "700 12px " + FAMILY;
  var FAMILY = '"Liberation Sans", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif';
  var FONT = "14px " + FAMILY;
  var data = JSON.parse(document.getElementById("attnlab-data").textContent);
  var nq = data.query_tokens.length, nk = data.key_tokens.length;
  var state = { layer: 0, head: -1, view: data.view, scale: "absolute", focus: null };
  var meanCache = {};
  var el = function (id) { return document.getElementById(id); };

  function make(tag, attrs, parent, text) {
    var node = tag.charAt(0) === "!" ? document.createElementNS(SVGNS, tag.slice(1)) : document.createElement(tag);
    if (attrs) { for (var k in attrs) { node.setAttribute(k, String(attrs[k])); } }
    if (text !== undefined) { node.textContent = text; }  // textContent only: tokens are untrusted text
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function shown(token) {
    if (token === "") { return "\u2205"; }
    if (!/\S/.test(token)) { return "\u2423"; }
    return token.length > 24 ? token.slice(0, 23) + "\u2026" : token;
  }
  function clamp01(x) { return x < 0 ? 0 : (x > 1 ? 1 : x); }
  function fmt(x) { return (Math.round(x * 1000) / 1000).toString(); }
  function viridis(t) {
    t = clamp01(t) * (VIRIDIS.length - 1);
    var i = Math.min(Math.floor(t), VIRIDIS.length - 2), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return "rgb(" + [0, 1, 2].map(function (c) { return Math.round(a[c] + f * (b[c] - a[c])); }).join(",") + ")";
  }
  function headColour() { return state.head < 0 ? MEAN_COLOUR : HEAD_COLOURS[state.head % HEAD_COLOURS.length]; }
  function nHeads(layer) { return data.layers[layer].heads.length; }
  function meanOf(layer) {
    if (!meanCache[layer]) {
      var heads = data.layers[layer].heads, H = heads.length, m = [];
      for (var i = 0; i < nq; i++) {
        var row = new Array(nk).fill(0);
        for (var h = 0; h < H; h++) { for (var j = 0; j < nk; j++) { row[j] += heads[h][i][j] / H; } }
        m.push(row);
      }
      meanCache[layer] = m;
    }
    return meanCache[layer];
  }
  function matrixOf(layer, head) { return head < 0 ? meanOf(layer) : data.layers[layer].heads[head]; }
  function current() { return matrixOf(state.layer, state.head); }
  function maxOf(m) {
    var mx = 0;
    for (var i = 0; i < m.length; i++) { for (var j = 0; j < m[i].length; j++) { if (m[i][j] > mx) { mx = m[i][j]; } } }
    return mx;
  }
  function scaleMax(m) {
    if (state.scale === "absolute") { return 1; }
    var mx = maxOf(m);
    return mx > 0 ? mx : 1;
  }
  var measurer = document.createElement("canvas").getContext("2d");
  function textWidth(s, font) { measurer.font = font || FONT; return measurer.measureText(s).width; }
  function axisWidth(label) { return textWidth(label.toUpperCase(), AXIS_FONT) * 1.03 + 4; }  // + letter-spacing
  function maxWidth(tokens, font) {
    return tokens.reduce(function (w, t) { return Math.max(w, textWidth(shown(t), font)); }, 0);
  }

  // ------------------------------------------------------------------ header and controls
  function buildHeader() {
    var dl = el("meta");
    Object.keys(data.meta).forEach(function (key) {
      var div = make("div", null, dl);
      make("dt", null, div, key);
      make("dd", null, div, data.meta[key]);
    });
  }
  function fillLayers() {
    var sel = el("layer");
    data.layers.forEach(function (layer, l) {
      make("option", { value: l }, sel, layer.name + " (" + nHeads(l) + (nHeads(l) === 1 ? " head)" : " heads)"));
    });
    sel.disabled = data.layers.length === 1;
  }
  function fillHeads() {
    var sel = el("head"), H = nHeads(state.layer);
    while (sel.firstChild) { sel.removeChild(sel.firstChild); }
    if (H > 1) { make("option", { value: -1 }, sel, "all heads (mean)"); }
    for (var h = 0; h < H; h++) { make("option", { value: h }, sel, H === 1 ? "the only head" : "head " + h); }
    if (H === 1) { state.head = 0; } else if (state.head >= H) { state.head = -1; }
    sel.value = String(state.head);
    sel.disabled = H === 1;
  }

  // ------------------------------------------------------------------ thumbnails
  function drawThumb(canvas, m) {
    var ctx = canvas.getContext("2d"), img = ctx.createImageData(nk, nq), mx = maxOf(m) || 1;
    for (var i = 0; i < nq; i++) {
      for (var j = 0; j < nk; j++) {
        var rgb = viridis(m[i][j] / mx).slice(4, -1).split(","), p = 4 * (i * nk + j);
        img.data[p] = +rgb[0]; img.data[p + 1] = +rgb[1]; img.data[p + 2] = +rgb[2]; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }
  function buildThumbs() {
    var box = el("thumbs"), H = nHeads(state.layer);
    while (box.firstChild) { box.removeChild(box.firstChild); }
    if (H === 1) { box.hidden = true; return; }
    box.hidden = false;
    for (var h = -1; h < H; h++) {
      var b = make("button", { type: "button", "data-head": h, title: h < 0 ? "mean of all heads" : "head " + h }, box);
      var c = make("canvas", { width: nk, height: nq }, b);
      make("span", null, b, h < 0 ? "mean" : "head " + h);
      drawThumb(c, matrixOf(state.layer, h));
      b.addEventListener("click", function (e) { setHead(+e.currentTarget.getAttribute("data-head")); });
    }
  }
  function markThumbs() {
    var buttons = el("thumbs").querySelectorAll("button");
    for (var b = 0; b < buttons.length; b++) {
      var h = +buttons[b].getAttribute("data-head"), on = h === state.head;
      buttons[b].setAttribute("aria-pressed", on ? "true" : "false");
      buttons[b].style.borderColor = on ? headColour() : "transparent";
    }
  }

  // ------------------------------------------------------------------ lines view
  var L = null;
  function buildLines() {
    var rowH = Math.max(nq, nk) > 24 ? 22 : 26, top = 34, pad = 12, boxPad = 6;
    // a column is as wide as its widest token or its heading, whichever is wider
    var qW = Math.max(maxWidth(data.query_tokens), axisWidth(data.query_label) - 2 * boxPad, 30);
    var kW = Math.max(maxWidth(data.key_tokens), axisWidth(data.key_label) - 2 * boxPad, 30);
    var gap = Math.max(160, Math.min(300, 12 * Math.max(nq, nk)));
    var xq = pad + qW + 2 * boxPad, xk = xq + gap;
    var width = xk + kW + 2 * boxPad + pad, height = top + rowH * Math.max(nq, nk) + pad;
    var svg = make("!svg", { id: "lines-svg", width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "attention lines: each query token on the left to each key token on the right" });
    make("!text", { x: xq - boxPad, y: 18, "text-anchor": "end", "class": "axis" }, svg, data.query_label.toUpperCase());
    make("!text", { x: xk + boxPad, y: 18, "text-anchor": "start", "class": "axis" }, svg, data.key_label.toUpperCase());
    var links = make("!g", { "class": "links", "stroke-width": 2, "stroke-linecap": "round" }, svg);
    // the shorter column is centred against the longer one (a seq2seq alignment)
    var offQ = rowH * (Math.max(nq, nk) - nq) / 2, offK = rowH * (Math.max(nq, nk) - nk) / 2;
    var yq = function (i) { return top + offQ + rowH * i + rowH / 2; };
    var yk = function (j) { return top + offK + rowH * j + rowH / 2; };
    var lineEls = [];
    for (var i = 0; i < nq; i++) {
      var row = [];
      for (var j = 0; j < nk; j++) {
        row.push(make("!line", { "class": "link", x1: xq + 2, y1: yq(i), x2: xk - 2, y2: yk(j),
          "data-q": i, "data-k": j, "stroke-opacity": 0 }, links));
      }
      lineEls.push(row);
    }
    function tokens(list, axis, x, w, anchor) {
      var off = axis === "q" ? offQ : offK;
      return list.map(function (t, i) {
        var g = make("!g", { "class": "tok", "data-axis": axis, "data-index": i }, svg);
        var box = make("!rect", { x: anchor === "end" ? x - w : x, y: top + off + rowH * i + 2, width: w, height: rowH - 4, rx: 4 }, g);
        make("!text", { x: anchor === "end" ? x - boxPad : x + boxPad, y: top + off + rowH * i + rowH / 2,
          "text-anchor": anchor, "dominant-baseline": "central" }, g, shown(t));
        make("!title", null, g, t + "  (" + (axis === "q" ? "query " : "key ") + i + ")");
        return { g: g, box: box };
      });
    }
    var qs = tokens(data.query_tokens, "q", xq, qW + 2 * boxPad, "end");
    var ks = tokens(data.key_tokens, "k", xk, kW + 2 * boxPad, "start");
    hover(svg);
    L = { svg: svg, links: links, lines: lineEls, qs: qs, ks: ks };
  }
  function drawLines() {
    var m = current(), mx = scaleMax(m), f = state.focus, colour = headColour();
    L.links.setAttribute("stroke", colour);
    for (var i = 0; i < nq; i++) {
      for (var j = 0; j < nk; j++) {
        var hidden = f && ((f.axis === "q" && f.index !== i) || (f.axis === "k" && f.index !== j));
        L.lines[i][j].setAttribute("stroke-opacity", hidden ? 0 : fmt(clamp01(m[i][j] / mx)));
      }
    }
    shade(L.qs, "q", f && f.axis === "k" ? function (i) { return m[i][f.index] / mx; } : null, colour);
    shade(L.ks, "k", f && f.axis === "q" ? function (j) { return m[f.index][j] / mx; } : null, colour);
  }
  function shade(items, axis, weightOf, colour) {
    var f = state.focus;
    items.forEach(function (it, i) {
      var focused = f && f.axis === axis && f.index === i;
      it.g.setAttribute("class", focused ? "tok focus" : "tok");
      if (focused) {
        it.box.style.fill = colour; it.box.style.fillOpacity = "0.18";
        it.box.style.stroke = colour; it.box.style.strokeWidth = "1.5";
      } else {
        it.box.style.stroke = "none";
        it.box.style.fill = weightOf ? colour : "transparent";
        it.box.style.fillOpacity = weightOf ? fmt(0.85 * clamp01(weightOf(i))) : "0";
      }
    });
  }

  // ------------------------------------------------------------------ heatmap view
  var M = null;
  function buildHeat() {
    var cell = Math.max(12, Math.min(36, Math.floor(600 / Math.max(nq, nk))));
    // small cells get smaller labels, and upright column labels once slanted ones would overlap
    var size = Math.min(14, Math.max(8, cell - 3)), font = size + "px " + FAMILY;
    var pad = 12, angle = cell < 20 ? 90 : 50, sin = Math.sin(angle * Math.PI / 180);
    var qW = maxWidth(data.query_tokens, font), kW = maxWidth(data.key_tokens, font);
    var left = pad + qW + 10, topLabel = 20, top = topLabel + (kW + 8) * sin + 14;
    var width = Math.max(left + cell * nk + pad + 24, left + axisWidth("columns: " + data.key_label) + pad);
    var height = top + cell * nq + pad + 22;
    var svg = make("!svg", { id: "heat-svg", width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img", "aria-label": "attention heatmap: rows are queries, columns are keys" });
    svg.style.setProperty("--label-size", size + "px");
    make("!text", { x: left, y: 14, "class": "axis" }, svg, "COLUMNS: " + data.key_label.toUpperCase());
    make("!text", { x: pad, y: top + cell * nq + 22, "class": "axis" }, svg, "ROWS: " + data.query_label.toUpperCase());
    var cells = [], values = [], showValues = cell >= 30, gap = cell >= 16 ? 1 : 0;  // gaps would hide small cells
    var grid = make("!g", null, svg);
    for (var i = 0; i < nq; i++) {
      var row = [], vrow = [];
      for (var j = 0; j < nk; j++) {
        row.push(make("!rect", { "class": "cell", x: left + cell * j, y: top + cell * i, width: cell - gap, height: cell - gap,
          "data-q": i, "data-k": j }, grid));
        if (showValues) {
          vrow.push(make("!text", { "class": "cell-value", x: left + cell * j + (cell - 1) / 2, y: top + cell * i + (cell - 1) / 2,
            "text-anchor": "middle", "dominant-baseline": "central" }, grid));
        }
      }
      cells.push(row); values.push(vrow);
    }
    var qs = data.query_tokens.map(function (t, i) {
      var g = make("!g", { "class": "tok", "data-axis": "q", "data-index": i }, svg);
      var box = make("!rect", { x: pad, y: top + cell * i, width: left - pad - 2, height: cell - 1 }, g);
      make("!text", { x: left - 6, y: top + cell * i + (cell - 1) / 2, "text-anchor": "end", "dominant-baseline": "central" }, g, shown(t));
      make("!title", null, g, t + "  (query " + i + ")");
      return { g: g, box: box };
    });
    var ks = data.key_tokens.map(function (t, j) {
      var x = left + cell * j + (cell - 1) / 2, y = top - 6;
      var g = make("!g", { "class": "tok", "data-axis": "k", "data-index": j }, svg);
      var rot = "rotate(" + (-angle) + " " + x + " " + y + ")";
      var box = make("!rect", { x: x - 4, y: y - (cell - 1) / 2, width: kW + 10, height: cell - 1, transform: rot }, g);
      make("!text", { x: x, y: y, "dominant-baseline": "central", transform: rot }, g, shown(t));
      make("!title", null, g, t + "  (key " + j + ")");
      return { g: g, box: box };
    });
    var outline = make("!rect", { fill: "none", stroke: "#111827", "stroke-width": 2, visibility: "hidden", "pointer-events": "none" }, svg);
    hover(svg);
    M = { svg: svg, cells: cells, values: values, qs: qs, ks: ks, outline: outline, left: left, top: top, cell: cell };
  }
  function drawHeat() {
    var m = current(), mx = scaleMax(m), f = state.focus;
    for (var i = 0; i < nq; i++) {
      for (var j = 0; j < nk; j++) {
        var t = clamp01(m[i][j] / mx), c = M.cells[i][j];
        c.setAttribute("fill", viridis(t));
        var dim = f && ((f.axis === "q" && f.index !== i) || (f.axis === "k" && f.index !== j));
        c.setAttribute("fill-opacity", dim ? 0.35 : 1);
        if (M.values[i].length) {
          var v = M.values[i][j];
          v.textContent = m[i][j] >= 0.005 ? m[i][j].toFixed(2).replace(/^0/, "") : "";
          // CSSOM, not attributes: the stylesheet's "svg text" fill would beat an attribute
          v.style.fill = t > 0.62 ? "#111827" : "#ffffff";
          v.style.fillOpacity = dim ? "0.4" : "1";
        }
      }
    }
    var o = M.outline;
    if (f) {
      var isRow = f.axis === "q";
      o.setAttribute("x", isRow ? M.left - 1 : M.left + M.cell * f.index - 1);
      o.setAttribute("y", isRow ? M.top + M.cell * f.index - 1 : M.top - 1);
      o.setAttribute("width", isRow ? M.cell * nk + 1 : M.cell + 1);
      o.setAttribute("height", isRow ? M.cell + 1 : M.cell * nq + 1);
      o.setAttribute("visibility", "visible");
    } else {
      o.setAttribute("visibility", "hidden");
    }
    M.qs.forEach(function (it, i) { it.g.setAttribute("class", f && f.axis === "q" && f.index === i ? "tok focus" : "tok"); });
    M.ks.forEach(function (it, j) {
      var on = f && ((f.axis === "k" && f.index === j) || f.key === j);  // a hovered cell names its key too
      it.g.setAttribute("class", on ? "tok focus" : "tok");
    });
  }

  // ------------------------------------------------------------------ hover, legend, status
  function hover(svg) {
    svg.addEventListener("mouseover", function (e) {
      var t = e.target.closest ? e.target.closest("[data-axis], rect.cell, line.link") : null;
      if (!t) { return; }
      if (t.hasAttribute("data-axis")) {
        setFocus({ axis: t.getAttribute("data-axis"), index: +t.getAttribute("data-index") });
      } else if (t.classList.contains("cell")) {
        setFocus({ axis: "q", index: +t.getAttribute("data-q"), key: +t.getAttribute("data-k") });
      }
    });
    svg.addEventListener("mouseleave", function () { setFocus(null); });
  }
  function setFocus(f) {
    var same = (f === null && state.focus === null) || (f && state.focus && f.axis === state.focus.axis &&
      f.index === state.focus.index && f.key === state.focus.key);
    if (same) { return; }
    state.focus = f;
    draw(false);
  }
  function legend() {
    var box = el("legend"), m = current(), mx = scaleMax(m);
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var scale = make("div", { "class": "scale" }, box);
    var bar = make("div", { "class": "bar" }, scale);
    if (state.view === "lines") {
      bar.style.background = "linear-gradient(to right, rgba(255,255,255,0), " + headColour() + ")";
    } else {
      bar.style.background = "linear-gradient(to right, " + VIRIDIS.map(function (c) { return "rgb(" + c.join(",") + ")"; }).join(", ") + ")";
    }
    var ticks = make("div", { "class": "ticks" }, scale);
    [0, mx / 2, mx].forEach(function (v) { make("span", null, ticks, fmt(v)); });
    var what = state.view === "lines" ? "line opacity = attention weight" : "cell colour = attention weight";
    var who = state.head < 0 ? "mean over " + nHeads(state.layer) + " heads" : "head " + state.head;
    make("span", null, box, what + " \u00b7 " + data.layers[state.layer].name + ", " + who +
      (state.scale === "stretch" ? " \u00b7 stretched to the largest weight" : ""));
  }
  function topOf(values, labels, n) {
    var idx = values.map(function (v, i) { return i; }).sort(function (a, b) { return values[b] - values[a]; }).slice(0, n);
    return idx.map(function (i) { return "\u201c" + shown(labels[i]) + "\u201d " + values[i].toFixed(2); }).join(", ");
  }
  function status() {
    var p = el("status"), f = state.focus, m = current();
    while (p.firstChild) { p.removeChild(p.firstChild); }
    if (!f) {
      p.textContent = "Hover a token to highlight where it looks (left / rows) or who looks at it (right / columns).";
      return;
    }
    if (f.key !== undefined) {
      make("b", null, p, shown(data.query_tokens[f.index]) + " \u2192 " + shown(data.key_tokens[f.key]) + ": " + m[f.index][f.key].toFixed(4));
      p.appendChild(document.createTextNode("  \u00b7  "));
    }
    if (f.axis === "q") {
      make("b", null, p, "\u201c" + shown(data.query_tokens[f.index]) + "\u201d");
      p.appendChild(document.createTextNode(" (query " + f.index + ") looks most at " + topOf(m[f.index], data.key_tokens, 3)));
    } else {
      var col = m.map(function (row) { return row[f.index]; });
      make("b", null, p, "\u201c" + shown(data.key_tokens[f.index]) + "\u201d");
      p.appendChild(document.createTextNode(" (key " + f.index + ") is looked at most by " + topOf(col, data.query_tokens, 3)));
    }
  }

  // ------------------------------------------------------------------ state changes
  function draw(full) {
    var wrap = el("canvas-wrap"), want = state.view === "lines" ? L.svg : M.svg;
    if (wrap.firstChild !== want) {
      while (wrap.firstChild) { wrap.removeChild(wrap.firstChild); }
      wrap.appendChild(want);
    }
    if (state.view === "lines") { drawLines(); } else { drawHeat(); }
    if (full) {
      el("view-lines").setAttribute("aria-pressed", state.view === "lines" ? "true" : "false");
      el("view-heatmap").setAttribute("aria-pressed", state.view === "heatmap" ? "true" : "false");
      markThumbs();
      legend();
    }
    status();
  }
  function setHead(h) {
    state.head = h;
    el("head").value = String(h);
    draw(true);
  }
  function setLayer(l) {
    state.layer = l;
    el("layer").value = String(l);
    fillHeads();
    buildThumbs();
    draw(true);
  }
  function step(list, value, by) {
    var i = list.indexOf(value);
    return list[(i + by + list.length) % list.length];
  }
  function init() {
    buildHeader();
    fillLayers();
    fillHeads();
    buildThumbs();
    buildLines();
    buildHeat();
    el("layer").addEventListener("change", function (e) { setLayer(+e.target.value); });
    el("head").addEventListener("change", function (e) { setHead(+e.target.value); });
    el("scale").addEventListener("change", function (e) { state.scale = e.target.value; draw(true); });
    ["view-lines", "view-heatmap"].forEach(function (id) {
      el(id).addEventListener("click", function (e) {
        state.view = e.currentTarget.getAttribute("data-view"); state.focus = null; draw(true);
      });
    });
    document.addEventListener("keydown", function (e) {
      var tag = (e.target && e.target.tagName) || "";
      if (tag === "SELECT" || tag === "INPUT" || e.altKey || e.ctrlKey || e.metaKey) { return; }
      var heads = [], H = nHeads(state.layer);
      for (var h = H > 1 ? -1 : 0; h < H; h++) { heads.push(h); }
      var layers = data.layers.map(function (x, l) { return l; });
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        setHead(step(heads, state.head, e.key === "ArrowRight" ? 1 : -1)); e.preventDefault();
      } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        setLayer(step(layers, state.layer, e.key === "ArrowDown" ? 1 : -1)); e.preventDefault();
      }
    });
    draw(true);
    document.body.setAttribute("data-ready", "1");
  }
  init();
})();
"""
