"""Retrieval ranks and R@k on a hand-made similarity matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from damo_lit.metrics import (
    RetrievalMetrics,
    gold_ranks,
    paired_retrieval_metrics,
    rank_metrics,
    ranked_list_metrics,
    retrieval_metrics,
)

# rows: text queries, columns: videos; pair i is (text i, video i)
SIM = np.array(
    [
        [0.9, 0.1, 0.5, 0.0],  # gold 0.9 is the best: rank 1
        [0.2, 0.3, 0.3, 0.1],  # gold 0.3 ties with column 2: pessimistic rank 2
        [0.1, 0.8, 0.7, 0.75],  # two higher: rank 3
        [0.6, 0.5, 0.4, 0.2],  # three higher: rank 4
    ]
)


def test_ranks_by_hand():
    assert gold_ranks(SIM).tolist() == [1, 2, 3, 4]
    # columns as queries (video -> text): col 0 gold 0.9 -> 1; col 1 gold 0.3 below 0.8, 0.5 -> 3;
    # col 2 gold 0.7 vs 0.5, 0.3, 0.4 -> 1; col 3 gold 0.2 vs 0.0, 0.1, 0.75 -> 2
    assert gold_ranks(SIM.T).tolist() == [1, 3, 1, 2]


def test_paired_metrics_by_hand():
    out = paired_retrieval_metrics(SIM, ks=(1, 2, 10))
    assert out["t2v_R@1"] == 0.25 and out["t2v_R@2"] == 0.5 and out["t2v_R@10"] == 1.0
    assert out["t2v_MdR"] == 2.5 and out["t2v_MnR"] == 2.5 and out["t2v_count"] == 4
    assert out["v2t_R@1"] == 0.5 and out["v2t_R@2"] == 0.75 and out["v2t_MdR"] == 1.5 and out["v2t_MnR"] == 1.75


def test_gold_indices_masks_and_nan():
    # non-square: 2 queries over 4 candidates; gold 0.5 is second in row 0, gold 0.1 last in row 1
    sim = SIM[:2]
    assert gold_ranks(sim, gold=[2, 3]).tolist() == [2, 4]
    assert retrieval_metrics(sim, gold=[2, 3])["MnR"] == 3.0
    mask = np.zeros_like(SIM, dtype=bool)
    mask[2, [0, 3]] = True  # several gold candidates: the best of them counts (0.75 -> rank 2)
    mask[[0, 1, 3], [0, 1, 3]] = True
    assert gold_ranks(SIM, mask).tolist() == [1, 2, 2, 4]
    with_nan = SIM.copy()
    with_nan[0, 0] = np.nan  # NaN is the lowest score: the gold drops to the last place
    assert gold_ranks(with_nan)[0] == 4
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(sim)
    with pytest.raises(ValueError, match="no gold candidate"):
        gold_ranks(SIM, np.zeros_like(SIM, dtype=bool))


def test_constant_scores_rank_last():
    assert gold_ranks(np.ones((5, 5))).tolist() == [5] * 5


def test_a_gold_missing_from_its_ranked_list_is_a_miss_at_every_k():
    """Its rank is only known to lie beyond the list: no R@k may count it, however large k is,
    and the median and mean ranks are reported as lower bounds, never as exact figures."""
    lists = [["v1", "v0"], ["v2", "v3"], []]  # gold second; gold not in a 2-long list; an empty list
    out = ranked_list_metrics(lists, [{"v0"}, {"v1"}, {"v2"}], ks=(1, 2, 10))
    assert out["R@1"] == 0.0 and out["R@2"] == pytest.approx(1 / 3) and out["R@10"] == pytest.approx(1 / 3)
    assert out["gold_not_ranked"] == 2 and out["count"] == 3
    assert "MdR" not in out and "MnR" not in out
    assert out["MdR_lower_bound"] == 2.0 and out["MnR_lower_bound"] == pytest.approx((2 + 3 + 1) / 3)
    every_gold_ranked = ranked_list_metrics([["v1", "v0"], ["v3"]], [{"v0", "v9"}, {"v3"}], ks=(1,))
    assert every_gold_ranked == {"R@1": 0.5, "MdR": 1.5, "MnR": 1.5, "count": 2.0, "gold_not_ranked": 0}


def test_rank_metrics_needs_one_flag_per_rank():
    with pytest.raises(ValueError, match="beyond has 1 entries but there are 2 ranks"):
        rank_metrics([1, 2], beyond=[True])


def test_retrieval_metric_matches_function_over_batches():
    torch.manual_seed(0)
    text, video = torch.randn(13, 8), torch.randn(13, 8)
    video[:6] = text[:6] + 0.1 * video[:6]  # make some pairs easy
    metric = RetrievalMetrics()
    for lo in range(0, 13, 5):
        metric.update(text[lo : lo + 5], video[lo : lo + 5])
    out = {k: float(v) for k, v in metric.compute().items()}
    sim = F.normalize(text.double(), dim=-1) @ F.normalize(video.double(), dim=-1).T
    expected = paired_retrieval_metrics(sim.numpy())
    assert out == pytest.approx(expected, rel=1e-6)
    assert out["t2v_R@1"] >= 6 / 13
    with pytest.raises(ValueError, match="width changed"):
        metric.update(torch.randn(2, 4), torch.randn(2, 4))
