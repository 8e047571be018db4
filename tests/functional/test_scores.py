import math

import pytest
import torch

from attnlab.functional import scores as S

torch.manual_seed(0)


def loop_additive(q, k, w_q, w_k, v, b=None):
    # Bahdanau's e_ij = v^T tanh(W_q q_i + W_k k_j + b), one pair at a time.
    out = torch.empty(q.shape[0], k.shape[0], dtype=q.dtype)
    for i in range(q.shape[0]):
        for j in range(k.shape[0]):
            h = w_q @ q[i] + w_k @ k[j]
            if b is not None:
                h = h + b
            out[i, j] = v @ torch.tanh(h)
    return out


def test_dot_and_scaled_dot_match_loops():
    q, k = torch.randn(3, 5, 7), torch.randn(3, 11, 7)
    ref = torch.einsum("bid,bjd->bij", q, k)
    torch.testing.assert_close(S.dot_score(q, k), ref)
    torch.testing.assert_close(S.scaled_dot_score(q, k), ref / math.sqrt(7))
    torch.testing.assert_close(S.scaled_dot_score(q, k, scale=0.5), ref * 0.5)


def test_general_is_bilinear():
    q, k, w = torch.randn(5, 3), torch.randn(7, 4), torch.randn(3, 4)
    ref = torch.stack([torch.stack([q[i] @ w @ k[j] for j in range(7)]) for i in range(5)])
    torch.testing.assert_close(S.general_score(q, k, w), ref)


def test_additive_and_concat_match_paper_loops():
    q, k = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    w_q, w_k = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 4, dtype=torch.float64)
    v, b = torch.randn(11, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    torch.testing.assert_close(S.additive_score(q, k, w_q, w_k, v, b), loop_additive(q, k, w_q, w_k, v, b))
    w = torch.cat([w_q, w_k], dim=1)  # Luong's W [h_t; h_s]
    torch.testing.assert_close(S.concat_score(q, k, w, v), loop_additive(q, k, w_q, w_k, v))


def test_batch_dims_broadcast():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(1, 3, 7, 4)
    assert S.scaled_dot_score(q, k).shape == (2, 3, 5, 7)


@pytest.mark.parametrize("name", sorted(S.SCORES))
def test_gradcheck_every_score(name):
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k = torch.randn(2, 3, 4, **d), torch.randn(2, 5, 4, **d)
    params = {
        "dot": {},
        "scaled_dot": {},
        "general": {"weight": torch.randn(4, 4, **d)},
        "additive": {"w_q": torch.randn(6, 4, **d), "w_k": torch.randn(6, 4, **d), "v": torch.randn(6, **d)},
        "concat": {"weight": torch.randn(6, 8, **d), "v": torch.randn(6, **d)},
    }[name]
    keys = list(params)
    fn = S.get_score(name)

    def f(q, k, *ps):
        return fn(q, k, **dict(zip(keys, ps)))

    assert torch.autograd.gradcheck(f, (q, k, *params.values()))


def test_bad_inputs_name_the_argument():
    q, k = torch.randn(5, 4), torch.randn(7, 3)
    with pytest.raises(ValueError, match="q and k must share their last dimension"):
        S.dot_score(q, k)
    with pytest.raises(ValueError, match="weight must have shape"):
        S.general_score(q, k, torch.randn(3, 3))
    with pytest.raises(ValueError, match="w_k must have shape"):
        S.additive_score(q, k, torch.randn(6, 4), torch.randn(6, 4), torch.randn(6))
    with pytest.raises(ValueError, match="empty key axis"):
        S.dot_score(q, torch.randn(0, 4))
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        S.dot_score(torch.ones(5, 4, dtype=torch.long), k)
    with pytest.raises(ValueError, match="unknown score 'cosine'; valid scores: additive, concat, dot, general, scaled_dot"):
        S.get_score("cosine")


def test_bf16_follows_input():
    q, k = torch.randn(5, 4, dtype=torch.bfloat16), torch.randn(7, 4, dtype=torch.bfloat16)
    assert S.scaled_dot_score(q, k).dtype == torch.bfloat16
