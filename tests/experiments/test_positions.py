"""``attnlab experiment positions``: the windowing protocols on a hand-made stream, the
scoring against a hand-computed bigram model, the training batches, the markdown table,
the plot, and a tiny end-to-end run of two schemes (with resume) on the fixture corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attnlab import cli
from attnlab.experiments import positions as P

FIXTURE = Path(__file__).parents[1] / "data" / "fixtures" / "de-en-excerpt.txt"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
L, H, N = 3, 12, 41  # training length, horizon 4L, stream length


def stream(n: int = N) -> torch.Tensor:
    return torch.arange(n)  # token id = position in the stream, so windows can be read off


# ----------------------------------------------------------------------------- windows


def test_nonoverlapping_windows_score_the_same_tokens_at_every_length():
    m = ((N - 1) // H) * H  # 36 targets: stream[1 .. 36]
    for w in (L, 2 * L, 4 * L):
        win = P.make_windows(stream(), w, length=L, horizon=H, protocol="nonoverlapping")
        assert win.inputs.shape == (m // w, w) and win.scored == w and win.num_scored == m
        assert torch.equal(win.targets, win.inputs + 1)  # the next token of each input
        assert torch.equal(win.inputs[:, 0], torch.arange(0, m, w))  # consecutive, no overlap
        assert sorted(win.scored_targets().flatten().tolist()) == list(range(1, m + 1))


def test_sliding_windows_score_the_last_L_tokens_with_full_context():
    ends = range(H, N, L)  # 12, 15, .., 39 (a window needs its next token: end <= n - 1 = 40)
    expected = list(range(H - L + 1, ends[-1] + 1))  # targets 10 .. 39
    for w in (L, 2 * L, 4 * L):
        win = P.make_windows(stream(), w, length=L, horizon=H, protocol="sliding")
        assert win.inputs.shape == (len(ends), w) and win.scored == L
        assert torch.equal(win.inputs[:, -1], torch.tensor(list(ends)) - 1)
        assert torch.equal(win.targets, win.inputs + 1)
        scored = win.scored_targets()  # (N, L)
        assert sorted(scored.flatten().tolist()) == expected  # each once, same set for every w
        # every scored target has at least w - L tokens of context inside its window
        assert torch.equal(scored[:, 0] - win.inputs[:, 0], torch.full((scored.shape[0],), w - L + 1))


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"window": 2}, ValueError, r"window must lie in \[length, horizon\] = \[3, 12\], got window=2"),
        ({"window": 15}, ValueError, r"window must lie in \[length, horizon\]"),
        ({"window": 9}, ValueError, r"window \(9\) must divide horizon \(12\)"),
        ({"protocol": "strided"}, ValueError, "unknown protocol 'strided'; valid protocols: nonoverlapping, sliding"),
        ({"stream": torch.arange(12)}, ValueError, "stream has 12 tokens; need at least horizon \\+ 1 = 13"),
        ({"stream": torch.zeros(20)}, ValueError, "stream must be a 1-D integer tensor"),
        ({"stream": [1, 2, 3]}, TypeError, "stream must be a 1-D long torch.Tensor"),
        ({"length": 0}, ValueError, "length must be > 0"),
    ],
)
def test_make_windows_rejects_bad_input(kw, error, match):
    args = {"stream": stream(), "window": 6, "length": L, "horizon": H, "protocol": "nonoverlapping", **kw}
    with pytest.raises(error, match=match):
        P.make_windows(args.pop("stream"), args.pop("window"), **args)


# ----------------------------------------------------------------------------- scoring


class Bigram(torch.nn.Module):
    """logits[t] = log P[x_t]: a model whose NLL can be computed by hand."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.logp = probs.log()

    def forward(self, x):
        return self.logp[x]  # (B, W, V)


@pytest.mark.parametrize("protocol", ["nonoverlapping", "sliding"])
def test_score_windows_matches_a_hand_computed_bigram_nll(protocol):
    g = torch.Generator().manual_seed(0)
    V = 5
    probs = torch.rand(V, V, generator=g, dtype=torch.float64) + 0.1
    probs = probs / probs.sum(1, keepdim=True)
    s = torch.randint(0, V, (N,), generator=g)
    win = P.make_windows(s, 6, length=L, horizon=H, protocol=protocol)
    score = P.score_windows(Bigram(probs), win, batch_size=2)
    nll, count, per_pos = 0.0, 0, [[] for _ in range(6)]
    for row_in, row_out in zip(win.inputs.tolist(), win.targets.tolist()):
        for t, (a, b) in enumerate(zip(row_in, row_out)):
            if t >= 6 - win.scored:
                nll -= math.log(probs[a, b])
                count += 1
                per_pos[t].append(-math.log(probs[a, b]))
    assert score.tokens == count == win.num_scored
    assert score.token_nll.shape == (win.inputs.shape[0], win.scored)
    first_in, first_out = win.inputs[0, 6 - win.scored], win.scored_targets()[0, 0]
    assert score.token_nll[0, 0].item() == pytest.approx(-math.log(probs[first_in, first_out]))
    assert score.nll == pytest.approx(nll, rel=1e-6)
    assert score.ppl == pytest.approx(math.exp(nll / count), rel=1e-6)
    for t in range(6):
        if per_pos[t]:
            assert score.position_nll[t] == pytest.approx(sum(per_pos[t]) / len(per_pos[t]), rel=1e-6)
        else:
            assert math.isnan(score.position_nll[t])  # unscored positions are NaN, not 0


class PositionDependent(torch.nn.Module):
    """p(next = 0) = sigmoid(t - 2) at window position t, whatever the context: a model
    whose loss depends only on where a token sits in its window."""

    def forward(self, x):
        t = torch.arange(x.shape[1], dtype=torch.float64)
        p0 = torch.sigmoid(t - 2.0)  # (W,)
        logits = torch.stack([p0.log(), (1 - p0).log()], -1)  # (W, 2)
        return logits.expand(x.shape[0], -1, -1)  # (B, W, 2)


def test_nll_change_by_position_compares_the_same_tokens_by_hand():
    s = torch.zeros(N, dtype=torch.long)  # every next token is 0: NLL(t) = -log sigmoid(t - 2)
    model = PositionDependent()
    long = P.score_windows(model, P.make_windows(s, H, length=L, horizon=H))
    short = P.score_windows(model, P.make_windows(s, L, length=L, horizon=H))
    change = P.nll_change_by_position(long, short)
    assert len(change) == H

    def nll(t):
        return -math.log(1 / (1 + math.exp(-(t - 2.0))))

    for p in range(H):
        # the token at position p of a long window sits at p mod L in its short window
        assert change[p] == pytest.approx(nll(p) - nll(p % L), abs=1e-6)  # logits scored in float32
    assert change[:L] == [0.0] * L  # same context and positions below L
    sliding = P.score_windows(model, P.make_windows(s, L, length=L, horizon=H, protocol="sliding"))
    with pytest.raises(ValueError, match="long and short must score the same tokens, got 36 and 30"):
        P.nll_change_by_position(long, sliding)


def test_uniform_model_has_perplexity_equal_to_the_vocabulary():
    V = 7
    model = Bigram(torch.full((V, V), 1.0 / V))
    win = P.make_windows(torch.randint(0, V, (N,)), 12, length=L, horizon=H)
    assert P.score_windows(model, win).ppl == pytest.approx(V)


def test_train_windows_are_contiguous_shuffled_and_a_pure_function_of_epoch_and_seed():
    batches = P.TrainWindows(stream(100), length=4, batch_size=3)
    e0 = list(batches(0, 7))
    assert [b.shape for b in e0] == [(3, 5)] * (len(e0))
    assert all(torch.equal(b[:, 1:] - b[:, :-1], torch.ones(3, 4, dtype=torch.long)) for b in e0)
    starts = torch.cat([b[:, 0] for b in e0])
    assert len(set(starts.tolist())) == len(starts)  # no window twice in an epoch
    assert len(set((starts % 4).tolist())) == 1  # one offset per epoch: windows do not overlap
    assert all(torch.equal(a, b) for a, b in zip(e0, batches(0, 7)))  # same (epoch, seed): same batches
    assert any(not torch.equal(a, b) for a, b in zip(e0, batches(1, 7)))
    assert len(list(P.TrainWindows(stream(12), length=4, batch_size=8)(0, 0))) == 1  # short stream: one batch
    with pytest.raises(ValueError, match="training stream has 8 tokens; need at least 2 \\* length \\+ 1 = 9"):
        P.TrainWindows(stream(8), length=4, batch_size=2)


# ----------------------------------------------------------------------------- reporting


def test_markdown_tables_by_hand():
    ppl = {
        "nonoverlapping": {"alibi": {4: 10.0, 8: 9.5, 16: 9.0}, "rope": {4: 10.0, 8: 30.0, 16: 125.0}},
        "sliding": {"alibi": {4: 11.0, 8: 10.0, 16: 10.0}},
    }
    text = P.markdown_tables(ppl, 4)
    assert text == (
        "Test perplexity, nonoverlapping windows, every token scored (Press et al. 2022 §4):\n"
        "\n"
        "| scheme | 4 (1L) | 8 (2L) | 16 (4L) | 4L / L |\n"
        "|---|---:|---:|---:|---:|\n"
        "| alibi | 10.0 | 9.5 | 9.0 | 0.90 |\n"
        "| rope | 10.0 | 30.0 | 125.0 | 12.50 |\n"
        "\n"
        "Test perplexity, sliding windows (stride L), only the last L = 4 tokens of each scored:\n"
        "\n"
        "| scheme | 4 (1L) | 8 (2L) | 16 (4L) | 4L / L |\n"
        "|---|---:|---:|---:|---:|\n"
        "| alibi | 11.0 | 10.0 | 10.0 | 0.91 |\n"
    )
    assert "| x | 10.0 | – | 0.5 | 0.05 |" in P.markdown_tables({"nonoverlapping": {"x": {4: 10.0, 16: 0.5}, "y": {8: 1.0}}}, 4)
    with pytest.raises(ValueError, match="perplexity is empty"):
        P.markdown_tables({}, 4)
    sessions = [{"load_before": [2.04, 1, 1], "load_after": [6.1, 1, 1]}, {"load_before": [3.0, 1, 1], "load_after": None}]
    assert P._load_text(sessions) == "2.0–6.1" and P._load_text([]) == "–"


def test_plot_writes_a_png_with_one_line_per_scheme_and_protocol(tmp_path):
    ppl = {"nonoverlapping": {"alibi": {16: 10.0, 32: 9.0}, "rope": {16: 10.0, 32: 20.0}},
           "sliding": {"alibi": {16: 11.0, 32: 9.5}, "rope": {16: 11.0, 32: 25.0}}}
    per_pos = {"alibi": [2.0] * 8, "rope": [2.0] * 4 + [3.0] * 4}
    fig = P.plot_positions(ppl, per_pos, 16, tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)
    left, right = fig.axes
    assert [line.get_label() for line in left.get_lines()[:2]] == ["alibi", "rope"]
    assert list(left.get_lines()[0].get_ydata()) == pytest.approx([1.0, 0.9])  # ppl / ppl at L
    assert list(left.get_lines()[1].get_ydata()) == pytest.approx([1.0, 2.0])
    assert list(left.get_lines()[3].get_ydata()) == pytest.approx([1.0, 25.0 / 11.0])  # sliding, rope
    curves = [line for line in right.get_lines() if line.get_label() in per_pos]
    assert list(curves[1].get_ydata()) == [2.0, 2.0, 3.0, 3.0]  # means over buckets of L // 8 = 2 positions
    assert list(curves[1].get_xdata()) == [0.5, 2.5, 4.5, 6.5]
    with pytest.raises(ValueError, match=r"perplexity\['sliding'\]\['rope'\] has no score at the training length 16"):
        P.plot_positions({"sliding": {"rope": {32: 2.0}}}, {}, 16)


# ----------------------------------------------------------------------------- end to end


def _tiny(out, **kw):
    from attnlab.translate import DataSettings

    args = dict(schemes=("learned", "alibi"), minutes=None, steps=3, length=4, vocab_size=150, batch_size=4,
                eval_every=2, model=dict(d_model=16, num_heads=2, num_layers=1, ffn_dim=24),
                data=DataSettings(path=str(FIXTURE), valid=3, test=4), quiet=True,
                command="attnlab experiment positions --x")
    lines: list[str] = []
    res = P.run_experiment(out, **{**args, **kw}, print_fn=lines.append)
    return res, lines


def test_tiny_experiment_end_to_end_and_resume(tmp_path):
    from attnlab.models.decoder_lm import DecoderLM, DecoderLMConfig
    from attnlab.train.checkpoint import load_checkpoint

    out = tmp_path / "exp"
    res, lines = _tiny(out)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) == {"settings", "runs", "perplexity", "nll_change_by_position"}
    assert set(saved["perplexity"]) == {"nonoverlapping", "sliding"}
    for protocol in ("nonoverlapping", "sliding"):
        assert set(saved["perplexity"][protocol]) == {"learned", "alibi"}
        for scheme, by_window in saved["perplexity"][protocol].items():
            assert set(by_window) == {"4", "8", "16"}
            assert all(1.0 < v < 10 * res.settings["vocab_size"] for v in by_window.values())
    for scheme, run in saved["runs"].items():
        assert run["steps"] == 3 and run["best_step"] in (2, 3) and run["parameters"] > 0
        assert {"minutes", "best_valid_ppl", "load", "positional_options"} <= set(run)
        assert len(run["load"]) == 1 and run["load"][0]["steps"] == [0, 3]
    change = saved["nll_change_by_position"]["alibi"]
    assert len(change) == 16 and any(abs(c) > 1e-3 for c in change[4:])
    assert change[:4] == pytest.approx([0.0] * 4, abs=1e-5)  # same context below L (up to float rounding)
    assert saved["settings"]["horizon"] == 16 and saved["settings"]["test_sentences"] == 4
    assert saved["settings"]["scored_tokens"]["nonoverlapping"] == ((saved["settings"]["test_tokens"] - 1) // 16) * 16
    md = res.markdown.read_text()
    assert "attnlab experiment positions --x" in md and "| scheme | 4 (1L) | 8 (2L) | 16 (4L) | 4L / L |" in md
    assert "rows 4..15 were never reached in training" in md
    assert res.plot == out / "positions.png" and res.plot.read_bytes().startswith(PNG_MAGIC)

    # learned rows past L keep their initial values exactly; trained rows moved
    ckpt = load_checkpoint(out / "learned" / "last", restore_rng=False)
    config = DecoderLMConfig(**ckpt.config)
    torch.manual_seed(0)
    init = DecoderLM(config).input_positional.weight.detach().clone()
    trained = DecoderLM(config)
    load_checkpoint(out / "learned" / "last", trained, restore_rng=False)
    rows = trained.input_positional.weight.detach()
    assert rows.shape == (16, 16)
    assert torch.equal(rows[4:], init[4:]) and not torch.allclose(rows[:4], init[:4])

    # a re-run resumes (no new steps) and re-evaluates to the same numbers
    res2, lines2 = _tiny(out)
    assert any("resuming" in line for line in lines2)
    assert res2.runs["alibi"]["steps"] == 3
    assert len(res2.runs["alibi"]["load"]) == 1  # no training happened: no new session recorded
    assert res2.perplexity["nonoverlapping"]["alibi"] == pytest.approx(res.perplexity["nonoverlapping"]["alibi"])
    with pytest.raises(ValueError, match=r"--out .* holds runs made with other settings: length=4 \(now 8\)"):
        _tiny(out, length=8)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--schemes", "alibi,xpos"], "--schemes: unknown scheme(s) xpos; valid schemes: none, sinusoidal"),
        (["--schemes", ","], "--schemes: unknown scheme(s) (none given)"),
        (["--length", "1"], "--length must be at least 2 tokens, got 1"),
        (["--d-model", "10", "--heads", "4"], "--d-model (10) must be divisible by --heads (4)"),
        (["--plot", "/nonexistent-dir/p.png"], "--plot '/nonexistent-dir/p.png': folder '/nonexistent-dir' does not exist"),
    ],
)
def test_cli_bad_input_gives_one_clean_line_before_training(monkeypatch, capsys, tmp_path, argv, message):
    rc = cli.main(["experiment", "positions", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("attnlab experiment: error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_cli_registers_under_the_shared_experiment_group(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["experiment", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "positions" in text and "bahdanau-length" in text
