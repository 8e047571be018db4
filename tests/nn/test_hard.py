import math

import pytest
import torch

from attnlab.nn.hard import HardAttention, HardAttentionOutput

B, TQ, TK, DQ, DK, DV = 3, 5, 7, 4, 6, 2


@pytest.fixture(autouse=True)
def one_thread():
    # The REINFORCE loop is hundreds of tiny ops: thread hand-offs cost more than they
    # give on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ref_policy(m, q, k, mask=None):
    """p(s | q) = softmax_s(v^T tanh(W_q q + W_k k_s + b)) by loops (Xu et al. eq. 4-5), float64."""
    s = m.score
    w_q, w_k, b, v = (t.detach().double() for t in (s.w_q, s.w_k, s.bias, s.v))
    q, k = q.double(), k.double()
    probs = torch.zeros(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float64)
    for bi in range(q.shape[0]):
        for i in range(q.shape[1]):
            allowed = [j for j in range(k.shape[1]) if mask is None or bool(mask[bi, i, j])]
            if not allowed:
                continue
            e = {j: float(v @ torch.tanh(w_q @ q[bi, i] + w_k @ k[bi, j] + b)) for j in allowed}
            z = max(e.values())
            denom = sum(math.exp(e[j] - z) for j in allowed)
            for j in allowed:
                probs[bi, i, j] = math.exp(e[j] - z) / denom
    return probs


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return HardAttention(DQ, DK, hidden_dim=11, **kw)


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, TQ, DQ, generator=g), torch.randn(B, TK, DK, generator=g), torch.randn(B, TK, DV, generator=g)


def a_mask():
    mask = torch.ones(B, TQ, TK, dtype=torch.bool)
    mask[0, :, 4:] = False  # padding of example 0
    mask[1, 3] = False  # a query with no allowed key
    return mask


def check_consistent(r, probs_ref, v, mask):
    """index allowed, output = v[index], log_prob = log p(index), entropy = H[p]."""
    has_key = mask.any(-1)
    assert torch.equal(r.index[~has_key], torch.full_like(r.index[~has_key], -1))
    for b in range(B):
        for i in range(TQ):
            j = int(r.index[b, i])
            if j < 0:
                assert torch.equal(r.output[b, i], torch.zeros(DV)) and r.log_prob[b, i] == 0 and r.entropy[b, i] == 0
                continue
            assert mask[b, i, j]
            torch.testing.assert_close(r.output[b, i], v[b, j])
            torch.testing.assert_close(r.log_prob[b, i].double(), probs_ref[b, i, j].log(), atol=1e-5, rtol=1e-5)
            p = probs_ref[b, i][probs_ref[b, i] > 0]
            torch.testing.assert_close(r.entropy[b, i].double(), -(p * p.log()).sum(), atol=1e-5, rtol=1e-5)


def test_eval_argmax_matches_loop_policy():
    m = make().eval()
    q, k, v = data()
    mask = a_mask()
    r = m(q, k, v, mask=mask, need_weights=True)
    assert isinstance(r, HardAttentionOutput)
    probs = ref_policy(m, q, k, mask)
    torch.testing.assert_close(r.weights.double(), probs, atol=1e-5, rtol=1e-5)
    expected = probs.argmax(-1).masked_fill(~mask.any(-1), -1)
    assert torch.equal(r.index, expected)
    check_consistent(r, probs, v, mask)


def test_eval_expectation_is_soft_attention():
    m = make(eval_mode="expectation").eval()
    q, k, v = data()
    mask = a_mask()
    r = m(q, k, v, mask=mask)
    probs = ref_policy(m, q, k, mask)
    torch.testing.assert_close(r.output.double(), probs @ v.double(), atol=1e-5, rtol=1e-5)
    assert r.weights is None


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_training_sample_is_a_value_with_its_log_prob(estimator):
    m = make(estimator=estimator).train()
    q, k, v = data()
    mask = a_mask()
    r = m(q, k, v, mask=mask, generator=torch.Generator().manual_seed(3))
    check_consistent(r, ref_policy(m, q, k, mask), v, mask)
    again = m(q, k, v, mask=mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.index, r.index)  # seeded


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_sample_frequencies_follow_the_policy(estimator):
    m = make(seed=2, estimator=estimator).train()
    n = 4000
    q = torch.randn(1, 1, DQ).expand(n, 1, DQ)
    k = torch.randn(1, TK, DK).expand(n, TK, DK)
    r = m(q, k, need_weights=True, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(r.index[:, 0], minlength=TK).double() / n
    # 4000 draws: a standard error below 0.008 per position
    torch.testing.assert_close(freq, r.weights[0, 0].double(), atol=0.03, rtol=0)


def test_gumbel_passes_gradients_to_every_score_parameter():
    m = make(estimator="gumbel", tau=0.5).train()
    q, k, v = data()
    v.requires_grad_(True)
    r = m(q, k, v, mask=a_mask(), generator=torch.Generator().manual_seed(1))
    (r.output * torch.randn_like(r.output)).sum().backward()
    for name, p in list(m.named_parameters()) + [("values", v)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_reinforce_output_gives_no_score_gradient_but_the_loss_does():
    m = make().train()
    q, k, v = data()
    r = m(q, k, v, mask=a_mask(), generator=torch.Generator().manual_seed(1))
    assert not r.output.requires_grad  # a sample of fixed values: only the surrogate trains the scores
    reward = -r.output.square().sum(-1)  # (B, Tq)
    m.reinforce_loss(reward, r.log_prob, r.entropy, entropy_weight=0.1).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name


def test_reinforce_loss_formula_and_baseline():
    m = make(baseline_momentum=0.75)
    log_prob = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    entropy = torch.tensor([[1.0, 0.5], [0.2, 0.3]], requires_grad=True)
    reward = torch.tensor([1.0, 3.0])  # one reward per example, shared by its choices
    loss = m.reinforce_loss(reward, log_prob, entropy, entropy_weight=0.1)
    # first call: the baseline starts at the batch mean 2.0
    adv = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(loss, (-(adv * log_prob) - 0.1 * entropy).mean())
    loss.backward()
    torch.testing.assert_close(log_prob.grad, -adv / 4)
    torch.testing.assert_close(entropy.grad, torch.full((2, 2), -0.1 / 4))
    assert float(m.baseline) == 2.0 and int(m.baseline_steps) == 1
    loss2 = m.reinforce_loss(torch.tensor([[6.0, 6.0], [6.0, 6.0]]), log_prob.detach())
    torch.testing.assert_close(loss2, torch.tensor(-(4.0 * log_prob.detach()).mean().item()))
    assert float(m.baseline) == 0.75 * 2.0 + 0.25 * 6.0
    m.reinforce_loss(reward, log_prob.detach(), update_baseline=False)
    assert float(m.baseline) == 3.0 and int(m.baseline_steps) == 2


def test_reinforce_learns_to_attend_to_the_indicated_position():
    # The query names a position (one-hot); the reward is minus the squared error
    # between the value read there and the value at the named position. Only the
    # REINFORCE surrogate trains the scores; the policy must put its mass on the
    # right position.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    Tk, n = 5, 32
    m = HardAttention(Tk, Tk, score="general", estimator="reinforce")
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    keys = torch.eye(Tk).expand(n, Tk, Tk)
    for _ in range(200):
        target = torch.randint(Tk, (n,), generator=g)
        q = torch.nn.functional.one_hot(target, Tk).float()  # (n, Tk): a single step per example
        vals = torch.randn(n, Tk, 1, generator=g)
        r = m(q, keys, vals, generator=g)
        reward = -(r.output - vals[torch.arange(n), target]).square().squeeze(-1)  # (n,)
        loss = m.reinforce_loss(reward, r.log_prob, r.entropy, entropy_weight=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    r = m(torch.eye(Tk), torch.eye(Tk).expand(Tk, Tk, Tk), need_weights=True)
    assert torch.equal(r.index, torch.arange(Tk))
    assert r.weights.diagonal().min() > 0.9
    assert float(m.baseline) > -0.5  # the reward rose from about -2 (a random pick) towards 0


def test_single_step_shapes_and_key_padding():
    m = make().eval()
    q, k, v = data()
    key_mask = torch.ones(B, TK, dtype=torch.bool)
    key_mask[2, 1:] = False
    r = m(q[:, 0], k, v, mask=key_mask, need_weights=True)
    assert r.output.shape == (B, DV) and r.weights.shape == (B, TK)
    assert r.log_prob.shape == r.entropy.shape == r.index.shape == (B,)
    assert int(r.index[2]) == 0 and float(r.entropy[2].detach()) == 0.0
    full = m(q, k, v, mask=key_mask[:, None], need_weights=True)
    torch.testing.assert_close(r.weights, full.weights[:, 0])


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_fully_masked_rows_no_nan(estimator):
    m = make(estimator=estimator).train()
    q, k, v = data()
    q.requires_grad_(True)
    mask = torch.zeros(B, TQ, TK, dtype=torch.bool)
    mask[0, 0, 2] = True
    r = m(q, k, v, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.index[1:], torch.full((B - 1, TQ), -1)) and int(r.index[0, 0]) == 2
    assert torch.equal(r.output[1:], torch.zeros(B - 1, TQ, DV))
    loss = m.reinforce_loss(torch.ones(B), r.log_prob, r.entropy, entropy_weight=0.1) + r.output.sum()
    loss.backward()
    assert torch.isfinite(q.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_bfloat16(estimator):
    m = make(estimator=estimator).to(torch.bfloat16).train()
    q, k, v = (t.bfloat16() for t in data())
    r = m(q, k, v, mask=a_mask(), need_weights=True, generator=torch.Generator().manual_seed(0))
    assert r.output.dtype == r.weights.dtype == r.log_prob.dtype == torch.bfloat16
    has = r.index >= 0
    torch.testing.assert_close(r.output[has], v[torch.arange(B)[:, None].expand(B, TQ)[has], r.index[has]])
    (m.reinforce_loss(torch.randn(B), r.log_prob, r.entropy, entropy_weight=0.1) + r.output.float().sum()).backward()
    assert all(torch.isfinite(p.grad.float()).all() for p in m.parameters())


@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "concat"])
def test_other_scores(score):
    torch.manual_seed(0)
    m = HardAttention(DK, DK, score=score).eval()
    q, k = torch.randn(B, TQ, DK), torch.randn(B, TK, DK)
    r = m(q, k, need_weights=True)
    assert torch.equal(r.index, r.weights.argmax(-1))
    torch.testing.assert_close(r.output, k[torch.arange(B)[:, None], r.index])


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="unknown estimator 'straight'; valid estimators: reinforce, gumbel"):
        make(estimator="straight")
    with pytest.raises(ValueError, match="tau must be a positive finite float"):
        make(estimator="gumbel", tau=0.0)
    with pytest.raises(ValueError, match="unknown eval_mode 'mean'; valid eval_modes: argmax, expectation"):
        make(eval_mode="mean")
    with pytest.raises(ValueError, match=r"baseline_momentum must be a float in \[0, 1\)"):
        make(baseline_momentum=1.0)
    with pytest.raises(ValueError, match="unknown score 'mlp'; valid scores:"):
        make(score="mlp")
    with pytest.raises(ValueError, match="score='dot' needs query_dim == key_dim"):
        make(score="dot")
    m = make()
    q, k, v = data()
    with pytest.raises(ValueError, match=r"keys must have shape \(B, T, key_dim=6\)"):
        m(q, k[..., :5], v)
    with pytest.raises(ValueError, match="values must have T=7 positions"):
        m(q, k, v[:, :3])
    r = m(q, k, v)
    with pytest.raises(ValueError, match=r"reward must have shape \(B,\) or that of log_prob \(3, 5\)"):
        m.reinforce_loss(torch.ones(TQ), r.log_prob)
    with pytest.raises(ValueError, match="entropy_weight must be a float >= 0"):
        m.reinforce_loss(torch.ones(B), r.log_prob, r.entropy, entropy_weight=-1.0)
    with pytest.raises(ValueError, match="entropy is required when entropy_weight > 0"):
        m.reinforce_loss(torch.ones(B), r.log_prob, entropy_weight=0.1)
