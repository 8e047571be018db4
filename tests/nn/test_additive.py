import math

import pytest
import torch

from attnlab.nn.additive import AdditiveAttention

B, TQ, TK, DQ, DK, H, DV = 3, 5, 7, 4, 6, 11, 2


def ref_additive(m, q, k, v, mask=None):
    """Bahdanau et al. (2014) eq. 5-6, one (query, key) pair at a time, in float64."""
    w_q, w_k, b, vv = (p.detach().double() for p in (m.w_q, m.w_k, m.bias, m.v))
    q, k, v = q.double(), k.double(), v.double()
    Bn, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    out = torch.zeros(Bn, Tq, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(Bn, Tq, Tk, dtype=torch.float64)
    for bi in range(Bn):
        for i in range(Tq):
            allowed = [j for j in range(Tk) if mask is None or bool(mask[bi, i, j])]
            if not allowed:
                continue
            e = {j: float(vv @ torch.tanh(w_q @ q[bi, i] + w_k @ k[bi, j] + b)) for j in allowed}
            z = max(e.values())
            denom = sum(math.exp(e[j] - z) for j in allowed)
            for j in allowed:
                weights[bi, i, j] = math.exp(e[j] - z) / denom
                out[bi, i] += weights[bi, i, j] * v[bi, j]
    return out, weights


def random_mask(Bn, Tq, Tk, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(Bn, Tq, Tk, generator=g) > 0.4
    mask[0, 1] = False  # one fully masked query row
    mask[1, 2, :] = False
    mask[1, 2, 3] = True  # a row with a single allowed key
    return mask


@pytest.fixture
def module():
    torch.manual_seed(0)
    return AdditiveAttention(DQ, DK, H, value_dim=DV)


def test_matches_paper_loop_with_mask(module):
    q, k, v = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    mask = random_mask(B, TQ, TK)
    out, w = module(q, k, v, mask=mask, need_weights=True)
    ref_out, ref_w = ref_additive(module, q, k, v, mask)
    assert out.shape == (B, TQ, DV) and w.shape == (B, TQ, TK)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), ref_w, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[0, 1], torch.zeros(DV))  # fully masked row
    torch.testing.assert_close(w[1, 2, 3], torch.tensor(1.0))


def test_values_default_to_keys_and_weights_only_on_request(module):
    torch.manual_seed(1)
    module = AdditiveAttention(DQ, DK, H)
    q, k = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK)
    out, w = module(q, k)
    assert w is None
    ref_out, _ = ref_additive(module, q, k, k)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)


def test_single_decoder_step_matches_sequence(module):
    q, k, v = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    key_mask = torch.ones(B, TK, dtype=torch.bool)
    key_mask[0, 4:] = False  # padding of example 0
    seq_out, seq_w = module(q, k, v, mask=key_mask[:, None, :], need_weights=True)
    for t in range(TQ):
        out, w = module(q[:, t], k, v, mask=key_mask, need_weights=True)
        assert out.shape == (B, DV) and w.shape == (B, TK)
        torch.testing.assert_close(out, seq_out[:, t])
        torch.testing.assert_close(w, seq_w[:, t])
    assert torch.all(seq_w[0, :, 4:] == 0)


def test_precomputed_keys_give_same_output_and_gradients(module):
    q, k, v = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    mask = random_mask(B, TQ, TK, seed=2)
    out, w = module(q, k, v, mask=mask, need_weights=True)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()
    pk = module.precompute_keys(k)
    assert pk.shape == (B, TK, H)
    out2, w2 = module(q, k, v, mask=mask, need_weights=True, projected_keys=pk)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(w2, w)
    out2.square().sum().backward()
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    # a decoder loop over single steps reuses the one projection
    step_out, _ = module(q[:, 2], k, v, mask=mask[:, 2], projected_keys=pk)
    torch.testing.assert_close(step_out, out[:, 2])


def test_gradients_reach_every_parameter_and_inputs(module):
    q = torch.randn(B, TQ, DQ, requires_grad=True)
    k = torch.randn(B, TK, DK, requires_grad=True)
    v = torch.randn(B, TK, DV, requires_grad=True)
    out, _ = module(q, k, v)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in list(module.named_parameters()) + [("q", q), ("k", k), ("v", v)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradcheck_float64_inputs_and_parameters():
    torch.manual_seed(3)
    m = AdditiveAttention(3, 2, 5).double()
    q = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True]]).expand(3, 4)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(q, k, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (q, k), {"mask": mask})[0]

    torch.autograd.gradcheck(f, (q, k, *params))
    torch.autograd.gradcheck(lambda q, k: m(q, k, projected_keys=m.precompute_keys(k))[0], (q, k))


def test_fully_masked_rows_zero_output_and_zero_finite_gradient(module):
    q = torch.randn(B, TQ, DQ, requires_grad=True)
    k, v = torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    mask = torch.ones(B, TQ, TK, dtype=torch.bool)
    mask[2, 3] = False
    out, w = module(q, k, v, mask=mask, need_weights=True)
    out.sum().backward()
    assert torch.equal(out[2, 3], torch.zeros(DV)) and torch.equal(w[2, 3], torch.zeros(TK))
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[2, 3], torch.zeros(DQ))
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_bfloat16(module):
    q, k, v = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    ref, _ = module(q, k, v)
    m16 = module.to(torch.bfloat16)
    out, w = m16(q.bfloat16(), k.bfloat16(), v.bfloat16(), need_weights=True)
    assert out.dtype == torch.bfloat16 and w.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad.float()).all() for p in m16.parameters())


def test_bad_inputs_name_the_argument(module):
    q, k, v = torch.randn(B, TQ, DQ), torch.randn(B, TK, DK), torch.randn(B, TK, DV)
    with pytest.raises(ValueError, match=r"query must have shape \(B, Tq, query_dim=4\)"):
        module(torch.randn(B, TQ, DQ + 1), k, v)
    with pytest.raises(ValueError, match="query must have shape"):
        module(torch.randn(1, B, TQ, DQ), k, v)
    with pytest.raises(TypeError, match="query must be a floating-point"):
        module(q.long(), k, v)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, T, key_dim=6\)"):
        module(q, torch.randn(B, TK, DK + 2), v)
    with pytest.raises(ValueError, match="keys must have batch size B=3"):
        module(q, torch.randn(B + 1, TK, DK), v)
    with pytest.raises(ValueError, match="values must have T=7 positions"):
        module(q, k, torch.randn(B, TK - 1, DV))
    with pytest.raises(ValueError, match=r"values must have shape \(B, T, value_dim=2\)"):
        module(q, k, torch.randn(B, TK, DV + 1))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        module(q, k, v, mask=torch.ones(B, TQ, TK))
    with pytest.raises(ValueError, match="mask of shape"):
        module(q, k, v, mask=torch.ones(B, TK, TQ, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"projected_keys must have shape \(B, T, hidden_dim=11\)"):
        module(q, k, v, projected_keys=torch.randn(B, TK, DK))
    with pytest.raises(ValueError, match="hidden_dim must be > 0"):
        AdditiveAttention(DQ, DK, 0)
    with pytest.raises(TypeError, match="query_dim must be an int"):
        AdditiveAttention(4.0, DK, H)
