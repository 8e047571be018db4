"""Stochastic hard attention (Xu et al. 2015, "Show, Attend and Tell").

Instead of the expectation ``sum_s p(s | q) v_s`` of soft attention, hard attention
looks at ONE position: ``s ~ Categorical(p(. | q))``, ``output = v_s``, where
``p(s | q) = softmax_s(score(q, k_s))``. The choice is not differentiable, so the
score parameters learn through an estimator:

- "reinforce" (Williams 1992; Xu et al. eq. 10-12): maximise the expected reward with
  the surrogate loss ``-(r - b) log p(s | q) - lambda_e H[p(. | q)]``, where ``b`` is a
  moving average of past rewards (lower variance, same expectation) and the entropy
  bonus keeps the policy exploring. See :meth:`HardAttention.reinforce_loss`.
- "gumbel" (Jang et al. 2017; Maddison et al. 2017): sample with the Gumbel-max trick
  and back-propagate through the relaxed ``softmax((log p + g) / tau)``
  (straight-through: the forward is exactly one-hot), so the task loss itself trains
  the scores.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .._checks import check_positive_int, check_tensor, fmt_shape
from ..functional.attend import attend
from ..functional.normalizers import gumbel_softmax
from ._inputs import prepare_inputs
from .luong import AlignmentScore

__all__ = ["HardAttention", "HardAttentionOutput", "HARD_ESTIMATORS"]


class HardAttentionOutput(NamedTuple):
    """What :class:`HardAttention` returns (no ``Tq`` axis for a single decoder step).

    - ``output`` (B, Tq, Dv): the value at the chosen position (in eval mode with
      ``eval_mode="expectation"``: the soft-attention average).
    - ``weights`` (B, Tq, Tk) or ``None``: the policy ``p(s | q)`` (soft weights), if asked.
    - ``log_prob`` (B, Tq): ``log p(index | q)``, differentiable in the score parameters.
    - ``entropy`` (B, Tq): ``H[p(. | q)]``, differentiable.
    - ``index`` (B, Tq) long: the chosen position; ``-1`` for a query with no allowed key
      (its output, log_prob and entropy are 0).
    """

    output: torch.Tensor
    weights: torch.Tensor | None
    log_prob: torch.Tensor
    entropy: torch.Tensor
    index: torch.Tensor


# ------------------------------------------------------------------------- estimators
#
# An estimator maps (probs, log_probs, values, mask, tau, generator), all with a Tq
# axis, to (output (B, Tq, Dv), index (B, Tq)) for a training-mode sample.


def _gather_values(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    B, Tq = index.shape
    idx = index.clamp_min(0).unsqueeze(-1).expand(B, Tq, values.shape[-1])  # (B, Tq, Dv)
    return values.gather(1, idx)  # (B, Tq, Dv)


def _sample_reinforce(probs, log_probs, values, mask, tau, generator):
    """An exact categorical sample; no gradient reaches the scores through the output."""
    B, Tq, Tk = probs.shape
    p = probs.detach().float().reshape(B * Tq, Tk)  # (B*Tq, Tk)
    # A row with no allowed key has all-zero probabilities, which multinomial rejects;
    # give it a uniform row here and drop the draw afterwards.
    p = torch.where(p.sum(-1, keepdim=True) > 0, p, torch.ones_like(p))
    index = torch.multinomial(p, 1, generator=generator).reshape(B, Tq)  # (B, Tq)
    return _gather_values(values, index), index


def _sample_gumbel(probs, log_probs, values, mask, tau, generator):
    """Straight-through Gumbel-softmax: one-hot forward, relaxed-softmax gradient.

    The registered "gumbel" normalizer is applied to ``log p`` rather than to the raw
    scores; softmax is shift invariant, so ``log p = s - logsumexp(s)`` gives the same
    sample and the same relaxation.
    """
    y = gumbel_softmax(log_probs, mask=mask, tau=tau, hard=True, generator=generator)  # (B, Tq, Tk)
    return y.to(values.dtype) @ values, y.detach().argmax(-1)  # (B, Tq, Dv), (B, Tq)


HARD_ESTIMATORS = {"reinforce": _sample_reinforce, "gumbel": _sample_gumbel}
_EVAL_MODES = ("argmax", "expectation")


# ------------------------------------------------------------------------------ module


class HardAttention(nn.Module):
    r"""Stochastic hard attention: pick one position per query.

    .. math::
        p(s \mid q) = \mathrm{softmax}_s(\mathrm{score}(q, k_s)), \quad
        s \sim p(\cdot \mid q) \text{ (training)}, \quad \mathrm{output} = v_s

    Xu et al. (2015), "Show, Attend and Tell", section 4.1. In eval mode the choice is
    ``argmax_s p(s | q)`` (``eval_mode="argmax"``, default) or the soft-attention
    expectation ``sum_s p(s | q) v_s`` (``eval_mode="expectation"``, which Xu et al.
    note approximates the marginal likelihood).

    Args:
        query_dim, key_dim: sizes ``Dq``, ``Dk``.
        hidden_dim: hidden size of an "additive"/"concat" score (default ``query_dim``).
        score: "additive" (default, Xu et al.'s MLP), "dot", "scaled_dot", "general",
            "concat" (see :class:`attnlab.nn.luong.AlignmentScore`).
        estimator: "reinforce" or "gumbel" (see the module docstring).
        tau: Gumbel-softmax temperature (> 0; "gumbel" only).
        eval_mode: "argmax" or "expectation".
        baseline_momentum: momentum of the moving-average reward baseline in [0, 1).

    Shape:
        query (B, Tq, Dq) or (B, Dq) for one step; keys (B, Tk, Dk); values (B, Tk, Dv)
        (default keys); mask bool broadcastable to (B, Tq, Tk) (a single step also
        takes (B, Tk)) -> :class:`HardAttentionOutput`.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int | None = None,
        score="additive",
        estimator: str = "reinforce",
        tau: float = 1.0,
        eval_mode: str = "argmax",
        baseline_momentum: float = 0.9,
    ):
        super().__init__()
        self.query_dim = check_positive_int(query_dim, "query_dim")
        self.key_dim = check_positive_int(key_dim, "key_dim")
        self.score = AlignmentScore(score, query_dim, key_dim, hidden_dim)
        if not isinstance(estimator, str) or estimator not in HARD_ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid estimators: {', '.join(HARD_ESTIMATORS)}")
        self.estimator = estimator
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a positive finite float, got {tau!r}")
        self.tau = float(tau)
        if eval_mode not in _EVAL_MODES:
            raise ValueError(f"unknown eval_mode {eval_mode!r}; valid eval_modes: {', '.join(_EVAL_MODES)}")
        self.eval_mode = eval_mode
        if isinstance(baseline_momentum, bool) or not isinstance(baseline_momentum, (int, float)) or not (
            0.0 <= baseline_momentum < 1.0
        ):
            raise ValueError(f"baseline_momentum must be a float in [0, 1), got {baseline_momentum!r}")
        self.baseline_momentum = float(baseline_momentum)
        self.register_buffer("baseline", torch.zeros(()))  # moving average of the reward
        self.register_buffer("baseline_steps", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        generator: torch.Generator | None = None,
    ) -> HardAttentionOutput:
        """Choose one position per query (sampled in training, see the class docstring).

        ``generator`` makes the training-mode sample reproducible.
        """
        q, values, mask, single = prepare_inputs(self, query, keys, values, mask)
        B, Tq, Tk = q.shape[0], q.shape[1], keys.shape[1]

        expectation, probs = attend(
            q, keys, values, score=self.score.fn, score_kwargs=self.score.kwargs(), mask=mask, need_weights=True
        )  # (B, Tq, Dv), (B, Tq, Tk)
        # Log-probabilities in at least float32; the clamp keeps log(0) (masked or
        # underflowed positions) finite, and those positions have zero gradient anyway.
        pf = probs.float() if probs.dtype in (torch.float16, torch.bfloat16) else probs
        log_probs = torch.log(pf.clamp_min(torch.finfo(pf.dtype).tiny))  # (B, Tq, Tk)
        has_key = torch.ones(B, Tq, dtype=torch.bool, device=q.device) if mask is None else mask.expand(B, Tq, Tk).any(-1)

        if self.training:
            output, index = HARD_ESTIMATORS[self.estimator](probs, log_probs, values, mask, self.tau, generator)
        else:
            index = probs.detach().argmax(-1)  # (B, Tq)
            output = expectation if self.eval_mode == "expectation" else _gather_values(values, index)
        index = index.masked_fill(~has_key, -1)
        output = output * has_key.unsqueeze(-1).to(output.dtype)  # (B, Tq, Dv)
        log_prob = log_probs.gather(-1, index.clamp_min(0).unsqueeze(-1)).squeeze(-1) * has_key  # (B, Tq)
        entropy = -(pf * log_probs).sum(-1)  # (B, Tq); 0 for a row with no allowed key
        log_prob, entropy = log_prob.to(probs.dtype), entropy.to(probs.dtype)

        weights = probs if need_weights else None
        if single:
            output, index, log_prob, entropy = output[:, 0], index[:, 0], log_prob[:, 0], entropy[:, 0]
            weights = None if weights is None else weights[:, 0]
        return HardAttentionOutput(output, weights, log_prob, entropy, index)

    def reinforce_loss(
        self,
        reward: torch.Tensor,
        log_prob: torch.Tensor,
        entropy: torch.Tensor | None = None,
        *,
        entropy_weight: float = 0.0,
        update_baseline: bool = True,
    ) -> torch.Tensor:
        r"""REINFORCE surrogate loss with a moving-average baseline (Xu et al. 2015, eq. 12).

        .. math:: L = \mathrm{mean}\big(-(r - b)\,\log p(s \mid q) - \lambda_e H\big)

        Its gradient is the (negated) REINFORCE estimate of ``d E[r] / d theta`` minus
        the entropy bonus. ``r - b`` is detached: the reward is a signal, not a path.
        The baseline ``b`` starts at the first batch's mean reward, then follows
        ``b <- m b + (1 - m) mean(r)`` after each call (``update_baseline=True``).

        Args:
            reward: higher is better; ``(B,)`` (one reward per example, shared by its
                ``Tq`` choices) or the shape of ``log_prob``.
            log_prob: ``HardAttentionOutput.log_prob``.
            entropy: ``HardAttentionOutput.entropy`` (needed if ``entropy_weight > 0``).
            entropy_weight: ``lambda_e >= 0``.
            update_baseline: move the baseline towards this batch's mean reward.

        Returns:
            A scalar loss to add to the task loss before ``backward()``.
        """
        check_tensor(log_prob, "log_prob")
        check_tensor(reward, "reward", min_ndim=0)
        if reward.shape != log_prob.shape[: reward.dim()] or reward.dim() == 0:
            raise ValueError(
                f"reward must have shape (B,) or that of log_prob {fmt_shape(log_prob.shape)}, got {fmt_shape(reward.shape)}"
            )
        if isinstance(entropy_weight, bool) or not isinstance(entropy_weight, (int, float)) or entropy_weight < 0:
            raise ValueError(f"entropy_weight must be a float >= 0, got {entropy_weight!r}")
        if entropy_weight > 0:
            if entropy is None:
                raise ValueError("entropy is required when entropy_weight > 0")
            check_tensor(entropy, "entropy")
            if entropy.shape != log_prob.shape:
                raise ValueError(
                    f"entropy must have the shape of log_prob {fmt_shape(log_prob.shape)}, got {fmt_shape(entropy.shape)}"
                )
        r = reward.detach().float()
        r = r.reshape(r.shape + (1,) * (log_prob.dim() - r.dim()))  # broadcast over the choices
        if int(self.baseline_steps) == 0:
            baseline = r.mean()
        else:
            baseline = self.baseline
        advantage = r - baseline  # detached: the reward is not differentiated
        loss = -(advantage.to(log_prob.dtype) * log_prob)
        if entropy_weight > 0:
            loss = loss - entropy_weight * entropy
        if update_baseline:
            with torch.no_grad():
                m = self.baseline_momentum if int(self.baseline_steps) > 0 else 0.0
                self.baseline.mul_(m).add_((1.0 - m) * r.mean().to(self.baseline.dtype))
                self.baseline_steps += 1
        return loss.mean()

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, tau={self.tau}, eval_mode={self.eval_mode!r}, baseline_momentum={self.baseline_momentum}"
