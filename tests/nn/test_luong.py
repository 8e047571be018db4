import math

import pytest
import torch

from attnlab.nn.luong import AlignmentScore, LuongAttention

B, TQ, TK, DQ, DK, DV, D = 3, 5, 11, 4, 6, 2, 2


def ref_score(m, h_t, h_s):
    """Luong et al. (2015) eq. 8 for one (target, source) pair, float64."""
    s = m.score
    if s.name == "dot":
        return float(h_t @ h_s)
    if s.name == "general":
        return float(h_t @ s.weight.detach().double() @ h_s)
    W, v = s.weight.detach().double(), s.v.detach().double()
    return float(v @ torch.tanh(W @ torch.cat([h_t, h_s])))


def ref_centre(m, h_t, S):
    """Luong eq. 9: p_t = S * sigmoid(v_p^T tanh(W_p h_t))."""
    W_p, v_p = m.w_p.weight.detach().double(), m.v_p.weight.detach().double()[0]
    return S / (1.0 + math.exp(-float(v_p @ torch.tanh(W_p @ h_t))))


def ref_luong(m, q, k, v, mask=None, positions=None):
    """Global / local-m / local-p by explicit loops over target and source positions."""
    q, k, v = q.double(), k.double(), v.double()
    Bn, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    out = torch.zeros(Bn, Tq, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(Bn, Tq, Tk, dtype=torch.float64)
    for b in range(Bn):
        for t in range(Tq):
            allowed = [s for s in range(Tk) if mask is None or bool(mask[b, t, s])]
            S = len(allowed)
            if m.mode == "local-m":
                p = float(t if positions is None else positions[b, t])
            elif m.mode == "local-p":
                p = ref_centre(m, q[b, t], S)
            if m.mode != "global":
                allowed = [s for s in allowed if p - m.window <= s <= p + m.window]
            if not allowed:
                continue
            e = {s: ref_score(m, q[b, t], k[b, s]) for s in allowed}
            z = max(e.values())
            denom = sum(math.exp(e[s] - z) for s in allowed)
            sigma = m.window / 2.0
            for s in allowed:
                a = math.exp(e[s] - z) / denom
                if m.mode == "local-p":
                    a *= math.exp(-((s - p) ** 2) / (2 * sigma**2))
                weights[b, t, s] = a
                out[b, t] += a * v[b, s]
    return out, weights


def make(score="general", mode="global", seed=0, **kw):
    torch.manual_seed(seed)
    dq = DK if score == "dot" else DQ
    return LuongAttention(dq, DK, score=score, mode=mode, window=D, hidden_dim=7, **kw)


def inputs(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, TQ, m.query_dim, generator=g)
    k = torch.randn(B, TK, DK, generator=g)
    v = torch.randn(B, TK, DV, generator=g)
    return q, k, v


def padding(lengths=(11, 7, 4)):
    return (torch.arange(TK)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]  # (B, 1, Tk)


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("mode", ["global", "local-m", "local-p"])
def test_matches_paper_loops(score, mode):
    m = make(score, mode)
    q, k, v = inputs(m)
    mask = padding().expand(B, TQ, TK).clone()
    mask[2, 1] = False  # a fully masked target step
    out, w = m(q, k, v, mask=mask, need_weights=True)
    ref_out, ref_w = ref_luong(m, q, k, v, mask)
    assert out.shape == (B, TQ, DV) and w.shape == (B, TQ, TK)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[2, 1], torch.zeros(DV))


def test_local_weights_are_zero_outside_the_window():
    for mode in ("local-m", "local-p"):
        m = make("general", mode, seed=4)
        q, k, v = inputs(m, seed=5)
        mask = padding()
        _, w = m(q, k, v, mask=mask, need_weights=True)
        s = torch.arange(TK).double()
        if mode == "local-m":
            centre = torch.arange(TQ).double().expand(B, TQ)
        else:
            S = padding().sum(-1).double()  # (B, 1)
            centre = torch.tensor([[ref_centre(m, q[b, t].double(), float(S[b, 0])) for t in range(TQ)] for b in range(B)])
        outside = (s[None, None, :] - centre[..., None]).abs() > D  # (B, Tq, Tk)
        assert outside.any() and (~outside).any()
        assert torch.all(w[outside] == 0), mode
        assert torch.all(w[~mask.expand(B, TQ, TK)] == 0), mode


def test_local_m_positions_int_tensor_and_single_step():
    m = make("general", "local-m")
    q, k, v = inputs(m)
    pos = torch.tensor([[9, 0, 3, 10, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    out, w = m(q, k, v, query_positions=pos, need_weights=True)
    ref_out, ref_w = ref_luong(m, q, k, v, positions=pos)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    # an int is the position of the first query
    out3, _ = m(q, k, v, query_positions=3)
    ref3, _ = ref_luong(m, q, k, v, positions=torch.arange(3, 3 + TQ).expand(B, TQ))
    torch.testing.assert_close(out3.double(), ref3, atol=1e-5, rtol=1e-5)
    # a decoder loop: one step at a time, positions given as the step (int) or (B,)
    for t in range(TQ):
        step_out, step_w = m(q[:, t], k, v, query_positions=pos[:, t], need_weights=True)
        assert step_out.shape == (B, DV) and step_w.shape == (B, TK)
        torch.testing.assert_close(step_out, out[:, t])
        torch.testing.assert_close(m(q[:, t], k, v, query_positions=t)[0], m(q, k, v)[0][:, t])


def test_local_p_single_step_with_key_padding_matches_sequence():
    m = make("concat", "local-p")
    q, k, v = inputs(m)
    key_mask = padding()[:, 0]  # (B, Tk)
    out, w = m(q, k, v, mask=key_mask[:, None], need_weights=True)
    for t in (0, 3):
        o, wt = m(q[:, t], k, v, mask=key_mask, need_weights=True)
        torch.testing.assert_close(o, out[:, t])
        torch.testing.assert_close(wt, w[:, t])


def test_local_p_centre_gets_gradient_and_every_parameter_too():
    m = make("concat", "local-p", attentional_dim=5, value_dim=DV)
    q = torch.randn(B, TQ, DQ, requires_grad=True)
    _, k, v = inputs(m)
    ctx, _ = m(q, k, v, mask=padding())
    h = m.combine(ctx, q)
    (h * torch.randn_like(h)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the centre predictor's gradient comes through the Gaussian alone: check it numerically
    m64 = make("general", "local-p").double()
    q64, k64, v64 = (t.double() for t in inputs(m64))

    def f(w_p):
        return torch.func.functional_call(m64, {"w_p.weight": w_p}, (q64, k64, v64), {"mask": padding()})[0]

    torch.autograd.gradcheck(f, (m64.w_p.weight.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("mode", ["global", "local-m", "local-p"])
def test_gradcheck_float64(mode):
    m = LuongAttention(3, 2, score="concat", mode=mode, window=1, hidden_dim=4).double()
    q = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, False, True, True]])[:, None, :]
    torch.autograd.gradcheck(lambda q, k: m(q, k, mask=mask)[0], (q, k))


def test_fully_masked_rows_zero_output_finite_gradient():
    for mode in ("global", "local-m", "local-p"):
        m = make("general", mode)
        q = torch.randn(B, TQ, DQ, requires_grad=True)
        _, k, v = inputs(m)
        mask = torch.zeros(B, TQ, TK, dtype=torch.bool)
        out, w = m(q, k, v, mask=mask, need_weights=True)
        out.sum().backward()
        assert torch.equal(out, torch.zeros_like(out)) and torch.equal(w, torch.zeros_like(w))
        assert torch.equal(q.grad, torch.zeros_like(q))
        assert all(torch.isfinite(p.grad).all() for p in m.parameters()), mode


def test_combine_is_tanh_of_w_c_on_context_and_state():
    m = make("dot", attentional_dim=5)
    c, h = torch.randn(B, TQ, DK), torch.randn(B, TQ, DK)
    W_c = m.w_c.weight.detach()
    ref = torch.stack([torch.stack([torch.tanh(W_c @ torch.cat([c[b, t], h[b, t]])) for t in range(TQ)]) for b in range(B)])
    torch.testing.assert_close(m.combine(c, h), ref)
    with pytest.raises(ValueError, match="attentional_dim"):
        make("dot").combine(c, h)
    with pytest.raises(ValueError, match=r"context and query must be \(\.\.\., value_dim=6\)"):
        m.combine(c[..., :3], h)


@pytest.mark.parametrize("mode", ["global", "local-m", "local-p"])
def test_bfloat16(mode):
    m = make("concat", mode)
    q, k, v = inputs(m)
    ref, _ = m(q, k, v, mask=padding())
    m = m.to(torch.bfloat16)
    out, w = m(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask=padding(), need_weights=True)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=6e-2, rtol=6e-2)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in m.parameters())


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="unknown score 'additive'; valid scores: concat, dot, general"):
        LuongAttention(DQ, DK, score="additive")
    with pytest.raises(ValueError, match="unknown mode 'local'; valid modes: global, local-m, local-p"):
        LuongAttention(DQ, DK, score="general", mode="local")
    with pytest.raises(ValueError, match="window must be >= 0, got -1"):
        LuongAttention(DQ, DK, score="general", mode="local-m", window=-1)
    with pytest.raises(ValueError, match="score='dot' needs query_dim == key_dim.*query_dim=4, key_dim=6"):
        LuongAttention(DQ, DK, score="dot")
    m = make("general", "global")
    q, k, v = inputs(m)
    with pytest.raises(ValueError, match="query_positions is only used by mode='local-m'"):
        m(q, k, v, query_positions=0)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, T, key_dim=6\)"):
        m(q, k[..., :2], v)
    with pytest.raises(ValueError, match=r"query must have shape \(B, Tq, query_dim=4\)"):
        m(q[..., :3], k, v)
    lm = make("general", "local-m")
    with pytest.raises(ValueError, match=r"query_positions must broadcast to \(B, Tq\) = \(3, 5\)"):
        lm(q, k, v, query_positions=torch.zeros(B, TQ + 1))
    with pytest.raises(TypeError, match="query_positions must be an int or a tensor"):
        lm(q, k, v, query_positions=1.5)
    with pytest.raises(ValueError, match="mask of shape"):
        lm(q, k, v, mask=torch.ones(B, 2, TK, dtype=torch.bool))


def test_alignment_score_kwargs_are_the_live_parameters():
    s = AlignmentScore("additive", DQ, DK, 7)
    assert set(s.kwargs()) == {"w_q", "w_k", "v", "bias"}
    assert s.kwargs()["w_q"] is s.w_q and s.w_q.shape == (7, DQ)
    assert AlignmentScore("general", DQ, DK).weight.shape == (DQ, DK)
    assert AlignmentScore("scaled_dot", DK, DK).kwargs() == {}
    with pytest.raises(ValueError, match="unknown score 'bilinear'; valid scores: additive, concat, dot, general, scaled_dot"):
        AlignmentScore("bilinear", DQ, DK)
