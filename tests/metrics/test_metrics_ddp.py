"""The metrics give the same figures in one process and in two DDP (gloo, CPU) processes.

Each rank sees a different, uneven part of the same set (and in one case nothing at all); the
synced compute() on every rank must equal the single-process figures on the whole set.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from damo_lit.metrics import GroundingMetrics, QVHighlightsMetrics, RetrievalMetrics

from .helpers import assert_same_tree, leaves

WORLD = 2


def make_data(seed: int = 0) -> dict:
    """A grounding set, a small QVHighlights-format set and paired embeddings, all deterministic."""
    rng = np.random.default_rng(seed)
    n = 23
    grounding = []
    for i in range(n):
        start = float(rng.uniform(0, 20))
        gt = [(start, start + float(rng.uniform(1, 6)))]
        pred = None if i % 9 == 4 else (float(rng.uniform(0, 25)), float(rng.uniform(0, 25)))  # either order
        grounding.append((pred, gt, ("audio", "visual", "audio-visual", None)[i % 4]))
    qvh_preds, qvh_targets = [], []
    for qid in range(17):  # 80 s videos, 40 clips; windows short, middle and long
        length = (3, 10, 20)[qid % 3]  # 6 s, 20 s, 40 s
        first = int(rng.integers(0, 40 - length))
        clip_ids = list(range(first, first + length))
        windows = [[2 * clip_ids[0], 2 * clip_ids[-1] + 2]]
        qvh_targets.append({"qid": 1000 + qid, "duration": 80, "relevant_windows": windows, "relevant_clip_ids": clip_ids,
                            "saliency_scores": rng.integers(0, 5, size=(len(clip_ids), 3)).tolist()})
        pred_windows = []
        for _ in range(5):
            start = float(rng.uniform(0, 60))
            pred_windows.append([start, start + float(rng.uniform(2, 40)), float(rng.random())])
        qvh_preds.append({"qid": 1000 + qid, "pred_relevant_windows": pred_windows,
                          "pred_saliency_scores": rng.normal(size=40).tolist()})
    text = torch.from_numpy(rng.normal(size=(13, 6)))
    video = text + torch.from_numpy(rng.normal(scale=0.8, size=(13, 6)))
    return {"grounding": grounding, "qvh": (qvh_preds, qvh_targets), "emb": (text.float(), video.float())}


def shards(data: dict, rank: int) -> dict:
    """Uneven parts: rank 0 takes the first 60 % (or all, for 'grounding_one_rank'), rank 1 the rest."""
    def part(items, cut):
        return items[:cut] if rank == 0 else items[cut:]

    g = data["grounding"]
    preds, targets = data["qvh"]
    text, video = data["emb"]
    return {
        "grounding": part(g, 14),
        "grounding_one_rank": part(g, len(g)),  # rank 1 sees nothing
        "qvh": (part(preds, 11), part(targets, 11)),
        "emb": (part(text, 8), part(video, 8)),
    }


def run_metrics(parts: dict) -> dict:
    """Update every metric with its part (in batches of 5) and compute."""
    results = {}
    for key in ("grounding", "grounding_one_rank"):
        metric = GroundingMetrics()
        items = parts[key]
        for lo in range(0, len(items), 5):
            batch = items[lo : lo + 5]
            metric.update([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch])
        results[key] = {k: float(v) for k, v in metric.compute().items()}
    qvh = QVHighlightsMetrics()
    preds, targets = parts["qvh"]
    for lo in range(0, len(preds), 5):
        qvh.update(preds[lo : lo + 5], targets[lo : lo + 5])
    results["qvh"] = qvh.compute()
    retrieval = RetrievalMetrics()
    text, video = parts["emb"]
    for lo in range(0, len(text), 3):
        retrieval.update(text[lo : lo + 3], video[lo : lo + 3])
    results["retrieval"] = {k: float(v) for k, v in retrieval.compute().items()}
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    warnings.filterwarnings("ignore", message="The ``compute`` method of metric")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.save(run_metrics(shards(make_data(), rank)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric GroundingMetrics was called before")
def test_same_numbers_on_one_and_two_processes(tmp_path):
    data = make_data()
    whole = {"grounding": data["grounding"], "grounding_one_rank": data["grounding"], "qvh": data["qvh"], "emb": data["emb"]}
    single = run_metrics(whole)
    assert single["grounding"]["count"] == 23 and single["retrieval"]["t2v_count"] == 13
    assert all(value == value for _, value in leaves(single["qvh"]))  # every length range is populated

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        synced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert synced.keys() == single.keys()
        for key in ("grounding", "grounding_one_rank", "retrieval"):
            assert synced[key].keys() == single[key].keys(), key
            for name, value in single[key].items():
                assert synced[key][name] == pytest.approx(value, rel=1e-6, nan_ok=True), (rank, key, name)
        assert_same_tree(synced["qvh"], single["qvh"], tol=0.0)
