"""Summarization pairs from package descriptions: filtering, grouped split, lead, ROUGE."""

from __future__ import annotations

import pytest

from attnlab.data.apt_descriptions import Description
from attnlab.data.summarization import (
    SummaryPair,
    description_text,
    lead_summary,
    make_pairs,
    rouge_scores,
    split_summary_pairs,
)


def desc(md5, short, *paragraphs, package="p"):
    return Description(package, md5, short, tuple(paragraphs))


def test_description_text_joins_paragraphs_and_verbatim_lines():
    assert description_text(["A tool.", "Features:\n * one\n *  two"]) == "A tool. Features: * one * two"


def test_make_pairs_filters_and_dedups():
    long = "word " * 12
    descs = {
        "a": desc("a", "Short one", long),
        "b": desc("b", "", long),  # empty synopsis
        "c": desc("c", "Too short", "only five words here now"),
        "d": desc("d", "Short one", long),  # same (text, synopsis) as a
        "e": desc("e", "  Other   synopsis ", long),
    }
    pairs = make_pairs(descs, min_words=10)
    assert [(p.md5, p.summary) for p in pairs] == [("a", "Short one"), ("e", "Other synopsis")]
    assert len(make_pairs(descs, min_words=0)) == 3
    with pytest.raises(ValueError, match="min_words"):
        make_pairs(descs, min_words=-1)


def _pairs(n_groups=30, per_group=2):
    out = []
    for g in range(n_groups):
        for k in range(per_group):
            out.append(SummaryPair(f"{g}-{k}", f"pkg{g}-{k}", f"Family {g} shares this first paragraph. Part {k}.",
                                   f"family {g} part {k}"))
    # one boilerplate group bigger than max_group
    out += [SummaryPair(f"b{i}", f"b{i}", "Boilerplate text.", f"b {i}") for i in range(7)]
    return out


def test_split_is_grouped_deterministic_and_keeps_big_groups_in_train():
    pairs = _pairs()
    key = lambda p: p.source.split(".")[0]  # noqa: E731
    sp = split_summary_pairs(pairs, valid=5, test=7, seed=0, max_group=5, group_key=key)
    assert sp == split_summary_pairs(pairs, valid=5, test=7, seed=0, max_group=5, group_key=key)
    assert len(sp["test"]) in (7, 8) and len(sp["valid"]) in (5, 6)  # groups of 2 are never cut
    assert sum(len(v) for v in sp.values()) == len(pairs)
    families = {s: {key(p) for p in sp[s]} for s in sp}
    assert not families["train"] & families["test"] and not families["valid"] & families["test"]
    assert all(p.source != "Boilerplate text." for p in sp["test"] + sp["valid"])
    assert sp != split_summary_pairs(pairs, valid=5, test=7, seed=1, max_group=5, group_key=key)


def test_split_errors():
    with pytest.raises(ValueError, match="must not exceed"):
        split_summary_pairs(_pairs(2), valid=10, test=10)
    with pytest.raises(ValueError, match="max_group"):
        split_summary_pairs(_pairs(2), valid=1, test=1, max_group=1, group_key=lambda p: "one")
    with pytest.raises(TypeError, match="seed"):
        split_summary_pairs(_pairs(), valid=1, test=1, seed="0")


def test_lead_summary():
    text = "0 A.D. (pronounced zero) is a game, e.g. a fun one. It has maps. More."
    assert lead_summary(text, None) == "0 A.D. (pronounced zero) is a game, e.g. a fun one"
    assert lead_summary(text, 3) == "0 A.D. (pronounced"
    assert lead_summary("One sentence only.", 10) == "One sentence only"
    with pytest.raises(ValueError, match="words"):
        lead_summary(text, 0)
    with pytest.raises(TypeError, match="text"):
        lead_summary(None)


def test_rouge_hand_checked():
    # hyp "the cat sat", ref "the cat ran": unigram P = R = 2/3; bigram 1/2; LCS 2 -> 2/3
    s = rouge_scores(["the cat sat"], ["the cat ran"])
    assert s["rouge1"] == pytest.approx(200 / 3) and s["rouge2"] == pytest.approx(50.0)
    assert s["rougeL"] == pytest.approx(200 / 3) and s["n"] == 1
    assert rouge_scores(["a b", "x"], ["a b", "y"])["rouge1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="same length"):
        rouge_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        rouge_scores([], [])


def test_load_aclsum_bad_args_and_data():
    from attnlab.data.summarization import load_aclsum

    with pytest.raises(ValueError, match="target"):
        load_aclsum("test", "abstract")
    with pytest.raises(ValueError, match="split"):
        load_aclsum("dev")
    pytest.importorskip("aclsum")
    pairs = load_aclsum("val", "approach")
    assert len(pairs) == 50 and all(p.source and p.summary for p in pairs)
    assert " ." not in pairs[0].source and " ," not in pairs[0].source
