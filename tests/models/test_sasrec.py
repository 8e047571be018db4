"""SASRec (Kang & McAuley, 2018) and the GRU4Rec-style baseline: causality, padding, the
BCE loss of eq. 3, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.models.gru_rec import GRURec, GRURecConfig, _realign
from attnlab.models.sasrec import SASRec, SASRecConfig, bce_next_item_loss

NUM_ITEMS = 11


def _sasrec(**kw):
    torch.manual_seed(0)
    cfg = dict(num_items=NUM_ITEMS, max_len=7, d_model=12, num_blocks=2, num_heads=3, dropout=0.0)
    cfg.update(kw)
    return SASRec(SASRecConfig(**cfg)).eval()


def _gru(**kw):
    torch.manual_seed(0)
    cfg = dict(num_items=NUM_ITEMS, max_len=7, d_model=12, hidden_size=5, dropout=0.0)
    cfg.update(kw)
    return GRURec(GRURecConfig(**cfg)).eval()


ITEMS = torch.tensor([[0, 0, 3, 5, 7, 1, 2], [4, 9, 11, 2, 6, 8, 10], [0, 0, 0, 0, 0, 0, 5]])  # (3, 7) left-padded


@pytest.mark.parametrize("make", [_sasrec, _gru])
@pytest.mark.parametrize("t", [1, 3, 5])
def test_output_at_t_ignores_later_items(make, t):
    model = make()
    other = ITEMS.clone()
    other[:, t + 1 :] = torch.tensor([8, 1, 3, 9, 4, 6, 7])[t + 1 :]  # other items after t
    h1, h2 = model(ITEMS).hidden, model(other).hidden  # (3, 7, d)
    torch.testing.assert_close(h1[:, : t + 1], h2[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(h1[:, t + 1 :], h2[:, t + 1 :])  # later positions do see them


@pytest.mark.parametrize("make", [_sasrec, _gru])
def test_padding_gives_zero_and_does_not_leak(make):
    model = make()
    h = model(ITEMS).hidden
    assert h.shape == (3, 7, 12)
    assert torch.equal(h[0, :2], torch.zeros(2, 12)) and torch.equal(h[2, :6], torch.zeros(6, 12))
    # A user's last output depends on their items only, not on how much padding precedes them
    # (for SASRec: with positions counted from the right edge of the window).
    short = ITEMS[2:, -1:]  # (1, 1): the same single item, no padding
    torch.testing.assert_close(model(short).hidden[0, -1], h[2, -1], rtol=1e-5, atol=1e-6)


def test_sasrec_attention_weights_are_causal_and_skip_padding():
    out = _sasrec()(ITEMS, need_weights=True)
    assert len(out.weights) == 2
    for w in out.weights:
        assert w.shape == (3, 3, 7, 7)  # (B, H, T, T)
        upper = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
        assert torch.equal(w[..., upper], torch.zeros_like(w[..., upper]))
        assert torch.equal(w[0, :, :, :2], torch.zeros(3, 7, 2))  # padding keys get nothing
        assert torch.equal(w[0, :, :2], torch.zeros(3, 2, 7))  # padding queries attend nothing
        torch.testing.assert_close(w[0, :, 2:].sum(-1), torch.ones(3, 5))


def test_gru_matches_per_user_run_without_padding():
    model = _gru()
    h = model(ITEMS).hidden
    for b in range(3):
        real = ITEMS[b][ITEMS[b] != 0]
        x = model.item_emb(real[None])  # (1, n, d)
        ref = model.proj(model.gru(x)[0])[0]  # (n, d)
        torch.testing.assert_close(h[b, -len(real) :], ref, rtol=1e-5, atol=1e-6)


def test_realign_round_trip():
    x = torch.arange(3 * 5).view(3, 5)
    lengths = torch.tensor([2, 5, 0])
    right = _realign(x, lengths, to_left=False)
    assert right[0, :2].tolist() == [3, 4] and right[1].tolist() == x[1].tolist()
    assert torch.equal(_realign(right, lengths, to_left=True), x)


def test_bce_loss_matches_hand_formula():
    model = _sasrec()
    items = torch.tensor([[0, 3, 5], [2, 4, 6]])
    pos = torch.tensor([[0, 5, 7], [4, 6, 8]])
    neg = torch.tensor([[0, 9, 1], [10, 11, 3]])
    loss, n = bce_next_item_loss(model, items, pos, neg)
    with torch.no_grad():
        h, emb = model(items).hidden, model.item_emb.weight.detach()
    terms = []
    for b in range(2):
        for t in range(3):
            if pos[b, t]:
                sp = float(h[b, t] @ emb[pos[b, t]])
                sn = float(h[b, t] @ emb[neg[b, t]])
                terms.append(-math.log(1 / (1 + math.exp(-sp))) - math.log(1 - 1 / (1 + math.exp(-sn))))
    assert n == 5
    assert loss.item() == pytest.approx(sum(terms) / 5, rel=1e-5)


def test_scores_last_position_shapes():
    model = _sasrec()
    h = model.last_hidden(ITEMS)  # (3, d)
    cands = torch.tensor([[1, 2, 3, 4, 5]] * 3)
    s = model.scores(h, cands)
    assert s.shape == (3, 5)
    torch.testing.assert_close(s[1, 2], h[1] @ model.item_emb.weight[3])


def test_training_step_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(1)
    model = SASRec(SASRecConfig(num_items=NUM_ITEMS, max_len=7, d_model=8, num_blocks=1, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    items, pos = ITEMS[:, :-1], ITEMS[:, 1:]
    items = torch.where(pos == 0, 0, items)
    neg = torch.where(pos == 0, 0, (pos % NUM_ITEMS) + 1)
    first = bce_next_item_loss(model, items, pos, neg)[0].item()
    for _ in range(20):
        opt.zero_grad()
        bce_next_item_loss(model, items, pos, neg)[0].backward()
        opt.step()
    assert bce_next_item_loss(model, items, pos, neg)[0].item() < 0.5 * first


def test_bad_input():
    model = _sasrec()
    with pytest.raises(TypeError, match="items must be an int64 tensor"):
        model(ITEMS.float())
    with pytest.raises(ValueError, match=r"items must have shape \(B, T\)"):
        model(ITEMS[0])
    with pytest.raises(ValueError, match="T=8 positions, more than max_len=7"):
        model(torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="outside 0 .. num_items=11"):
        model(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="candidates holds ids outside"):
        model.scores(torch.zeros(1, 12), torch.tensor([[-1]]))
    with pytest.raises(ValueError, match="positives holds no item"):
        bce_next_item_loss(model, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                           torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by num_heads \(3\)"):
        SASRecConfig(num_items=3, d_model=10, num_heads=3)
    with pytest.raises(ValueError, match="num_items must be > 0"):
        SASRecConfig(num_items=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        GRURecConfig(num_items=3, dropout=1.5)
    with pytest.raises(TypeError, match="config must be a SASRecConfig"):
        SASRec(GRURecConfig(num_items=3))
    with pytest.raises(ValueError, match="no attention weights"):
        _gru()(ITEMS, need_weights=True)
