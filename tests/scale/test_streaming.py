"""litdata streaming: MP4 bytes decode as the files do; two gloo ranks see disjoint samples in
equal batch counts; a loader resumed from its state_dict continues where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from damo_lit.cli.common import compose
from damo_lit.cli.model import read_tiny_vocab
from damo_lit.data.decode import DecodeParams, decode_video
from damo_lit.models.tokenizer import build_word_tokenizer

from .conftest import FROZEN, run_gloo_ranks

litdata = pytest.importorskip("litdata", reason="litdata is not installed (pip install --no-deps litdata)")

WORKER = Path(__file__).with_name("stream_ddp_worker.py")


@pytest.fixture(scope="module")
def video_stream(data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from damo_lit.cli.cache import main

    out = tmp_path_factory.mktemp("stream") / "video"
    assert main(["kind=stream", *data_overrides, f"out={out}", "tasks=[grounding]", "splits=[train]",
                 "num_workers=1", "data.max_samples_per_split=20"]) == 0
    return out


def _datamodule(overrides: list[str]):
    cfg = compose("train", ["data=streaming", "data.num_workers=0", "data.batch_size=4", *overrides])
    datamodule = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
    datamodule.set_tokenizer(build_word_tokenizer(read_tiny_vocab()))
    return datamodule


def test_mp4_bytes_decode_exactly_as_the_file(synth_root: Path) -> None:
    from damo_lit.data.streaming import decode_bytes

    path = sorted((synth_root / "videos").glob("*.mp4"))[0]
    params = DecodeParams(num_frames=8, frame_size=64, num_audio_segments=4, audio_segment_frames=64)
    a, b = decode_video(path, params), decode_bytes(path.read_bytes(), params, path.name)
    for name, value in a.to_arrays().items():
        np.testing.assert_array_equal(getattr(b, name), value, err_msg=name)


def test_stream_batches_follow_the_contract(video_stream: Path, data_overrides: list[str]) -> None:
    meta = json.loads((video_stream / "damo_stream.json").read_text())
    assert meta["kind"] == "video" and set(meta["samples"]["train"]) == {"grounding"}
    streamed = _datamodule([f"data.streaming_dir={video_stream}"])
    loader = streamed.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == -(-meta["samples"]["train"]["grounding"] // 4)
    ids = [i for batch in batches for i in batch["sample_id"]]
    assert len(ids) == len(set(ids)) == meta["samples"]["train"]["grounding"]

    # The same record gives the same batch row as the map-style datamodule over the files.
    cfg = compose("train", [*data_overrides])
    files = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
    files.set_tokenizer(streamed.tokenizer)
    files.setup("fit")
    first = batches[0]
    row = files.datasets["train"].samples.index(
        next(s for s in files.datasets["train"].samples if s.record.id == first["sample_id"][0]))
    reference = files.datasets["train"][row]
    assert torch.equal(first["frames"][0], torch.from_numpy(reference["video"].frames))
    assert torch.equal(first["audio_mel"][0], torch.from_numpy(reference["video"].audio_mel))
    assert first["input_ids"][0, : len(reference["input_ids"])].tolist() == reference["input_ids"]
    assert streamed.train_span_prior() == files.train_span_prior()


def test_a_stream_asked_for_tasks_it_lacks_names_them(video_stream: Path) -> None:
    streamed = _datamodule([f"data.streaming_dir={video_stream}", "data.train_tasks=[caption]"])
    with pytest.raises(ValueError, match=r"no train samples of tasks \['caption'\]"):
        streamed.train_dataloader()


def test_two_gloo_ranks_disjoint_equal_and_resumable(video_stream: Path, tmp_path: Path) -> None:
    run_gloo_ranks(WORKER, ["--stream", str(video_stream), "--out", str(tmp_path), "--stop", "1"])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    total = json.loads((video_stream / "damo_stream.json").read_text())["samples"]["train"]["grounding"]

    seen = [{i for batch in r["full"] for i in batch} for r in ranks]
    assert not seen[0] & seen[1], "each sample is streamed to one rank only"
    assert len(ranks[0]["full"]) == len(ranks[1]["full"]) == ranks[0]["len"] == ranks[1]["len"] >= 2
    per_rank = (total // 2) // 4 * 4  # drop_last under DDP: whole batches only, the same on every rank
    assert len(seen[0]) == len(seen[1]) == per_rank, "every rank streams the same number of samples"
    for r in ranks:
        assert all(len(batch) == 4 for batch in r["full"])
        assert r["first"] == r["full"][:1], "a fresh loader repeats the epoch exactly (same seed)"
        assert r["rest"] == r["full"][1:], "the resumed loader continues where the state_dict stopped"
