"""litdata streaming: MP4 bytes decode as the files do; two gloo ranks streaming two tasks with a
worker each see disjoint samples in equal batch counts; a fit resumed from a checkpoint (a real
stage 2 run among them) continues the stream where it stopped, with and without workers; a
changed loader restarts the saved epoch; a features stream gives the feature cache's batches; a
stream whose index.json names a pickling serializer is refused unopened; a sub-stream whose write
did not finish is written again, never kept."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from safetensors.torch import load_file

from damo_lit.cli.common import compose
from damo_lit.cli.model import read_tiny_vocab
from damo_lit.data.decode import DecodeParams, decode_video
from damo_lit.models.tokenizer import build_word_tokenizer

from .conftest import FROZEN, run_gloo_ranks

litdata = pytest.importorskip("litdata", reason="litdata is not installed (pip install --no-deps litdata)")

WORKER = Path(__file__).with_name("stream_ddp_worker.py")
VIDEO_STREAM = ["tasks=[grounding]", "splits=[train]", "num_workers=1", "data.max_samples_per_split=20"]


def _write(overrides: list[str]) -> dict:
    """Run `damo-cache kind=stream` with `overrides`; its report (the last line it prints)."""
    from damo_lit.cli.cache import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["kind=stream", *overrides]) == 0
    return json.loads(printed.getvalue().splitlines()[-1])


@pytest.fixture(scope="module")
def video_stream(data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "video"
    _write([*data_overrides, f"out={out}", *VIDEO_STREAM])
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


def test_a_features_stream_gives_the_feature_cache_batches(
    feature_cache: Path, data_overrides: list[str], tmp_path: Path
) -> None:
    from damo_lit.data.dataset import Collator
    from damo_lit.data.features import FEATURE_KEYS

    cached = [*data_overrides, *FROZEN, f"data.features={feature_cache}"]
    report = _write([*cached, f"out={tmp_path}", "tasks=[grounding]", "splits=[train]", "num_workers=1",
                     "data.max_samples_per_split=8"])  # fmt: skip
    assert report["kind"] == "features" and report["samples"] == {"train": {"grounding": 8}}
    streamed = _datamodule([f"data.streaming_dir={tmp_path}", *FROZEN])
    batches = list(streamed.train_dataloader())
    assert [len(batch["sample_id"]) for batch in batches] == [4, 4]

    # Each batch is the one the feature cache's datamodule collates from the same samples.
    cfg = compose("train", cached)
    files = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
    files.set_tokenizer(streamed.tokenizer)
    files.setup("fit")
    rows = {s.record.id: i for i, s in enumerate(files.datasets["train"].samples)}
    collate = Collator(streamed.tokenizer.pad_token_id)
    for batch in batches:
        reference = collate([files.datasets["train"][rows[i]] for i in batch["sample_id"]])
        assert set(batch) == set(reference) and set(FEATURE_KEYS) <= set(batch), set(batch) ^ set(reference)
        assert not {"frames", "audio_mel"} & set(batch)
        for key, value in reference.items():
            if key == "video":  # the stream names a video by its cache key (no file paths on the nodes)
                assert len(batch[key]) == len(value)
            elif isinstance(value, torch.Tensor):
                assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
            else:
                assert batch[key] == value, key


class _Planted:
    """Unpickling this calls open(marker, 'w') (as in tests/reliability/test_safe_loading.py)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_an_index_naming_pickle_is_refused_unopened(video_stream: Path, tmp_path: Path) -> None:
    from litdata.streaming.writer import BinaryWriter

    from damo_lit.data.streaming import UnsafeStreamError

    # A copy of a real stream whose items carry a planted pickle as `mp4`, its index.json saying "pickle".
    stream, marker = tmp_path / "stream", tmp_path / "unpickled"
    shutil.copytree(video_stream, stream)
    folder = stream / "train" / "grounding"
    opened_before = _datamodule([f"data.streaming_dir={stream}"])
    items = list(litdata.StreamingDataset(str(folder)))
    for path in folder.iterdir():
        path.unlink()
    writer = BinaryWriter(str(folder), chunk_bytes="64MB")
    for i, item in enumerate(items):
        writer[i] = {**item, "mp4": pickle.dumps(_Planted(marker))}
    writer.done()
    writer.merge()
    index = json.loads((folder / "index.json").read_text())
    assert index["config"]["data_format"] == ["str", "str", "bytes"]  # what the writer makes of a video item
    index["config"]["data_format"][2] = "pickle"
    (folder / "index.json").write_text(json.dumps(index))

    refused = re.escape(f"{folder}/index.json: refused to open it: field 'mp4' has data_format 'pickle'")
    with pytest.raises(InstantiationException, match=refused):  # refused when the datamodule is made
        _datamodule([f"data.streaming_dir={stream}"])
    with pytest.raises(UnsafeStreamError, match=refused):  # ... and right before litdata opens it
        opened_before.train_dataloader()
    assert not marker.exists()
    litdata.StreamingDataset(str(folder))[0]  # unchecked, litdata would have run the planted code
    assert marker.exists()


def _fake_empty_index(folder: Path) -> None:
    """What a crashed litdata write can leave: an index.json that lists no chunks."""
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**index, "chunks": []}))


def test_a_sub_stream_that_fails_its_check_is_written_again_not_kept(
    video_stream: Path, data_overrides: list[str], tmp_path: Path
) -> None:
    from damo_lit.data.streaming import _incomplete

    stream = tmp_path / "stream"
    shutil.copytree(video_stream, stream)
    folder = stream / "train" / "grounding"
    assert (folder / "damo_written.json").is_file()
    _fake_empty_index(folder)
    refused = re.escape(f"{folder}/index.json: 0 samples in 0 chunks, expected 20; write it again with `damo-cache")
    with pytest.raises(InstantiationException, match=refused):
        _datamodule([f"data.streaming_dir={stream}"])

    rewriting = re.escape(f"{folder}: not kept as complete (") + ".*0 samples in 0 chunks"
    with pytest.warns(RuntimeWarning, match=rewriting):
        report = _write([*data_overrides, f"out={stream}", *VIDEO_STREAM])
    assert report["reused"] == [] and list(report["rewritten"]) == ["train/grounding"]
    assert len(list(_datamodule([f"data.streaming_dir={stream}"]).train_dataloader())) == 5
    assert _write([*data_overrides, f"out={stream}", *VIDEO_STREAM])["reused"] == ["train/grounding"]
    (folder / "damo_written.json").unlink()  # a write that stopped before its check is not complete either
    assert _incomplete(folder, 20) == "no damo_written.json: its write did not finish (or predates damo_written.json)"


def test_a_sub_stream_of_other_content_is_written_again(
    video_stream: Path, data_overrides: list[str], tmp_path: Path
) -> None:
    """Same sample count, other content (another feature cache, edited records, regenerated
    videos): rewritten, never kept and served as this run's data."""
    from types import SimpleNamespace

    from damo_lit.data.streaming import content_digest

    stream = tmp_path / "stream"
    shutil.copytree(video_stream, stream)
    written = stream / "train" / "grounding" / "damo_written.json"
    marker = json.loads(written.read_text())
    written.write_text(json.dumps({**marker, "content": "0" * 64}))
    with pytest.warns(RuntimeWarning, match="written from other content"):
        report = _write([*data_overrides, f"out={stream}", *VIDEO_STREAM])
    assert list(report["rewritten"]) == ["train/grounding"]
    assert json.loads(written.read_text())["content"] == marker["content"], "the same inputs give the same digest"

    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    entries = [('{"id": "a"}', str(video), "v")]
    base = content_digest(entries, None)
    assert content_digest([('{"id": "b"}', str(video), "v")], None) != base  # an edited record
    video.write_bytes(b"xy")
    assert content_digest(entries, None) != base  # another file
    def cache(weights: str, stamp: dict | None = None) -> SimpleNamespace:
        return SimpleNamespace(manifest={"tower_weights": weights}, stamp=lambda key: stamp)

    assert content_digest(entries, cache("a")) != content_digest(entries, cache("b"))  # another feature cache
    # the same cache with this video's row re-encoded from another file
    assert content_digest(entries, cache("a", {"size": 1})) != content_digest(entries, cache("a", {"size": 2}))


def test_a_write_leaves_the_machine_wide_litdata_folders_alone(
    video_stream: Path, data_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
) -> None:
    """litdata's optimize empties $TMPDIR/chunks and $TMPDIR/data before it writes: another write
    running beside this one (another job, another user) must keep its files there. Also: a write
    says what it writes, shows litdata's progress bar and holds back its set-up chatter."""
    import tempfile

    system_tmp = tmp_path / "tmp"
    others = [system_tmp / "chunks" / "0-index.json", system_tmp / "data" / "item.bin"]
    for path in others:
        path.parent.mkdir(parents=True)
        path.write_text("another write's file")
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    for name in ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER"):
        monkeypatch.delenv(name, raising=False)
    stream = tmp_path / "stream"
    shutil.copytree(video_stream, stream)
    _fake_empty_index(stream / "train" / "grounding")
    capsys.readouterr()
    with pytest.warns(RuntimeWarning, match="not kept as complete"), caplog.at_level(logging.INFO, logger="damo_lit"):
        assert _write([*data_overrides, f"out={stream}", *VIDEO_STREAM])["rewritten"]
    assert f"writing train/grounding: 20 samples into {stream / 'train' / 'grounding'}" in caplog.messages
    out, err = capsys.readouterr()
    assert "Progress" in err and "Storing the files" not in out + err and "lightning.ai" not in out + err
    assert all(path.read_text() == "another write's file" for path in others)
    assert sorted(p.name for p in system_tmp.iterdir()) == ["chunks", "data"], "its own work folder is removed"
    assert "DATA_OPTIMIZER_CACHE_FOLDER" not in os.environ
    assert len(list(_datamodule([f"data.streaming_dir={stream}"]).train_dataloader())) == 5


def test_a_write_that_leaves_no_samples_fails_loudly(
    data_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def optimize(output_dir: str, **kwargs) -> None:  # reports success, writes an index of nothing
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "index.json").write_text(json.dumps({"chunks": [], "config": {"data_format": []}}))

    monkeypatch.setattr(litdata, "optimize", optimize)
    with pytest.raises(SystemExit, match=r"sub-stream train/grounding: litdata's optimize reported success, but "
                                         r".*index\.json: 0 samples in 0 chunks, expected 20"):  # fmt: skip
        _write([*data_overrides, f"out={tmp_path}", *VIDEO_STREAM])
    assert not (tmp_path / "train" / "grounding" / "damo_written.json").exists()

    def crashing(output_dir: str, **kwargs) -> None:
        print(f"Storing the files under {output_dir}")
        raise RuntimeError("a worker died")

    monkeypatch.setattr(litdata, "optimize", crashing)
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="a worker died"):
        _write([*data_overrides, f"out={tmp_path / 'crashed'}", *VIDEO_STREAM])
    assert "Storing the files under" in capsys.readouterr().err, "litdata's lines are shown when it fails"


# -- two tasks (CombinedStreamingDataset), as stages 2 and 4 train ------------------------------------------------
TWO_TASKS = ["data.train_tasks=[caption,qa]", *FROZEN]


@pytest.fixture(scope="module")
def two_task_stream(feature_cache: Path, data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features stream of stage 2's tasks (caption, qa): cheap to read, streamed together."""
    out = tmp_path_factory.mktemp("stream") / "two-tasks"
    report = _write([*data_overrides, *FROZEN, f"data.features={feature_cache}", f"out={out}", "tasks=[caption,qa]",
                     "splits=[train]", "num_workers=1", "data.max_samples_per_split=16"])  # fmt: skip
    assert report["samples"]["train"] == {"caption": 12, "qa": 16}
    return out


# When the training loader is built relative to the checkpoint's restore: by configure_optimizers
# (estimated_stepping_batches, as DaMOStage does), by the fit loop, or restored after setup (as FSDP is).
ORDERS = ("built-by-optimizers", "built-by-fit-loop", "restored-after-setup")


class SampleIds(L.LightningModule):
    """Records each training batch's sample ids; one weight so that checkpoints have something."""

    def __init__(self, stepping_batches: bool) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.stepping_batches = stepping_batches
        self.seen: list[list[str]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch["sample_id"]))
        return self.weight.sum() * 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.stepping_batches:
            assert self.trainer.estimated_stepping_batches > 0
        return torch.optim.SGD(self.parameters(), lr=0.0)


class RestoreAfterSetup(L.pytorch.strategies.SingleDeviceStrategy):
    """Restores the checkpoint after the strategy's setup, as FSDP does."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


def _fit_ids(stream: Path, out: Path, workers: int, order: str = ORDERS[0], resume: Path | None = None,
             extra: tuple[str, ...] = ()) -> tuple[list[list[str]], L.Trainer]:  # fmt: skip
    """The sample ids of every batch of a 2-epoch fit over `stream` (resumed from `resume`)."""
    datamodule = _datamodule([f"data.streaming_dir={stream}", f"data.num_workers={workers}", *TWO_TASKS, *extra])
    every_step = L.pytorch.callbacks.ModelCheckpoint(out, "s{step}", every_n_train_steps=1, save_top_k=-1,
                                                     auto_insert_metric_name=False)  # fmt: skip
    strategy = RestoreAfterSetup("cpu") if order == "restored-after-setup" else "auto"
    trainer = L.Trainer(accelerator="cpu", strategy=strategy, max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[every_step], default_root_dir=out)  # fmt: skip
    module = SampleIds(stepping_batches=order != "built-by-fit-loop")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    return module.seen, trainer


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("order", ORDERS)
def test_a_resumed_fit_continues_the_stream_where_it_stopped(
    two_task_stream: Path, tmp_path: Path, workers: int, order: str
) -> None:
    full, trainer = _fit_ids(two_task_stream, tmp_path / "full", workers, order)
    per_epoch = trainer.num_training_batches
    assert len(full) == 2 * per_epoch and per_epoch == 7  # 12 captions + 16 questions in batches of 4
    for step in (2, per_epoch + 1):  # mid-epoch in the first epoch and in the second
        checkpoint = tmp_path / "full" / f"s{step}.ckpt"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["StreamingDataModule"]
        position = saved["train_position"]
        assert (position["epoch"], position["batches"], position["samples"]) == (*divmod(step, per_epoch), 28)
        assert "train_loader" in saved
        resumed, _ = _fit_ids(two_task_stream, tmp_path / f"resumed{step}", workers, order, checkpoint)
        assert resumed == full[step:], f"resumed after step {step}"


def test_two_gloo_ranks_two_tasks_with_workers_disjoint_equal_and_resumable(two_task_stream: Path,
                                                                           tmp_path: Path) -> None:
    run_gloo_ranks(WORKER, ["--stream", str(two_task_stream), "--out", str(tmp_path), "--stop", "2", *TWO_TASKS,
                            "data.num_workers=1"])  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    samples = json.loads((two_task_stream / "damo_stream.json").read_text())["samples"]["train"]

    seen = [[i for batch in r["full"] for i in batch] for r in ranks]
    assert all(len(ids) == len(set(ids)) for ids in seen), "no sample twice in a rank's epoch"
    assert not set(seen[0]) & set(seen[1]), "each sample is streamed to one rank only"
    assert {i.rsplit("-", 1)[1][:2] for i in seen[0]} == {"ca", "qa"}, "both tasks stream together"
    assert len(ranks[0]["full"]) == len(ranks[1]["full"]) == ranks[0]["len"] == ranks[1]["len"] == 3
    # drop_last under DDP, per task: whole batches only, the same on every rank
    per_rank = sum((count // 2) // 4 * 4 for count in samples.values())
    assert len(seen[0]) == len(seen[1]) == per_rank, "every rank streams the same number of samples"
    for r in ranks:
        assert all(len(batch) == 4 for batch in r["full"])
        assert r["first"] == r["full"][:2], "a fresh loader repeats the epoch exactly (same seed)"
        assert r["rest"] == r["full"][2:], "the restored datamodule's loader continues where its state stopped"


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """The tiny model trains twenty times slower when torch's threads spin against another process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("change", ["data.batch_size=2", "data.num_workers=2"])
def test_a_changed_loader_restarts_the_saved_epoch(two_task_stream: Path, tmp_path: Path, change: str) -> None:
    _fit_ids(two_task_stream, tmp_path / "full", 0)
    fresh, trainer = _fit_ids(two_task_stream, tmp_path / "fresh", 0, extra=(change,))
    was = {"data.batch_size=2": "batch_size 4 -> 2", "data.num_workers=2": "num_workers 1 -> 2"}[change]
    with pytest.warns(RuntimeWarning, match=rf"changed since the checkpoint \({was}\), so its 2 trained batch"):
        resumed, _ = _fit_ids(two_task_stream, tmp_path / "resumed", 0, resume=tmp_path / "full" / "s2.ckpt",
                              extra=(change,))  # fmt: skip
    # Epoch 0 starts again from its first batch (Lightning still counts the 2 batches trained), epoch 1 follows.
    per_epoch = trainer.num_training_batches
    assert len(fresh) == 2 * per_epoch and resumed == fresh[: per_epoch - 2] + fresh[per_epoch:]


def test_a_resumed_streaming_stage_sees_the_uninterrupted_batches_and_weights(
    two_task_stream: Path, train_overrides: list[str], tmp_path: Path, one_thread: None
) -> None:
    from damo_lit.cli.common import compose_run
    from damo_lit.cli.train import build_run, fit
    from tests.reliability.test_resume import BatchLog, assert_same_weights

    def train(out: Path, resume: Path | None = None) -> list:
        overrides = [*train_overrides, "stage=stage2_bridge", "data=streaming", f"data.streaming_dir={two_task_stream}",
                     *FROZEN, "data.num_workers=1", "trainer.max_epochs=2", "trainer.limit_val_batches=0",
                     "test_after_fit=false", "callbacks.model_checkpoint.every_n_train_steps=3",
                     "callbacks.model_checkpoint.save_top_k=-1"]  # fmt: skip
        stage, datamodule, trainer = build_run(compose_run("train", overrides, out))
        log = BatchLog()
        trainer.callbacks.append(log)
        fit(trainer, stage, datamodule, str(resume) if resume else None)
        return log.batches

    full = train(tmp_path / "full")
    assert len(full) == 14 and [b[2] for b in full[:7]] != [b[2] for b in full[7:]]
    resumed = train(tmp_path / "resumed", tmp_path / "full" / "checkpoints" / "step000009.ckpt")  # epoch 1, batch 2
    assert resumed == full[9:]
    weights = {run: load_file(str(tmp_path / run / "weights.safetensors")) for run in ("full", "resumed")}
    assert_same_weights(weights["resumed"], weights["full"])
