"""Text-video retrieval: R@1/5/10, median and mean rank, as stage 1 is judged (zero-shot MSR-VTT, MSVD).

A query's rank is the position of its best gold candidate when candidates are sorted by
similarity, counted pessimistically: rank = the number of candidates scoring at least as high
as the best gold one (the gold one included), so tied scores never flatter a model (a model
that gives every pair the same score ranks every query last, not first). NaN scores count as
the lowest possible. Rates are fractions in [0, 1], like the grounding metrics.

Ranked lists (`ranked_list_metrics`) are finite: a gold candidate missing from its query's list
has a rank that is not known, only that it lies beyond the list. Such a query misses every R@k,
and the median and mean ranks become lower bounds, under their own keys (`MdR_lower_bound`,
`MnR_lower_bound`), so that they are never read as the exact figures.

numpy only (torch tensors are accepted and read back to the CPU); the DDP-synced torchmetrics
wrapper over paired embeddings is `RetrievalMetrics` in damo_lit.metrics.modules.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)


def _numpy(value: Any) -> np.ndarray:
    """A numpy copy of an array-like, torch tensors included (detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def gold_ranks(sim: Any, gold: Any = None) -> np.ndarray:
    """1-based rank of each query's best gold candidate in `sim` (Q, C).

    `gold`: None (query i's gold is candidate i; `sim` must be square), a (Q,) array of
    candidate indices, or a (Q, C) boolean mask (several gold candidates per query, e.g. a video
    described by several captions). Every query needs at least one gold candidate.
    """
    scores = _numpy(sim).astype(np.float64)
    if scores.ndim != 2:
        raise ValueError(f"the similarity matrix must be 2-D (queries x candidates), got shape {scores.shape}")
    num_q, num_c = scores.shape
    scores = np.where(np.isnan(scores), -np.inf, scores)
    if gold is None:
        if num_q != num_c:
            raise ValueError(f"without gold indices the similarity matrix must be square, got {num_q} x {num_c}")
        mask = np.eye(num_q, dtype=bool)
    else:
        gold_arr = _numpy(gold)
        if gold_arr.dtype == bool:
            if gold_arr.shape != scores.shape:
                raise ValueError(f"a gold mask must have the similarity matrix's shape {scores.shape}, got {gold_arr.shape}")
            mask = gold_arr
        else:
            gold_idx = gold_arr.astype(np.int64).reshape(-1)
            if gold_idx.shape != (num_q,) or (num_q and (gold_idx.min() < 0 or gold_idx.max() >= num_c)):
                raise ValueError(f"gold must hold one candidate index in [0, {num_c}) per query ({num_q} queries)")
            mask = np.zeros_like(scores, dtype=bool)
            mask[np.arange(num_q), gold_idx] = True
    without_gold = np.nonzero(~mask.any(axis=1))[0]
    if len(without_gold):
        raise ValueError(f"{len(without_gold)} queries have no gold candidate (first: query {int(without_gold[0])})")
    best_gold = np.where(mask, scores, -np.inf).max(axis=1)
    return (scores >= best_gold[:, None]).sum(axis=1)


def rank_metrics(ranks: Any, ks: Sequence[int] = DEFAULT_KS, prefix: str = "", beyond: Any = None) -> dict[str, float]:
    """R@k (fraction of ranks <= k), MdR (median rank), MnR (mean rank) and count, keys prefixed.

    `beyond` (one bool per query, optional) marks ranks known only as lower bounds (the gold
    candidate lay past the end of a finite list): those queries miss every R@k, since a rank that
    is not known is no hit, and when there is one MdR and MnR are reported as `MdR_lower_bound`
    and `MnR_lower_bound` instead (computed from the bounds), never as the exact figures.
    """
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("no ranks to summarise: the retrieval set is empty")
    known = np.ones(ranks.shape, dtype=bool) if beyond is None else ~np.asarray(beyond, dtype=bool).reshape(-1)
    if known.shape != ranks.shape:
        raise ValueError(f"beyond has {known.size} entries but there are {ranks.size} ranks")
    out = {f"{prefix}R@{k}": float(np.mean((ranks <= k) & known)) for k in ks}
    bound = "" if known.all() else "_lower_bound"
    out[f"{prefix}MdR{bound}"] = float(np.median(ranks))
    out[f"{prefix}MnR{bound}"] = float(np.mean(ranks))
    out[f"{prefix}count"] = float(ranks.size)
    return out


def list_rank(ranked: Sequence[str], gold: Collection[str]) -> int | None:
    """1-based position of the first gold candidate in a ranked list, None when none is in it."""
    return next((i + 1 for i, cand in enumerate(ranked) if cand in gold), None)


def ranked_list_metrics(ranked: Sequence[Sequence[str]], gold: Sequence[Collection[str]],
                        ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """`rank_metrics` of ranked candidate lists (best first), query by query against its gold ids,
    plus `gold_not_ranked`: the queries whose list holds no gold candidate. Their rank is only
    known to exceed their list's length: they miss every R@k and make MdR / MnR lower bounds."""
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} ranked lists for {len(gold)} queries with gold candidates")
    found = [list_rank(cands, set(golds)) for cands, golds in zip(ranked, gold)]
    beyond = [rank is None for rank in found]
    bounds = [len(cands) + 1 if rank is None else rank for rank, cands in zip(found, ranked)]
    out = rank_metrics(bounds, ks, beyond=beyond)
    out["gold_not_ranked"] = sum(beyond)
    return out


def retrieval_metrics(sim: Any, gold: Any = None, ks: Sequence[int] = DEFAULT_KS, prefix: str = "") -> dict[str, float]:
    """R@k, MdR, MnR and count of the queries (rows) of a similarity matrix; see `gold_ranks`."""
    return rank_metrics(gold_ranks(sim, gold), ks, prefix)


def paired_retrieval_metrics(sim: Any, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Both directions of a square text x video similarity matrix whose pairs are on the diagonal:
    keys 't2v_R@1' ... 't2v_MnR' (rows are text queries) and 'v2t_...' (columns as queries)."""
    scores = _numpy(sim)
    out = retrieval_metrics(scores, None, ks, "t2v_")
    out.update(retrieval_metrics(scores.T, None, ks, "v2t_"))
    return out
