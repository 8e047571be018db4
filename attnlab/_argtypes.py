"""Argument types shared by every ``attnlab`` command: each rejects a bad value with a
message that says what was expected, which argparse prints after the option's name."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "probability", "add_threads_argument", "set_threads"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N`` (default 1), shared by the training and translation commands."""
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="torch CPU threads (default 1: these small models run many tiny operations, and a second "
                        "thread mostly waits for the first, badly so when another program holds a core)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (torch is imported here, so that ``attnlab --help`` stays instant)."""
    import torch

    torch.set_num_threads(args.threads)


#: ``--precision`` choices of the training commands.
PRECISIONS = ("float32", "bfloat16")


def add_precision_argument(p) -> None:
    """``--precision {float32,bfloat16}``, shared by the training commands."""
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="bfloat16: mixed precision (torch.autocast; weights and optimizer stay float32). On CPUs "
                        "with AMX (Intel Sapphire Rapids and later) its matmuls run ~10x faster; a whole "
                        "Transformer step ran 1.4x faster here (default float32)")


def autocast_of(precision: str) -> str | None:
    """``TrainConfig.autocast`` for a ``--precision`` value; ValueError names the option."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return None if precision == "float32" else precision
