"""Input validation shared by every layer.

Every public function checks its arguments here so that bad input fails early with a
message that names the argument and says what was expected, instead of a broadcasting
error deep inside a matmul.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_tensor(x, name: str, *, min_ndim: int = 1, floating: bool = True) -> None:
    """Raise TypeError/ValueError unless ``x`` is a tensor of the right kind."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {fmt_shape(x.shape)}"
        )


def check_nonempty(x: torch.Tensor, name: str, dim: int, what: str) -> None:
    if x.shape[dim] == 0:
        raise ValueError(f"{name} has an empty {what} (shape {fmt_shape(x.shape)}); need at least 1")


def check_broadcastable(shape: Sequence[int], target: Sequence[int], name: str, target_desc: str) -> None:
    """Raise ValueError unless ``shape`` broadcasts to ``target`` (without growing it)."""
    if len(shape) > len(target):
        raise ValueError(
            f"{name} of shape {fmt_shape(shape)} has more dimensions than {target_desc} {fmt_shape(target)}"
        )
    for s, t in zip(reversed(list(shape)), reversed(list(target))):
        if s != 1 and s != t:
            raise ValueError(
                f"{name} of shape {fmt_shape(shape)} does not broadcast to {target_desc} {fmt_shape(target)}"
            )


def check_bool_mask(mask, name: str, target: Sequence[int], target_desc: str = "the scores") -> None:
    """attnlab's one mask polarity: a bool tensor, True = may attend."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must have dtype torch.bool (True = may attend), got {mask.dtype}; "
            "pass additive float masks as `bias`"
        )
    check_broadcastable(mask.shape, target, name, target_desc)


def check_positive_int(value, name: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_probability(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def resolve(registry: Mapping[str, Callable], choice, kind: str) -> Callable:
    """Look up ``choice`` (a name or a callable) in a registry of named functions."""
    if callable(choice):
        return choice
    if isinstance(choice, str) and choice in registry:
        return registry[choice]
    valid = ", ".join(sorted(registry))
    raise ValueError(f"unknown {kind} {choice!r}; valid {kind}s: {valid}, or pass a callable")


def mask_fill_value(dtype: torch.dtype) -> float:
    """The most negative finite value of ``dtype``: masked scores use it, never -inf,
    so that softmax of a fully masked row stays finite (it is zeroed afterwards)."""
    return torch.finfo(dtype).min


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes; raises ValueError when they do not broadcast.

    (``torch.broadcast_shapes`` does the same but its first call imports sympy, which
    costs over a second: too much for a check on every call's first use.)
    """
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for shape in shapes:
        for i, d in enumerate(shape, start=ndim - len(shape)):
            d = int(d)
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError("shapes " + ", ".join(fmt_shape(s) for s in shapes) + " do not broadcast")
                out[i] = d
    return tuple(out)
