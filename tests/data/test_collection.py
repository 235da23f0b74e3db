"""Mixture weights: repeats and the seeded fractional subset of a training split."""

from __future__ import annotations

from collections import Counter

import pytest

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


@pytest.mark.parametrize(
    "options, message",
    [
        ({"durations": 5}, "data.durations must be a path or a list of paths, got 5"),
        ({"splits": 5}, "data.splits must be a mapping (train/val/test: a file each), got 5"),
        ({"columns": "abc"}, "data.columns must be a mapping (video/caption/duration/...: a column name each)"),
        ({"sources": 7}, "data.sources must be a list of sources"),
        ({"sources": [5]}, "data.sources[0] must be a mapping (a source: {format, annotations, ...}), got 5"),
        ({"sources": [{"format": "charades_sta", "durations": 5}]}, "data.sources[0].durations must be a path"),
    ],
)
def test_a_data_key_of_the_wrong_shape_is_named(options, message):
    with pytest.raises(ValueError) as info:
        source_specs({"format": "charades_sta", "annotations": "a.txt", **options})
    assert message in str(info.value)


def test_a_cap_keeps_each_source_of_a_mixture_in_its_share(synth_dir):
    from damo_lit.data.collection import cap_samples

    entry = {"format": "damo_jsonl", "annotations": str(synth_dir / "annotations"), "video_dir": str(synth_dir)}
    mixture = source_specs({"sources": [{**entry, "name": "a"}, {**entry, "name": "b", "weight": 0.5}]})
    loaded = load_split(mixture, "train", weighted=True)
    counts = Counter(s.source for s in loaded.samples)
    assert counts["a"] == 2 * counts["b"]
    capped = cap_samples(loaded, 9)
    assert Counter(s.source for s in capped.samples) == {"a": 6, "b": 3} and capped.per_source == {"a": 6, "b": 3}
    for label in ("a", "b"):  # the first ones of each source, in their order
        mine = [s.record.id for s in loaded.samples if s.source == label]
        assert [s.record.id for s in capped.samples if s.source == label] == mine[: (6 if label == "a" else 3)]
    single = load_split(source_specs(entry), "train")
    assert cap_samples(single, 5).samples == single.samples[:5]
