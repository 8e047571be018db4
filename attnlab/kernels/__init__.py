"""Fast paths with the same contract as :mod:`attnlab.functional`, each tested against it.

:func:`attention` (:mod:`.dispatch`) picks the fastest correct path for a call: torch's
SDPA for dot-product softmax attention, and the kernels here for what SDPA's fast path
does not cover: additive scores, sliding windows without a dense mask, score biases
(ALiBi, T5, learnable) without a T x T tensor per head, sigmoid / ReLU normalizers.

Names are imported lazily, so that ``attnlab.nn`` (which dispatches through here) does
not load numba until an additive kernel is actually called.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "additive_attention": ".additive",
    "DEFAULT_BIAS_BLOCK": ".bias",
    "TileBias": ".bias",
    "alibi_bias_fn": ".bias",
    "biased_attention": ".bias",
    "t5_bias_fn": ".bias",
    "default_window_block": ".window",
    "window_attention": ".window",
    "normalized_attention": ".normalized",
    "TILED_NORMALIZERS": ".normalized",
    "attention": ".dispatch",
    "choose_path": ".dispatch",
    "explain_paths": ".dispatch",
    "PathRecord": ".dispatch",
    "PATHS": ".dispatch",
    "sdpa_with_lse": ".dispatch",
    "weights_from_lse": ".dispatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
