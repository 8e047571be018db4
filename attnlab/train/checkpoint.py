"""Checkpoints as a directory of safetensors and JSON files, written atomically.

A checkpoint directory holds

    weights.safetensors     the model's ``state_dict`` (tied/shared tensors stored once)
    optimizer.json          the optimizer's ``state_dict`` with every tensor replaced by a
    optimizer.safetensors   reference into this file (Adam's moments, step counters ...)
    state.safetensors       tensors of the training state: RNG states (torch's is a uint8
                            tensor, numpy's a uint32 array), any tensor in ``state``
    state.json              written last: step/epoch/data position (whatever the trainer
                            passes as ``state``), the model config, the LR scheduler's
                            state, python/numpy/torch RNG states, the attnlab and torch
                            versions, and the size and SHA-256 of every other file

Nothing is pickled: loading a checkpoint never runs code from it (no ``torch.load``).

Atomicity: everything is written into a hidden temporary directory next to the target
(``.last.tmp-XXXX``), synced to disk, then swapped in with two renames (old -> backup,
new -> target) after which the backup is deleted. A crash before the swap leaves the
previous checkpoint untouched; a crash between the two renames leaves it as the backup,
which :func:`load_checkpoint` falls back to and the next save puts back. One process
writes a given checkpoint directory at a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import __version__

__all__ = [
    "Checkpoint",
    "average_weights",
    "CheckpointError",
    "CheckpointManager",
    "capture_rng_state",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT = "attnlab.checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
OPTIMIZER_JSON = "optimizer.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
_ALIASES_KEY = "attnlab.aliases"  # safetensors metadata: {alias name: stored name}
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint is corrupt, incomplete, or does not fit the model/optimizer given."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` / :func:`read_checkpoint` return.

    ``state`` is exactly the dict passed to :func:`save_checkpoint` (tensors, tuples and
    numpy arrays come back as such); ``config`` is the model config as a dict (rebuild it
    with ``ConfigClass(**checkpoint.config)``), ``config_type`` its qualified class name.
    """

    directory: Path
    state: dict
    config: dict | None
    config_type: str | None
    model_type: str | None
    attnlab_version: str
    torch_version: str
    saved_at: str


# --------------------------------------------------------------------------------------
# JSON <-> (JSON, tensors): nested python values with tensors stored by reference
# --------------------------------------------------------------------------------------

_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__", "__dtype__")


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Turn ``obj`` into strict JSON; tensors go into ``tensors`` under a key made from
    their path (e.g. ``state.3.exp_avg``) and leave ``{"__tensor__": key}`` behind."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = path
        while key in tensors:  # paths could collide only through keys containing "."
            key += "#"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        # torch has no full uint16/32/64 support: widen, and remember the numpy dtype.
        arr = np.ascontiguousarray(obj)
        if arr.dtype.kind == "u" and arr.dtype != np.uint8:
            arr = arr.astype(np.int64)
        ref = _encode(torch.from_numpy(arr.copy()), path, tensors)
        return {"__ndarray__": ref["__tensor__"], "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), path, tensors)
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        # Non-string keys (the optimizer's int parameter ids) would become strings in JSON.
        return {
            "__items__": [
                [_encode(k, f"{path}.key{i}", tensors), _encode(v, f"{path}.{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _encode(dataclasses.asdict(obj), path, tensors)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(
        f"{path}: cannot store a {type(obj).__name__} in a checkpoint; "
        "use JSON values (numbers, strings, lists, dicts), tuples, tensors or numpy arrays"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) >= 1 and next(iter(obj)) in _MARKERS:
        tag = next(iter(obj))
        if tag == "__tensor__":
            return tensors[obj["__tensor__"]]
        if tag == "__ndarray__":
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if tag == "__items__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if tag == "__float__":
            return float(obj["__float__"])
        if tag == "__dtype__":
            return getattr(torch, obj["__dtype__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


# --------------------------------------------------------------------------------------
# safetensors files with shared storage handled
# --------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor):
    return (t.device, t.untyped_storage().data_ptr())


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """``save_file`` refuses tensors that share memory (tied embeddings, views of one
    buffer). Identical views (same storage, offset, shape, stride, dtype) are stored once
    and recorded as aliases in the file's metadata; other tensors that share a storage
    with an earlier one, or cover only part of their storage, are cloned."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
        t = t.detach()
        if t.numel() == 0:
            out[name] = t.cpu().contiguous()
            continue
        view = (*_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        shares = _storage_key(t) in storages
        storages.add(_storage_key(t))
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if shares or not whole:
            t = t.contiguous().clone()
        out[name] = t.cpu()
    save_file(out, str(path), metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
    _fsync(path)


def _read_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    for alias, name in json.loads(meta.get(_ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; rename is durable enough there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------


def capture_rng_state() -> dict:
    """The global RNG states of python ``random``, numpy, torch (CPU) and CUDA if present,
    as arrays/tensors (stored in safetensors, not as 625 JSON numbers); opaque to callers."""
    version, internal, gauss_next = random.getstate()
    rng = {
        "python": {"version": version, "internal": np.array(internal, dtype=np.int64), "gauss_next": gauss_next},
        "numpy": np.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng_state(rng: Mapping) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when the same
    number of CUDA devices is present (a GPU checkpoint resumed on CPU skips them)."""
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"]), py["gauss_next"]))
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"].cpu())
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------


def _qualname(obj) -> str | None:
    if obj is None:
        return None
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _backups(target: Path) -> list[Path]:
    """Backups of ``target`` left by a crash between the two renames, newest first."""
    found = [p for p in target.parent.glob(f".{target.name}.old-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def _recover(target: Path) -> None:
    """Before writing: put back a backup stranded by a crash and drop stale temp dirs."""
    backups = _backups(target)
    if backups and not target.exists():
        os.replace(backups[0], target)
        backups = backups[1:]
    for stale in [*backups, *target.parent.glob(f".{target.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    directory,
    model: torch.nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    state: Mapping | None = None,
    config=None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring for its files).

    Args:
        directory: the checkpoint directory to create or replace (e.g. ``run/last``).
        model: its ``state_dict()`` goes to ``weights.safetensors``.
        optimizer: optional; its full ``state_dict()`` (Adam moments included).
        scheduler: optional LR scheduler (anything with ``state_dict()``); its state must
            be JSON values and tensors (torch's ``LambdaLR`` with the schedule objects of
            :mod:`attnlab.train.loop` is).
        state: the trainer's own state (step, epoch, position in the data order, best
            metric ...): JSON values, tuples, tensors, numpy arrays.
        config: the model config, a dataclass or a dict.

    The global RNG states (python, numpy, torch, CUDA) are saved too.
    Returns the checkpoint directory as a ``Path``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if scheduler is not None and not callable(getattr(scheduler, "state_dict", None)):
        raise TypeError(f"scheduler must have a state_dict() method, got {type(scheduler).__name__}")
    if state is not None and not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if config is not None and not (isinstance(config, Mapping) or dataclasses.is_dataclass(config)):
        raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_tensors(tmp / WEIGHTS, model.state_dict())
        if optimizer is not None:
            opt_tensors: dict[str, torch.Tensor] = {}
            opt_json = _encode(optimizer.state_dict(), "optimizer", opt_tensors)
            _write_tensors(tmp / OPTIMIZER_TENSORS, opt_tensors)
            _write_json(tmp / OPTIMIZER_JSON, opt_json)

        tensors: dict[str, torch.Tensor] = {}
        config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "attnlab_version": __version__,
            "torch_version": torch.__version__,
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model_type": _qualname(model),
            "optimizer_type": _qualname(optimizer),
            "scheduler_type": _qualname(scheduler),
            "config_type": _qualname(config) if dataclasses.is_dataclass(config) else None,
            "config": _encode(config_dict, "config", tensors),
            "state": _encode(dict(state or {}), "state", tensors),
            "scheduler": _encode(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None,
            "rng": _encode(capture_rng_state(), "rng", tensors),
        }
        _write_tensors(tmp / STATE_TENSORS, tensors)
        # The manifest goes last: a state.json that parses lists files that are complete.
        record["files"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())
        }
        _write_json(tmp / STATE_JSON, record)
        _fsync_dir(tmp)

        backup = None
        if target.exists():
            backup = target.parent / f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            os.replace(target, backup)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------


def _locate(directory) -> Path:
    target = Path(directory)
    if (target / STATE_JSON).is_file():
        return target
    if not target.exists():
        backups = _backups(target)
        if backups:  # a crash between the two renames of a save
            return backups[0]
        raise FileNotFoundError(
            f"no checkpoint at {target}: the directory does not exist "
            f"(a checkpoint directory holds {WEIGHTS} and {STATE_JSON})"
        )
    if not target.is_dir():
        raise FileNotFoundError(f"no checkpoint at {target}: it is a file, not a checkpoint directory")
    raise CheckpointError(
        f"no checkpoint at {target}: {STATE_JSON} is missing "
        f"(found: {', '.join(sorted(p.name for p in target.iterdir())) or 'nothing'}); "
        "it is written last, so the checkpoint is incomplete or not an attnlab checkpoint"
    )


def _read_record(path: Path, verify: bool) -> dict:
    try:
        record = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint at {path}: {STATE_JSON} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE_JSON} is not an attnlab checkpoint (no format: {FORMAT!r})")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint at {path} has format version {record['format_version']}, newer than this "
            f"attnlab ({__version__}) reads ({FORMAT_VERSION}); upgrade attnlab"
        )
    for name, info in record.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"corrupt checkpoint at {path}: {name} is missing")
        if file.stat().st_size != info["bytes"] or (verify and _sha256(file) != info["sha256"]):
            raise CheckpointError(
                f"corrupt checkpoint at {path}: {name} does not match the size/SHA-256 recorded in {STATE_JSON}"
            )
    return record


def _load_tensors(path: Path, name: str, device) -> dict[str, torch.Tensor]:
    try:
        return _read_tensors(path / name, device)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint at {path}: cannot read {name} ({exc})") from None


def _check_weights(path: Path, record: dict, model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = sorted(k for k in weights if k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in weights and weights[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(what, items):
        more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        return f"{len(items)} {what}: " + "; ".join(items[:_MAX_LISTED]) + more

    parts = [
        listing(what, items)
        for what, items in (
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not in the model", unexpected),
            ("with different shapes", mismatched),
        )
        if items
    ]
    saved = record.get("config_type") or record.get("model_type") or "an unknown model"
    raise CheckpointError(
        f"checkpoint at {path} does not fit the model {type(model).__name__} "
        f"(it was saved from {saved} with config {record.get('config')}): " + " | ".join(parts)
    )


def load_checkpoint(
    directory,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    map_location="cpu",
    *,
    restore_rng: bool = True,
    verify: bool = True,
) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint`.

    Loads the weights into ``model`` (strict: every parameter name and shape must match,
    else :class:`CheckpointError` lists the differences), the optimizer and scheduler
    states into those given, and the global RNG states (unless ``restore_rng=False``).
    ``verify`` checks each file's SHA-256 against the manifest in ``state.json``.

    Returns:
        :class:`Checkpoint` with the saved ``state`` dict and model ``config``.
    Raises:
        FileNotFoundError: no checkpoint directory.
        CheckpointError (a ValueError): corrupt/incomplete files, or a model/optimizer
        that does not fit the checkpoint.
    """
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    path = _locate(directory)
    record = _read_record(path, verify)
    tensors = _load_tensors(path, STATE_TENSORS, "cpu") if (path / STATE_TENSORS).exists() else {}

    if model is not None:
        weights = _load_tensors(path, WEIGHTS, map_location)
        _check_weights(path, record, model, weights)
        model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        if not (path / OPTIMIZER_JSON).is_file():
            raise CheckpointError(f"checkpoint at {path} has no optimizer state ({OPTIMIZER_JSON}) to load into optimizer")
        opt_tensors = _load_tensors(path, OPTIMIZER_TENSORS, map_location)
        try:
            opt_json = json.loads((path / OPTIMIZER_JSON).read_text(encoding="utf-8"))
            optimizer.load_state_dict(_decode(opt_json, opt_tensors))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint at {path}: optimizer state (saved from {record.get('optimizer_type')}) does not fit "
                f"the optimizer {type(optimizer).__name__}: {exc}"
            ) from None
    if scheduler is not None:
        if record.get("scheduler") is None:
            raise CheckpointError(f"checkpoint at {path} has no LR scheduler state to load into scheduler")
        scheduler.load_state_dict(_decode(record["scheduler"], tensors))
    if restore_rng:
        restore_rng_state(_decode(record["rng"], tensors))
    return Checkpoint(
        directory=path,
        state=_decode(record["state"], tensors),
        config=_decode(record.get("config"), tensors),
        config_type=record.get("config_type"),
        model_type=record.get("model_type"),
        attnlab_version=record.get("attnlab_version", "?"),
        torch_version=record.get("torch_version", "?"),
        saved_at=record.get("saved_at", "?"),
    )


def average_weights(directories: Sequence) -> dict[str, torch.Tensor]:
    """The element-wise mean of the model weights of several checkpoints of one model.

    Averaging the last few checkpoints of a run (Vaswani et al. 2017 average the last 5
    or 20) smooths out the noise of the final updates. Floating-point tensors are
    averaged in float64 and returned in their stored dtype; integer buffers (counters)
    must agree and are kept. Every checkpoint is verified against its manifest.

    Raises:
        ValueError: fewer than one directory, or checkpoints of different parameter
        names, shapes or dtypes (not the same model).
    """
    dirs = list(directories)
    if not dirs:
        raise ValueError("average_weights: give at least one checkpoint directory")
    total: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    for i, d in enumerate(dirs):
        path = _locate(d)
        _read_record(path, verify=True)
        weights = _load_tensors(path, WEIGHTS, "cpu")
        if i == 0:
            first = weights
            total = {k: v.double() if v.is_floating_point() else v.clone() for k, v in weights.items()}
            continue
        if set(weights) != set(first):
            diff = sorted(set(weights) ^ set(first))[:_MAX_LISTED]
            raise ValueError(f"average_weights: {path} has other parameters than {dirs[0]} (e.g. {', '.join(diff)})")
        for k, v in weights.items():
            if v.shape != first[k].shape or v.dtype != first[k].dtype:
                raise ValueError(
                    f"average_weights: {k} is {tuple(v.shape)} {v.dtype} in {path} but "
                    f"{tuple(first[k].shape)} {first[k].dtype} in {dirs[0]}: not the same model"
                )
            if v.is_floating_point():
                total[k] += v.double()
            elif not torch.equal(v, first[k]):
                raise ValueError(f"average_weights: integer buffer {k} differs between {dirs[0]} and {path}")
    n = len(dirs)
    return {k: (v / n).to(first[k].dtype) if first[k].is_floating_point() else v for k, v in total.items()}


def read_checkpoint(directory) -> Checkpoint:
    """The state and config of a checkpoint without loading weights or touching the RNGs
    (e.g. to rebuild the model from ``config`` before :func:`load_checkpoint`)."""
    return load_checkpoint(directory, restore_rng=False, verify=False)


# --------------------------------------------------------------------------------------
# last/ and best/
# --------------------------------------------------------------------------------------


class CheckpointManager:
    """Keeps ``root/last`` (the latest state, for resuming) and ``root/best`` (the best
    model on the selection metric so far).

    The best metric lives in the best checkpoint's state under ``"best_metric"``, so a
    new manager on an existing root continues the comparison.
    """

    def __init__(self, root):
        self.root = Path(root)
        self.last_dir = self.root / "last"
        self.best_dir = self.root / "best"
        self._best_metric: float | None = None
        self._best_loaded = False

    def save_last(self, model, **kwargs) -> Path:
        """``save_checkpoint(root/last, model, **kwargs)``."""
        return save_checkpoint(self.last_dir, model, **kwargs)

    @property
    def best_metric(self) -> float | None:
        """The metric of the current best checkpoint, or None when there is none."""
        if not self._best_loaded:
            self._best_loaded = True
            if self.best() is not None:
                self._best_metric = read_checkpoint(self.best_dir).state.get("best_metric")
        return self._best_metric

    def is_better(self, metric: float, higher_is_better: bool) -> bool:
        """Strictly better than the current best (NaN never is)."""
        metric = float(metric)
        if math.isnan(metric):
            return False
        best = self.best_metric
        if best is None:
            return True
        return metric > best if higher_is_better else metric < best

    def save_best(self, metric: float, model, *, higher_is_better: bool, state: Mapping | None = None, **kwargs) -> bool:
        """Save to ``root/best`` if ``metric`` beats the best so far; returns whether it did."""
        if isinstance(higher_is_better, str) or not isinstance(higher_is_better, bool):
            raise TypeError(f"higher_is_better must be a bool, got {higher_is_better!r}")
        if not self.is_better(metric, higher_is_better):
            return False
        save_checkpoint(self.best_dir, model, state={**(state or {}), "best_metric": float(metric)}, **kwargs)
        self._best_metric = float(metric)
        return True

    def latest(self) -> Path | None:
        """``root/last`` if it holds a checkpoint (or its crash backup), else None."""
        return self._existing(self.last_dir)

    def best(self) -> Path | None:
        """``root/best`` if it holds a checkpoint, else None."""
        return self._existing(self.best_dir)

    @staticmethod
    def _existing(directory: Path) -> Path | None:
        try:
            return _locate(directory)
        except (FileNotFoundError, CheckpointError):
            return None
