"""Listen, Attend and Spell: a character-level attention encoder-decoder for speech.

Chan, Jaitly, Le & Vinyals (2016), "Listen, Attend and Spell" (LAS), with the
location-aware attention of Chorowski, Bahdanau, Serdyuk, Cho & Bengio (2015),
"Attention-Based Models for Speech Recognition":

    listener:  h = pBGRU^L(BGRU(x))            each pyramid layer joins frame pairs,
               [h_{2i}; h_{2i+1}] -> BGRU,      so it halves the time axis (T / 2^L frames)
    speller:   s_i = LSTM(s_{i-1}, [emb(y_{i-1}); c_{i-1}])
               a_i = Attend(s_i, h, a_{i-1})
               c_i = sum_j a_ij h_j
               p(y_i | y_<i, x) = softmax(W_2 tanh(W_1 [s_i; c_i]))

Attention (by name, :data:`ATTENTIONS`):

- ``"location"`` (Chorowski et al. 2015, eq. 5-9):
  ``e_ij = w^T tanh(W s_i + V h_j + U f_ij + b)``, ``f_i = F * a_{i-1}``: the previous
  alignment, convolved with ``k`` learned filters, tells the score where the speller
  was, which keeps the alignment moving forward through long inputs.
- ``"additive"`` (Bahdanau et al. 2014): the same without ``U f_ij``.

Both are :class:`attnlab.nn.AdditiveAttention`; the location term enters through its
``projected_keys`` (``V h_j + U f_ij``), so the score function stays the library's.
Padding frames of the listener are masked (True = may attend): their weight is zero and
each row of weights sums to 1 over the valid frames.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .._checks import check_positive_int, check_probability, check_tensor, fmt_shape, resolve
from ..functional.attend import AttentionResult
from ..nn.additive import AdditiveAttention

__all__ = [
    "LASConfig",
    "LAS",
    "Listener",
    "LocationAwareAttention",
    "ContentAttention",
    "ATTENTIONS",
    "SpellerState",
    "Hypothesis",
    "frame_mask",
]


def frame_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """True at the valid frames: ``mask[b, t] = t < lengths[b]``. Shape: (B,) -> (B, T)."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


# ----------------------------------------------------------------------------- attention


class ContentAttention(nn.Module):
    """Content-only additive attention (Bahdanau et al. 2014) with the speller's interface.

    ``prev_weights`` is accepted and ignored, so the speller can swap it for
    :class:`LocationAwareAttention` by name.

    Shape: query (B, Dq), keys (B, Tk, Dk), prev_weights (B, Tk), mask (B, Tk) ->
    output (B, Dk), weights (B, Tk).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, **_unused):
        super().__init__()
        self.additive = AdditiveAttention(query_dim, key_dim, hidden_dim)

    def precompute_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.additive.precompute_keys(keys)  # (B, Tk, hidden)

    def forward(self, query, keys, *, prev_weights=None, mask=None, projected_keys=None) -> AttentionResult:
        return self.additive(query, keys, mask=mask, need_weights=True, projected_keys=projected_keys)


class LocationAwareAttention(nn.Module):
    r"""Location-aware attention (Chorowski et al. 2015, §2.1, eq. 5-9).

    .. math::
        f_i = F * a_{i-1}, \qquad
        e_{ij} = w^\top \tanh(W s_i + V h_j + U f_{ij} + b), \qquad
        a_{ij} = \frac{\exp e_{ij}}{\sum_{j' \,\mathrm{valid}} \exp e_{ij'}}

    Args:
        query_dim: speller state size (``s_i``).
        key_dim: listener feature size (``h_j``).
        hidden_dim: size of the score network's hidden layer.
        channels: number of location filters ``k`` (rows of ``F``).
        kernel_size: width ``r`` of each filter (odd, so ``f_ij`` is centred on frame ``j``).

    Shape:
        query (B, Dq), keys (B, Tk, Dk), prev_weights (B, Tk), mask bool (B, Tk) (True =
        valid frame) -> output (B, Dk), weights (B, Tk).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, *, channels: int = 10, kernel_size: int = 15):
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (filters centred on each frame), got {kernel_size}")
        self.additive = AdditiveAttention(query_dim, key_dim, hidden_dim)
        self.conv = nn.Conv1d(1, channels, kernel_size, padding=kernel_size // 2, bias=False)  # F
        self.location = nn.Linear(channels, hidden_dim, bias=False)  # U

    def precompute_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``V h_j`` for every frame, once per utterance. Shape: (B, Tk, Dk) -> (B, Tk, hidden)."""
        return self.additive.precompute_keys(keys)

    def forward(self, query, keys, *, prev_weights, mask=None, projected_keys=None) -> AttentionResult:
        check_tensor(prev_weights, "prev_weights", min_ndim=2)
        if prev_weights.dim() != 2 or prev_weights.shape != keys.shape[:2]:
            raise ValueError(
                f"prev_weights must have shape (B, Tk) = {fmt_shape(keys.shape[:2])}, got {fmt_shape(prev_weights.shape)}"
            )
        if projected_keys is None:
            projected_keys = self.precompute_keys(keys)  # (B, Tk, hidden)
        f = self.conv(prev_weights.unsqueeze(1).to(keys.dtype))  # (B, channels, Tk)
        pk = projected_keys + self.location(f.transpose(1, 2))  # (B, Tk, hidden): V h_j + U f_ij
        return self.additive(query, keys, mask=mask, need_weights=True, projected_keys=pk)


#: Attention of the speller, by name.
ATTENTIONS = {"location": LocationAwareAttention, "additive": ContentAttention}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class LASConfig:
    """Sizes of :class:`LAS`.

    Args:
        vocab_size: characters including ``<pad>``/``<sos>``/``<eos>``.
        n_mels: input feature size.
        listener_hidden: BGRU size per direction (listener output is twice this).
        pyramid_layers: pyramid BGRU layers after the first BGRU; time shrinks by ``2^L``.
        speller_hidden: LSTM state size of the speller.
        emb_size: character embedding size.
        attn_hidden: hidden size of the attention score network.
        attention: a name of :data:`ATTENTIONS` ("location" or "additive").
        location_channels, location_kernel: location filters (``"location"`` only).
        dropout: on the listener's layer outputs and the speller's readout.
        pad_id, sos_id, eos_id: special character ids.
    """

    vocab_size: int
    n_mels: int = 40
    listener_hidden: int = 128
    pyramid_layers: int = 2
    speller_hidden: int = 256
    emb_size: int = 64
    attn_hidden: int = 128
    attention: str = "location"
    location_channels: int = 10
    location_kernel: int = 15
    dropout: float = 0.1
    pad_id: int = 0
    sos_id: int = 1
    eos_id: int = 2
    name: str = "las"

    def __post_init__(self):
        for f in ("vocab_size", "n_mels", "listener_hidden", "speller_hidden", "emb_size", "attn_hidden",
                  "location_channels", "location_kernel"):
            check_positive_int(getattr(self, f), f)
        check_positive_int(self.pyramid_layers, "pyramid_layers", allow_zero=True)
        check_probability(self.dropout, "dropout")
        resolve(ATTENTIONS, self.attention, "attention")
        for f in ("pad_id", "sos_id", "eos_id"):
            check_positive_int(getattr(self, f), f, allow_zero=True)
            if getattr(self, f) >= self.vocab_size:
                raise ValueError(f"{f} must be < vocab_size={self.vocab_size}, got {getattr(self, f)}")
        if self.name != "las":
            raise ValueError(f"name must be 'las' for LASConfig, got {self.name!r}")


# ----------------------------------------------------------------------------- listener


class Listener(nn.Module):
    """A BGRU then ``pyramid_layers`` pyramid BGRUs (Chan et al. 2016, §3.1, eq. 5).

    A pyramid layer reads ``[h_{2i}; h_{2i+1}]`` (an odd last frame is paired with
    zeros), so ``T`` frames become ``ceil(T / 2)``. Sequences are packed, so the
    backward direction starts at each utterance's own last frame, not at padding.

    Shape: x (B, T, n_mels), lengths (B,) -> h (B, T', 2 * hidden), lengths' (B,),
    ``T' = ceil(T / 2^L)``; rows of h past lengths' are zero.
    """

    def __init__(self, n_mels: int, hidden: int, pyramid_layers: int, dropout: float = 0.0):
        super().__init__()
        self.base = nn.GRU(n_mels, hidden, batch_first=True, bidirectional=True)
        self.pyramid = nn.ModuleList(
            nn.GRU(4 * hidden, hidden, batch_first=True, bidirectional=True) for _ in range(pyramid_layers)
        )
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _run(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, 2h)
        return out

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(self._run(self.base, x, lengths))  # (B, T, 2h)
        for rnn in self.pyramid:
            B, T, D = h.shape
            if T % 2:
                h = F.pad(h, (0, 0, 0, 1))  # (B, T + 1, 2h): pair the odd last frame with zeros
            h = h.reshape(B, h.shape[1] // 2, 2 * D)  # (B, ceil(T/2), 4h)
            lengths = (lengths + 1) // 2
            h = self.dropout(self._run(rnn, h, lengths))  # (B, ceil(T/2), 2h)
        return h, lengths


# ----------------------------------------------------------------------------- model


class SpellerState(NamedTuple):
    """Recurrent state between speller steps: LSTM ``(h, c)`` (B, H) each, the last
    context ``c_{i-1}`` (B, D) and the last alignment ``a_{i-1}`` (B, Tk)."""

    h: torch.Tensor
    c: torch.Tensor
    context: torch.Tensor
    weights: torch.Tensor


class Hypothesis(NamedTuple):
    """A decoded word: character ids (no sos/eos), its alignment (steps, Tk') over the
    listener frames (one row per emitted character plus ``<eos>``), and its log-probability."""

    tokens: list[int]
    attention: torch.Tensor
    score: float


class LAS(nn.Module):
    """Listen, Attend and Spell; see the module docstring.

    Shape:
        forward: features (B, T, n_mels), lengths (B,), tgt_in (B, L) -> logits (B, L, V).
    """

    def __init__(self, config: LASConfig):
        super().__init__()
        c = self.config = config
        self.listener = Listener(c.n_mels, c.listener_hidden, c.pyramid_layers, c.dropout)
        key_dim = 2 * c.listener_hidden
        attn_cls = resolve(ATTENTIONS, c.attention, "attention")
        self.attention = attn_cls(c.speller_hidden, key_dim, c.attn_hidden,
                                  channels=c.location_channels, kernel_size=c.location_kernel)
        self.embedding = nn.Embedding(c.vocab_size, c.emb_size, padding_idx=c.pad_id)
        self.cell = nn.LSTMCell(c.emb_size + key_dim, c.speller_hidden)
        self.readout = nn.Sequential(
            nn.Linear(c.speller_hidden + key_dim, c.speller_hidden), nn.Tanh(), nn.Dropout(c.dropout),
            nn.Linear(c.speller_hidden, c.vocab_size),
        )

    # -- pieces -------------------------------------------------------------------------

    def _check_inputs(self, features, lengths):
        check_tensor(features, "features", min_ndim=3)
        if features.dim() != 3 or features.shape[-1] != self.config.n_mels:
            raise ValueError(
                f"features must have shape (B, T, n_mels={self.config.n_mels}), got {fmt_shape(features.shape)}"
            )
        if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"lengths must be an int64 tensor of shape (B,), got {getattr(lengths, 'dtype', type(lengths))}")
        if lengths.shape != (features.shape[0],):
            raise ValueError(f"lengths must have shape (B,) = ({features.shape[0]},), got {fmt_shape(lengths.shape)}")
        if (lengths < 1).any() or (lengths > features.shape[1]).any():
            raise ValueError(f"lengths must be in [1, T={features.shape[1]}], got {lengths.tolist()}")

    def listen(self, features: torch.Tensor, lengths: torch.Tensor):
        """``(h (B, T', D), lengths' (B,), mask (B, T'), projected keys (B, T', hidden))``."""
        self._check_inputs(features, lengths)
        h, enc_lengths = self.listener(features, lengths.long())
        mask = frame_mask(enc_lengths, h.shape[1])  # (B, T')
        return h, enc_lengths, mask, self.attention.precompute_keys(h)

    def initial_state(self, h: torch.Tensor, mask: torch.Tensor) -> SpellerState:
        B = h.shape[0]
        zeros = h.new_zeros(B, self.config.speller_hidden)
        # The alignment "before" the first character: uniform over the valid frames.
        a0 = mask.to(h.dtype) / mask.sum(dim=1, keepdim=True).clamp_min(1).to(h.dtype)  # (B, T')
        return SpellerState(zeros, zeros, h.new_zeros(B, h.shape[-1]), a0)

    def step(self, prev_tokens: torch.Tensor, state: SpellerState, h, mask, pk):
        """One speller step. Shape: prev_tokens (B,) -> logits (B, V), new state, weights (B, T')."""
        x = torch.cat([self.embedding(prev_tokens), state.context], dim=-1)  # (B, E + D)
        s, c = self.cell(x, (state.h, state.c))  # (B, H) each
        ctx, w = self.attention(s, h, prev_weights=state.weights, mask=mask, projected_keys=pk)  # (B, D), (B, T')
        logits = self.readout(torch.cat([s, ctx], dim=-1))  # (B, V)
        return logits, SpellerState(s, c, ctx, w), w

    # -- training -----------------------------------------------------------------------

    def forward_with_attention(self, features, lengths, tgt_in):
        """Teacher-forced logits (B, L, V), alignments (B, L, T') and listener lengths (B,)."""
        check_tensor(tgt_in, "tgt_in", min_ndim=2, floating=False)
        if tgt_in.dim() != 2 or tgt_in.shape[0] != features.shape[0]:
            raise ValueError(f"tgt_in must have shape (B={features.shape[0]}, L), got {fmt_shape(tgt_in.shape)}")
        h, enc_lengths, mask, pk = self.listen(features, lengths)
        state = self.initial_state(h, mask)
        logits, weights = [], []
        for i in range(tgt_in.shape[1]):
            lg, state, w = self.step(tgt_in[:, i], state, h, mask, pk)
            logits.append(lg)
            weights.append(w)
        return torch.stack(logits, dim=1), torch.stack(weights, dim=1), enc_lengths  # (B, L, V), (B, L, T')

    def forward(self, features, lengths, tgt_in) -> torch.Tensor:
        return self.forward_with_attention(features, lengths, tgt_in)[0]

    # -- decoding -----------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, features, lengths, max_len: int = 24) -> list[Hypothesis]:
        """Most likely character at each step until ``<eos>`` (or ``max_len`` characters)."""
        check_positive_int(max_len, "max_len")
        c = self.config
        h, enc_lengths, mask, pk = self.listen(features, lengths)
        B = h.shape[0]
        state = self.initial_state(h, mask)
        prev = torch.full((B,), c.sos_id, dtype=torch.long, device=h.device)
        done = torch.zeros(B, dtype=torch.bool, device=h.device)
        tokens, weights = [], []
        score = torch.zeros(B, dtype=torch.float64)
        for _ in range(max_len + 1):
            logits, state, w = self.step(prev, state, h, mask, pk)
            logp = logits.float().log_softmax(-1)
            prev = logp.argmax(-1)  # (B,)
            score += torch.where(done, 0.0, logp.gather(1, prev[:, None]).squeeze(1).double())
            tokens.append(prev)
            weights.append(w)
            done |= prev == c.eos_id
            if bool(done.all()):
                break
        tok = torch.stack(tokens, dim=1)  # (B, S)
        att = torch.stack(weights, dim=1)  # (B, S, T')
        out = []
        for b in range(B):
            ids = tok[b].tolist()
            n = ids.index(c.eos_id) if c.eos_id in ids else len(ids)
            steps = min(n + 1, len(ids))
            out.append(Hypothesis(ids[:n], att[b, :steps, : int(enc_lengths[b])].float(), float(score[b])))
        return out

    @torch.no_grad()
    def beam_search(self, features, lengths, beam_size: int = 4, max_len: int = 24) -> list[Hypothesis]:
        """Beam search per utterance, hypotheses ranked by log-probability / (characters + 1)."""
        check_positive_int(beam_size, "beam_size")
        check_positive_int(max_len, "max_len")
        self._check_inputs(features, lengths)
        return [self._beam_one(features[b: b + 1, : int(lengths[b])], lengths[b: b + 1], beam_size, max_len)
                for b in range(features.shape[0])]

    def _beam_one(self, features, lengths, K: int, max_len: int) -> Hypothesis:
        c = self.config
        h, enc_lengths, mask, pk = self.listen(features, lengths)  # (1, T', D) ...
        state = self.initial_state(h, mask)
        prev = torch.tensor([c.sos_id])
        scores = torch.zeros(1, dtype=torch.float64)  # (k,)
        seqs: list[list[int]] = [[]]
        atts: list[list[torch.Tensor]] = [[]]
        finished: list[Hypothesis] = []
        for _ in range(max_len + 1):
            k = prev.shape[0]
            hk, mk, pkk = h.expand(k, -1, -1), mask.expand(k, -1), pk.expand(k, -1, -1)
            logits, state, w = self.step(prev, state, hk, mk, pkk)
            logp = logits.float().log_softmax(-1).double()  # (k, V)
            total = (scores[:, None] + logp).reshape(-1)  # (k * V,)
            top = total.topk(min(K, total.numel()))
            V = logp.shape[1]
            rows, cols = top.indices // V, top.indices % V
            keep, new_seqs, new_atts = [], [], []
            for r, col, s in zip(rows.tolist(), cols.tolist(), top.values.tolist()):
                path = atts[r] + [w[r]]
                if col == c.eos_id:
                    finished.append(Hypothesis(seqs[r], torch.stack(path).float(), s))
                else:
                    keep.append((r, col, s))
                    new_seqs.append(seqs[r] + [col])
                    new_atts.append(path)
            if not keep or len(finished) >= K:
                break
            idx = torch.tensor([r for r, _, _ in keep])
            state = SpellerState(*(t[idx] for t in state))
            prev = torch.tensor([col for _, col, _ in keep])
            scores = torch.tensor([s for _, _, s in keep], dtype=torch.float64)
            seqs, atts = new_seqs, new_atts
        if not finished:  # nothing ended within max_len: take the best unfinished path
            finished = [Hypothesis(seqs[0], torch.stack(atts[0]).float(), float(scores[0]))]
        return max(finished, key=lambda f: f.score / (len(f.tokens) + 1))
