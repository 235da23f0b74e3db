"""Bad annotations, as the training data module meets them: a malformed line, a reversed span and an
unknown video stop the run with an error listing `file:line` and the reason of each, or, under
data.on_bad_record=drop, are left out and counted (and reported when fit starts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from damo_lit.data.datamodule import DaMODataModule
from damo_lit.data.sources.base import BadRecordsError
from damo_lit.stages.callbacks import DecodeFailureReport


def _write_sources(clean_root: Path, folder: Path) -> tuple[Path, Path]:
    """A DaMO JSONL folder whose train split has a malformed line (2) and a reversed span (4), and a
    Charades-STA file whose line 2 names a video the durations file does not know."""
    lines = (clean_root / "annotations" / "train.jsonl").read_text().splitlines()
    good = [json.loads(line) for line in lines if json.loads(line)["task"] == "grounding"][:2]
    reversed_span = {**good[1], "id": "reversed", "spans": [[6.0, 2.0]]}
    damo = folder / "damo"
    damo.mkdir(parents=True)
    (damo / "videos").symlink_to(clean_root / "videos")  # a split none of whose videos exists is refused
    (damo / "train.jsonl").write_text("\n".join([json.dumps(good[0]), '{"id": "cut off', json.dumps(good[1]),
                                                 json.dumps(reversed_span)]) + "\n")  # fmt: skip
    for split in ("val", "test"):
        (damo / f"{split}.jsonl").write_text(json.dumps(good[0]) + "\n")
    sta = folder / "charades_sta.txt"
    sta.write_text("AAA 1.0 5.0##a person opens a door.\nZZZ 1.0 2.0##a video nobody knows.\n")
    (folder / "Charades_v1.csv").write_text("id,length\nAAA,30.0\n")
    return damo, sta


def _datamodule(damo: Path, sta: Path, on_bad_record: str, *, charades: bool = True) -> DaMODataModule:
    sources = [{"format": "damo_jsonl", "annotations": str(damo), "video_dir": str(damo), "name": "damo"}]
    if charades:
        sources.append({"format": "charades_sta", "annotations": str(sta), "durations": [str(sta.parent / "Charades_v1.csv")],
                        "video_dir": str(sta.parent / "videos"), "splits": {"train": str(sta)}, "name": "charades"})  # fmt: skip
    return DaMODataModule(sources=sources, name="mixed", on_bad_record=on_bad_record, train_tasks=["grounding"],
                          decoded_cache_dir=None)  # fmt: skip


def test_bad_records_stop_with_file_line_and_reason(clean_root: Path, tmp_path: Path) -> None:
    damo, sta = _write_sources(clean_root, tmp_path)
    with pytest.raises(BadRecordsError) as info:
        _datamodule(damo, sta, "error", charades=False).setup("fit")
    message = str(info.value)
    assert "2 bad record(s) (set data.on_bad_record=drop to count and skip them)" in message
    assert f"{damo / 'train.jsonl'}:2: not valid JSON" in message
    assert f"{damo / 'train.jsonl'}:4: spans[0] is reversed: start 6.0 > end 2.0" in message
    with pytest.raises(BadRecordsError, match=rf"{sta}:2: unknown video 'ZZZ.mp4'"):
        DaMODataModule(format="charades_sta", annotations=str(sta), durations=[str(tmp_path / "Charades_v1.csv")],
                       video_dir=str(tmp_path / "videos"), train_tasks=["grounding"], decoded_cache_dir=None).setup("fit")


def test_bad_records_dropped_are_counted_and_reported(clean_root: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    damo, sta = _write_sources(clean_root, tmp_path)
    datamodule = _datamodule(damo, sta, "drop")
    datamodule.setup("fit")
    ids = [sample.record.id for sample in datamodule.splits["train"].samples]
    assert len(ids) == 3 and "reversed" not in ids  # two good DaMO records and the known Charades video
    counts = {k: n for k, n in datamodule.fixes()["train"].items() if n}
    assert counts == {"record_malformed_dropped": 2, "record_unknown_video_dropped": 1}
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True)
    with caplog.at_level(logging.WARNING, logger="damo_lit"):
        DecodeFailureReport().on_fit_start(trainer, None)  # type: ignore[arg-type]
    assert "data train: annotation fix-ups and drops: record_malformed_dropped=2, record_unknown_video_dropped=1" in (
        caplog.text)
