import math

import pytest
import torch

from attnlab.train.metrics import (
    corpus_bleu,
    corpus_chrf,
    label_smoothed_cross_entropy,
    perplexity,
    token_accuracy,
)

HYPS = ["the cat sat on the mat", "the cat sat on the"]
REFS = ["the cat sat on a mat", "the cat sat on a mat"]


def test_bleu_identical_text_is_100():
    score, signature = corpus_bleu(["Das ist gut .", "Hallo Welt"], ["Das ist gut .", "Hallo Welt"])
    assert score == pytest.approx(100.0)
    assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_bleu_matches_hand_computation():
    # Clipped n-gram matches / hypothesis n-grams, summed over both sentences:
    # 1-grams (5+4)/(6+5), 2-grams (3+3)/(5+4), 3-grams (2+2)/(4+3), 4-grams (1+1)/(3+2);
    # hypothesis length 11 < reference length 12, so BP = exp(1 - 12/11).
    precisions = [9 / 11, 6 / 9, 4 / 7, 2 / 5]
    expected = 100 * math.exp(1 - 12 / 11) * math.exp(sum(map(math.log, precisions)) / 4)
    assert corpus_bleu(HYPS, REFS).score == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(54.258, abs=1e-3)  # what sacrebleu 2.x prints for this corpus


def test_bleu_single_sentence_without_brevity_penalty():
    # 5/6, 3/5, 2/4, 1/3 and equal lengths: BLEU = (1/12)^(1/4).
    assert corpus_bleu(HYPS[:1], REFS[:1]).score == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)


def test_multiple_references_per_sentence():
    one = corpus_bleu(HYPS, REFS).score
    both = corpus_bleu(HYPS, [[r, h] for r, h in zip(REFS, HYPS)])
    assert both.score == pytest.approx(100.0) and one < 100
    assert both.signature.startswith("nrefs:2|")


def test_chrf():
    same = corpus_chrf(["Hallo Welt"], ["Hallo Welt"])
    assert same.score == pytest.approx(100.0) and same.signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    close = corpus_chrf(["the cat sat on the mat"], ["the cat sat on a mat"]).score
    far = corpus_chrf(["a dog ran"], ["the cat sat on a mat"]).score
    assert 0 < far < close < 100
    assert "nw:2" in corpus_chrf(["a b"], ["a b"], word_order=2).signature  # chrF++


def test_metric_input_errors():
    with pytest.raises(TypeError, match="hypotheses must be a list of strings"):
        corpus_bleu("the cat", ["the cat"])
    with pytest.raises(ValueError, match="references has 1 entries but hypotheses has 2"):
        corpus_bleu(HYPS, REFS[:1])
    with pytest.raises(ValueError, match="hypotheses is empty"):
        corpus_chrf([], [])
    with pytest.raises(TypeError, match=r"hypotheses\[1\] must be a string"):
        corpus_bleu(["a", [1, 2]], ["a", "b"])
    with pytest.raises(ValueError, match=r"references\[1\] must be a string or a list of 2 strings"):
        corpus_bleu(HYPS, [["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="word_order must be 0"):
        corpus_chrf(HYPS, REFS, word_order=3)


def test_token_accuracy_ignores_padding():
    logits = torch.full((2, 3, 5), -1.0)
    pred = torch.tensor([[1, 2, 3], [4, 0, 0]])
    logits.scatter_(-1, pred.unsqueeze(-1), 1.0)
    target = torch.tensor([[1, 2, 4], [4, 0, 0]])  # 0 = pad in row 2
    assert token_accuracy(logits, target) == pytest.approx(5 / 6)
    assert token_accuracy(logits, target, ignore_index=0) == pytest.approx(3 / 4)
    assert math.isnan(token_accuracy(logits, torch.zeros(2, 3, dtype=torch.long), ignore_index=0))
    with pytest.raises(ValueError, match=r"target of shape \(3, 2\) must match logits of shape \(2, 3, 5\)"):
        token_accuracy(logits, target.t())
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        token_accuracy(logits, target.float())


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(torch.tensor(math.log(7.0))) == pytest.approx(7.0)
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError, match="mean_nll must be >= 0"):
        perplexity(-0.1)
    with pytest.raises(TypeError, match="mean_nll must be a number"):
        perplexity("2.0")


def reference_smoothed_ce(logits, target, eps, ignore_index):
    """(1 - eps) * NLL + eps * mean over the vocabulary of -log p, averaged over kept tokens."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total, n = 0.0, 0
    for idx in torch.nonzero(target != ignore_index):
        row, y = logp[tuple(idx)], target[tuple(idx)]
        total += (1 - eps) * -row[y] + eps * -row.mean()
        n += 1
    return total / n


def test_label_smoothed_cross_entropy_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 7, (3, 5))
    target[0, 3:] = 0
    target[2, 4] = 0
    loss = label_smoothed_cross_entropy(logits, target, smoothing=0.1, ignore_index=0)
    torch.testing.assert_close(loss, reference_smoothed_ce(logits, target, 0.1, 0))
    plain = label_smoothed_cross_entropy(logits, target, ignore_index=0)
    torch.testing.assert_close(plain, reference_smoothed_ce(logits, target, 0.0, 0))
    per_token = label_smoothed_cross_entropy(logits, target, smoothing=0.1, ignore_index=0, reduction="none")
    assert per_token.shape == (3, 5) and per_token[0, 3:].eq(0).all()
    torch.testing.assert_close(per_token.sum() / (target != 0).sum(), loss)
    torch.autograd.gradcheck(
        lambda x: label_smoothed_cross_entropy(x, target, smoothing=0.1, ignore_index=0), (logits,)
    )


def test_label_smoothed_cross_entropy_bf16_and_errors():
    logits = torch.randn(3, 7, dtype=torch.bfloat16)
    target = torch.tensor([1, 2, 3])
    loss = label_smoothed_cross_entropy(logits, target, smoothing=0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="smoothing must be in \\[0, 1\\)"):
        label_smoothed_cross_entropy(logits, target, smoothing=1.0)
    with pytest.raises(ValueError, match="unknown reduction 'avg'; valid reductions: mean, sum, none"):
        label_smoothed_cross_entropy(logits, target, reduction="avg")
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        label_smoothed_cross_entropy(target, target)
