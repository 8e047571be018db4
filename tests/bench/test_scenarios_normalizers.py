"""The ``normalizers`` bench scenario: registered, and its builders run at the tiny shape."""

import torch

from attnlab.bench import cases
from attnlab.bench.scenarios import SCENARIOS, get_scenario


def test_normalizers_scenario_registered():
    sc = get_scenario("normalizers")
    assert "normalizers" in SCENARIOS
    assert {c.impl for c in sc.cases} == {"attnlab", "attend-sigmoid", "attnlab-relu", "attend-relu"}
    assert {t.num for t in sc.targets} == {"attend-sigmoid", "attend-relu"}
    assert set(sc.shapes) == {"full", "quick", "tiny"}


def test_normalizers_builders_agree_at_tiny_shape():
    shape = dict(get_scenario("normalizers").shapes["tiny"])
    for norm in ("sigmoid", "relu"):
        torch.manual_seed(0)
        ours = cases.build_normalized_attnlab(**shape, normalizer=norm)()
        torch.manual_seed(0)
        ref = cases.build_normalized_reference(**shape, normalizer=norm)()
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_decode_one_thread_row_is_informational():
    sc = get_scenario("decode")
    row = next(c for c in sc.cases if c.impl == "attnlab-1-thread")
    assert row.params == {"cached": True}
    assert sc.params("quick", row)["threads"] == 1 and "threads" not in sc.params("tiny", row)
    assert all(t.num != "attnlab-1-thread" and t.den != "attnlab-1-thread" for t in sc.targets)
