"""Mixture weights: repeats and the seeded fractional subset of a training split."""

from __future__ import annotations

from collections import Counter

from damo_lit.data.collection import load_split, source_specs


def test_fractional_weight_is_a_subset_fixed_per_seed(synth_dir):
    """docs/data.md: a fraction draws its subset once per run from (data.seed, source index); every
    epoch of that run sees the same records (the loaders only reshuffle their order)."""
    entry = {"format": "damo_jsonl", "annotations": str(synth_dir / "annotations"), "video_dir": str(synth_dir)}
    everything = [s.record.id for s in load_split(source_specs(entry), "train").samples]
    weighted = source_specs({"sources": [{**entry, "weight": 1.5}]})
    ids = [s.record.id for s in load_split(weighted, "train", weighted=True, seed=7).samples]
    counts = Counter(ids)
    assert len(ids) == len(everything) + round(0.5 * len(everything))
    assert set(counts) == set(everything) and set(counts.values()) == {1, 2}  # each once, a half twice
    again = [s.record.id for s in load_split(weighted, "train", weighted=True, seed=7).samples]
    other = [s.record.id for s in load_split(weighted, "train", weighted=True, seed=8).samples]
    assert again == ids
    assert len(other) == len(ids) and other != ids  # another seed, another half
