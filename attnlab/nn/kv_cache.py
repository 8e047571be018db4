"""Key/value cache for incremental (token-by-token) decoding.

During autoregressive generation step ``t`` needs the keys and values of every earlier
position. Recomputing them costs ``O(t)`` projections per step; caching them makes each
step project only the new tokens and attend over the stored ones (Vaswani et al., 2017,
decoder inference; the standard "KV cache" of every decoder implementation).

One :class:`KVCache` serves one attention layer. It stores keys and values in the
canonical layout ``(B, H_kv, T, D)`` *after* any positional rotation (RoPE), so a step
never re-rotates old keys.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor, fmt_shape

__all__ = ["KVCache"]


class KVCache:
    """Per-layer store of past keys and values.

    Two storage modes:

    - ``max_len=None`` (growing): while gradients are being recorded every
      :meth:`append` concatenates and nothing is written in place, so autograd through
      several steps works. Without autograd (``torch.no_grad()``, inputs that need no
      gradient) the buffers grow by doubling and new positions are copied in place:
      amortized O(1) copies per position instead of O(T).
    - ``max_len=N`` (preallocated): buffers of ``N`` positions are allocated on the
      first :meth:`append` (dtype, device, ``B``, ``H_kv`` and ``D`` taken from the keys
      it receives) and later steps copy into them in place; the returned tensors are
      views. Meant for inference (``torch.no_grad()``): an in-place write bumps the
      buffers' version counter, so backpropagating through an earlier step fails.

    Args:
        max_len: capacity in positions for the preallocated mode, or ``None``.

    Shape:
        ``append(k, v)``: k (B, H_kv, T_new, Dk), v (B, H_kv, T_new, Dv) ->
        ``(k_all, v_all)`` of shapes (B, H_kv, T_past + T_new, Dk) and (..., Dv).

    Example::

        cache = KVCache()
        for token in tokens:                        # (B, 1, E) each
            y, _ = mha(token, token, token, kv_cache=cache, need_weights=False)
    """

    def __init__(self, max_len: int | None = None) -> None:
        if max_len is not None:
            check_positive_int(max_len, "max_len")
        self.max_len = max_len
        self._k: torch.Tensor | None = None  # (B, H_kv, T_cap, Dk) or (B, H_kv, T, Dk)
        self._v: torch.Tensor | None = None  # (B, H_kv, T_cap, Dv) or (B, H_kv, T, Dv)
        self._length = 0
        self._sig = None  # (B, H_kv, Dk, Dv, dtype, device) of the last checked append

    # -- state ---------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Number of cached positions (the absolute position of the next token)."""
        return self._length

    def __len__(self) -> int:
        return self._length

    @property
    def k(self) -> torch.Tensor | None:
        """Cached keys ``(B, H_kv, length, Dk)``, or ``None`` when empty."""
        return None if self._k is None or self._length == 0 else self._k[:, :, : self._length]

    @property
    def v(self) -> torch.Tensor | None:
        """Cached values ``(B, H_kv, length, Dv)``, or ``None`` when empty."""
        return None if self._v is None or self._length == 0 else self._v[:, :, : self._length]

    def reset(self) -> None:
        """Forget every cached position (a preallocated buffer is kept for reuse)."""
        self._length = 0
        self._sig = None
        if self.max_len is None:
            self._k = self._v = None

    def __repr__(self) -> str:
        shape = None if self._k is None else fmt_shape(self._k.shape[:2])
        mode = "growing" if self.max_len is None else f"max_len={self.max_len}"
        return f"KVCache(length={self._length}, {mode}, (B, H_kv)={shape})"

    # -- update --------------------------------------------------------------------
    def _check(self, k: torch.Tensor, v: torch.Tensor) -> None:
        check_tensor(k, "k", min_ndim=4)
        check_tensor(v, "v", min_ndim=4)
        if k.dim() != 4 or v.dim() != 4:
            raise ValueError(
                f"k and v must have shape (B, H_kv, T, D); got k {fmt_shape(k.shape)}, v {fmt_shape(v.shape)}"
            )
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"k and v must agree on (B, H_kv, T): k is {fmt_shape(k.shape)}, v is {fmt_shape(v.shape)}"
            )
        if self._k is not None and self._length > 0:
            ck, cv = self._k, self._v
            if k.shape[:2] != ck.shape[:2] or k.shape[3] != ck.shape[3] or v.shape[3] != cv.shape[3]:
                raise ValueError(
                    f"k {fmt_shape(k.shape)} / v {fmt_shape(v.shape)} do not match the cache: expected "
                    f"(B, H_kv, T, Dk) = {fmt_shape((ck.shape[0], ck.shape[1], k.shape[2], ck.shape[3]))} and "
                    f"Dv = {cv.shape[3]}; call reset() to start a new sequence"
                )
            if k.dtype != ck.dtype or k.device != ck.device:
                raise TypeError(
                    f"k has dtype {k.dtype} on {k.device} but the cache holds {ck.dtype} on {ck.device}"
                )
        if self.max_len is not None and self._length + k.shape[2] > self.max_len:
            raise ValueError(
                f"KVCache overflow: {self._length} cached + {k.shape[2]} new positions exceed max_len={self.max_len}"
            )

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` after the cached positions and return all of them.

        Shape:
            k (B, H_kv, T_new, Dk), v (B, H_kv, T_new, Dv) ->
            (B, H_kv, T_past + T_new, Dk), (B, H_kv, T_past + T_new, Dv).
        """
        # A decode loop appends tensors of one signature every step: check it fully
        # once, then only compare the signature (this runs once per layer per token).
        sig = None
        if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.dim() == 4 and v.dim() == 4:
            sig = (k.shape[0], k.shape[1], k.shape[3], v.shape[0], v.shape[1], v.shape[3], k.shape[2] == v.shape[2],
                   k.dtype, v.dtype, k.device)  # fmt: skip
        if sig is None or sig != self._sig or self._length == 0:
            self._check(k, v)
            self._sig = sig
        elif self.max_len is not None and self._length + k.shape[2] > self.max_len:
            self._check(k, v)  # raises the overflow message
        t0, t1 = self._length, self._length + k.shape[2]
        if self.max_len is None:
            recording = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or (
                self._k is not None and (self._k.requires_grad or self._v.requires_grad)))  # fmt: skip
            if self._k is None or t0 == 0:
                self._k, self._v = k, v
            elif recording:
                self._k = torch.cat([self._k[:, :, :t0], k], dim=2)  # (B, H_kv, T_past + T_new, Dk)
                self._v = torch.cat([self._v[:, :, :t0], v], dim=2)  # (B, H_kv, T_past + T_new, Dv)
            else:
                if t1 > self._k.shape[2] or self._k._base is not None:
                    # Grow to twice the need (a fresh buffer: never write into a tensor
                    # the caller handed us, nor into views already returned past t0).
                    cap = max(2 * t1, 16)
                    nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])  # (B, H_kv, cap, Dk)
                    nv = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])  # (B, H_kv, cap, Dv)
                    nk[:, :, :t0] = self._k[:, :, :t0]
                    nv[:, :, :t0] = self._v[:, :, :t0]
                    self._k, self._v = nk, nv
                self._k[:, :, t0:t1] = k
                self._v[:, :, t0:t1] = v
        else:
            fresh = self._k is None or (
                t0 == 0
                and (
                    self._k.shape[:2] != k.shape[:2]
                    or self._k.shape[3] != k.shape[3]
                    or self._v.shape[3] != v.shape[3]
                    or self._k.dtype != k.dtype
                    or self._k.device != k.device
                )
            )
            if fresh:
                B, H, _, Dk = k.shape
                self._k = k.new_empty(B, H, self.max_len, Dk)  # (B, H_kv, max_len, Dk)
                self._v = v.new_empty(B, H, self.max_len, v.shape[3])  # (B, H_kv, max_len, Dv)
            self._k[:, :, t0:t1] = k
            self._v[:, :, t0:t1] = v
        self._length = t1
        return self._k[:, :, :t1], self._v[:, :, :t1]
