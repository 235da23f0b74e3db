"""The datamodule: the batch contract, labels masked to the answers, bad files skipped and counted."""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from damo_lit.cli.common import compose
from damo_lit.data.cache import DecodedCache, prepare
from damo_lit.data.datamodule import BATCH_KEYS, DaMODataModule
from damo_lit.data.decode import DecodeParams, decode_video
from damo_lit.data.prompts import encode
from damo_lit.data.schema import read_jsonl, write_jsonl

SMALL = dict(num_frames=6, frame_size=32, num_audio_segments=4, audio_segment_frames=20)


def _module(synth_dir: Path, tokenizer, **kw) -> DaMODataModule:
    options = dict(annotations=str(synth_dir / "annotations"), video_dir=str(synth_dir), batch_size=4, num_workers=0)
    options.update(SMALL)
    options.update(kw)
    module = DaMODataModule(**options)
    module.set_tokenizer(tokenizer)
    return module


def _answer_tokens(batch, i):
    labels = batch["labels"][i]
    return labels[labels != -100]


def test_batches_follow_the_contract(synth_dir, tokenizer):
    module = _module(synth_dir, tokenizer, train_tasks=["caption", "grounding", "qa", "dialogue"])
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert tuple(batch) == BATCH_KEYS
    b = len(batch["sample_id"])
    assert b == 4
    expect = {
        "frames": ((b, 6, 3, 32, 32), torch.uint8),
        "frame_times": ((b, 6), torch.float32),
        "frame_mask": ((b, 6), torch.bool),
        "audio_mel": ((b, 4, 80, 20), torch.float32),
        "audio_times": ((b, 4), torch.float32),
        "audio_mask": ((b, 4), torch.bool),
        "has_audio": ((b,), torch.bool),
        "duration": ((b,), torch.float32),
    }
    for key, (shape, dtype) in expect.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    for key in ("input_ids", "attention_mask", "labels", "prompt_ids", "prompt_attention_mask"):
        assert batch[key].dtype == torch.long and batch[key].shape[0] == b
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    for key in ("sample_id", "task", "modality", "spans", "answer_text", "question", "caption"):
        assert isinstance(batch[key], list) and len(batch[key]) == b
    for i in range(b):
        n = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()  # right padding
        ids = batch["input_ids"][i, :n]
        assert (ids == video_id).sum() == 1
        # labels are the final answer (+ </s>) for one-turn records
        answer = tokenizer.decode(_answer_tokens(batch, i))
        if batch["task"][i] != "dialogue":
            assert answer == tokenizer.decode(tokenizer(batch["answer_text"][i])["input_ids"]) + " </s>"
        m = int(batch["prompt_attention_mask"][i].sum())
        prompt = batch["prompt_ids"][i, -m:]
        assert not batch["prompt_attention_mask"][i, : batch["prompt_ids"].shape[1] - m].any()  # left padding
        assert torch.equal(prompt, ids[:m]) and tokenizer.decode(prompt).endswith("assistant :")
        assert (batch["prompt_ids"][i, : batch["prompt_ids"].shape[1] - m] == tokenizer.pad_token_id).all()
        assert batch["duration"][i] > 0 and batch["frame_mask"][i].all()


def test_dialogue_labels_cover_every_assistant_turn_and_spans(synth_dir, tokenizer):
    module = _module(synth_dir, tokenizer, train_tasks=["dialogue"], eval_tasks=["dialogue"])
    module.setup("validate")
    batch = next(iter(module.val_dataloader()))
    assert set(batch["task"]) == {"dialogue"}
    records = {r.id: r for _, r in read_jsonl(synth_dir / "annotations" / "val.jsonl")}
    for i, sample_id in enumerate(batch["sample_id"]):
        record = records[sample_id]
        answers = [t.content for t in record.turns if t.role == "assistant"]
        learned = tokenizer.decode(_answer_tokens(batch, i))
        assert learned.count("</s>") == len(answers) >= 2
        assert batch["spans"][i][0] == record.spans[0]  # the evaluation span comes first
        assert batch["modality"][i] == record.modality
        assert learned.endswith(tokenizer.decode(tokenizer(batch["answer_text"][i])["input_ids"]) + " </s>")


def test_task_filters_per_split_and_span_prior(synth_dir, tokenizer):
    module = _module(synth_dir, tokenizer, train_tasks=["caption"], eval_tasks=["grounding"], max_samples_per_split=5)
    module.setup("fit")
    assert {s.record.task for s in module.splits["train"].samples} == {"caption"}
    assert len(module.datasets["train"]) == 5
    assert {s.record.task for s in module.splits["val"].samples} == {"grounding"}
    batch = next(iter(module.train_dataloader()))
    assert all(c is not None for c in batch["caption"]) and batch["answer_text"] == batch["caption"]
    prior = module.train_span_prior()
    rel = [(r.spans[0][0] / r.duration, r.spans[0][1] / r.duration)
           for _, r in read_jsonl(synth_dir / "annotations" / "train.jsonl") if r.task == "grounding"]  # fmt: skip
    assert prior.count == len(rel)
    assert prior.start == pytest.approx(np.mean([a for a, _ in rel])) and prior.end == pytest.approx(np.mean([b for _, b in rel]))
    assert 0 < prior.start < prior.end < 1 and prior.span(10.0) == pytest.approx((prior.start * 10, prior.end * 10))


def _set_with_bad_files(tmp_path: Path, synth_dir: Path) -> tuple[Path, list[str], list[str]]:
    """A copy of 3 videos' grounding records, plus records on a corrupt, an empty and a missing file."""
    (tmp_path / "videos").mkdir()
    records = [r for _, r in read_jsonl(synth_dir / "annotations" / "train.jsonl") if r.task == "grounding"]
    good_videos = sorted({r.video for r in records})[:3]
    good = [r for r in records if r.video in good_videos]
    for video in good_videos:
        shutil.copy(synth_dir / video, tmp_path / video)
    (tmp_path / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 300)
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    bad = []
    for name in ("corrupt", "empty", "missing"):
        bad.append(good[0].__class__(**{**good[0].__dict__, "id": f"bad-{name}", "video": f"videos/{name}.mp4"}))
    mixed = good[:2] + bad[:1] + good[2:5] + bad[1:] + good[5:]
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "annotations" / f"{split}.jsonl", mixed)
    return tmp_path, [r.id for r in good], [str(tmp_path / "videos" / f"{n}.mp4") for n in ("corrupt", "empty", "missing")]


@pytest.mark.parametrize(("workers", "cached"), [(0, False), (2, False), (2, True)])
def test_bad_files_are_skipped_named_and_counted(tmp_path, synth_dir, tokenizer, workers, cached):
    root, good_ids, bad_paths = _set_with_bad_files(tmp_path, synth_dir)
    cache = tmp_path / "cache"
    module = _module(root, tokenizer, train_tasks=["grounding"], batch_size=3, num_workers=workers,
                     decoded_cache_dir=str(cache) if cached else None, prepare_workers=1)  # fmt: skip
    if cached:
        # decoded once up front: the bad files are recorded (a missing one is not: it may appear later)
        with pytest.warns(RuntimeWarning, match="3 video file"):
            module.prepare_data()
        assert len(list(cache.rglob("*.bad.json"))) == 2 and len(list(cache.rglob("*.npz"))) == 3
    seen: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.setup("fit")
        for batch in module.train_dataloader():
            if batch is not None:
                seen += batch["sample_id"]
                assert batch["frames"].shape[0] == len(batch["sample_id"])
    assert sorted(seen) == sorted(good_ids)  # every good sample came through, once
    failures = module.decode_failures()  # counted in whichever process decoded
    assert sorted(failures) == sorted(bad_paths)
    assert "0 bytes" in failures[bad_paths[1]][0] and "not found" in failures[bad_paths[2]][0]
    assert "cannot read" in failures[bad_paths[0]][0]
    # with the cache, setup("fit") leaves the known-bad samples out of train and val (3 each);
    # without it, each is skipped when the train loader reaches it
    assert module.skipped_samples() == (6 if cached else 3)


def test_an_all_bad_batch_is_none_and_warns_naming_the_file(tmp_path, synth_dir, tokenizer):
    root, _good, bad_paths = _set_with_bad_files(tmp_path, synth_dir)
    module = _module(root, tokenizer, train_tasks=["grounding"], batch_size=1)
    module.setup("validate")
    index = next(i for i, s in enumerate(module.datasets["val"].samples) if s.video_path == bad_paths[0])
    with pytest.warns(RuntimeWarning, match=f"skipping {bad_paths[0]}: decord cannot read"):
        assert module.datasets["val"][index] is None
    assert module.val_dataloader().collate_fn([None]) is None


def test_the_failure_folder_exists_only_once_a_file_failed_and_goes_with_the_module(tmp_path, synth_dir, tokenizer):
    """A run that no decode failure hits, or a process killed before it cleans up, leaves no empty
    folder in the temp dir (the tests' SIGKILLed runs left dozens)."""
    import gc

    root, _good, bad_paths = _set_with_bad_files(tmp_path, synth_dir)
    module = _module(root, tokenizer, train_tasks=["grounding"], batch_size=1)
    folder = Path(module._failure_dir)
    module.setup("validate")
    assert not folder.exists()
    index = next(i for i, s in enumerate(module.datasets["val"].samples) if s.video_path == bad_paths[0])
    with pytest.warns(RuntimeWarning):
        module.datasets["val"][index]
    assert folder.is_dir() and list(module.decode_failures()) == [bad_paths[0]]
    del module
    gc.collect()
    assert not folder.exists()


def test_dataloader_workers_use_forkserver(synth_dir, tokenizer):
    module = _module(synth_dir, tokenizer, num_workers=2, max_samples_per_split=8)
    loader = module.train_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    ids = [i for batch in loader for i in batch["sample_id"]]
    assert sorted(ids) == sorted(s.record.id for s in module.splits["train"].samples)


def test_decoded_cache_round_trip(tmp_path, synth_dir):
    params = DecodeParams(**SMALL)
    video = synth_dir / "videos" / "train_000001.mp4"
    report = prepare([video, synth_dir / "videos" / "train_000002.mp4"], tmp_path, params, workers=2)
    assert report.decoded == 2 and not report.bad
    assert prepare([video], tmp_path, params, workers=1).cached == 1
    npz = list(tmp_path.rglob("*.npz"))
    assert len(npz) == 2
    with np.load(npz[0], allow_pickle=False) as arrays:
        assert {"frames", "audio_mel", "has_audio", "duration"} <= set(arrays.files)
    cached = DecodedCache(tmp_path, params).lookup(video)
    direct = decode_video(video, params)
    for key, value in direct.to_arrays().items():
        np.testing.assert_array_equal(cached.to_arrays()[key], value)
    # other decode parameters, or a touched file, miss the cache
    assert DecodedCache(tmp_path, DecodeParams(**{**SMALL, "num_frames": 7})).lookup(video) is None
    duplicate = tmp_path / "copy.mp4"
    shutil.copy(video, duplicate)
    DecodedCache(tmp_path, params).load(duplicate)
    assert DecodedCache(tmp_path, params).lookup(duplicate) is not None
    os.utime(duplicate, ns=(1, 1))
    assert DecodedCache(tmp_path, params).lookup(duplicate) is None


def test_chat_prompt_style(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}{% if loop.first %}<s> {% endif %}{{ m['role'] }}: {{ m['content'] }} "
        "{% if m['role'] == 'assistant' %}</s> {% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    turns = [("user", "what happens first?"), ("assistant", "a red square appears."),
             ("user", "when do you hear the low steady tone?"), ("assistant", "it sounds from 3 to 40.")]  # fmt: skip
    encoded = encode(turns, chat, "chat")
    assert encoded.input_ids.count(chat.convert_tokens_to_ids("<video>")) == 1
    learned = chat.decode([t for t in encoded.labels if t != -100])
    assert learned == "a red square appears. </s> it sounds from 3 to 40. </s>"
    assert chat.decode(encoded.prompt_ids).endswith("low steady tone? assistant :")
    assert encoded.input_ids[: len(encoded.prompt_ids)] == encoded.prompt_ids


def test_config_builds_the_module_and_generates_when_absent(tmp_path, synth_dir, tokenizer):
    from hydra.utils import instantiate

    cfg = compose("data_stats", [f"data.root={synth_dir}", "data.decoded_cache_dir=null", "data.num_frames=4",
                                 "data.generate.videos=20", "data.generate.seed=3"])  # as the fixture made it
    module = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(module, DaMODataModule) and module.params.num_frames == 4
    module.prepare_data()  # the set is there: nothing to generate
    assert len(list((synth_dir / "videos").glob("*.mp4"))) == 20
    fresh = tmp_path / "fresh"
    cfg = compose("data_stats", [f"data.root={fresh}", "data.decoded_cache_dir=null", "data.generate.videos=10",
                                 "data.generate.workers=1", "data.max_samples_per_split=2"])  # fmt: skip
    module = instantiate(cfg.data, tokenizer=tokenizer)
    module.prepare_data()
    names = [p.name for p in (fresh / "videos").glob("*.mp4")]
    assert len(names) == 10 and sum(n.startswith("val_") for n in names) == sum(n.startswith("test_") for n in names) == 1
    assert len(next(iter(module.train_dataloader()))["sample_id"]) == 2
    cfg = compose("data_stats", [f"data.root={fresh}", "data.generate.videos=12"])
    with pytest.raises(ValueError, match="generated with other parameters \\(videos: 10 there, 12 asked\\); to train "
                       "on it as it is, add data.generate=null \\(or data.generate.videos=10\\)"):
        instantiate(cfg.data).prepare_data()
    # the advice works: with data.generate=null the folder is read as it is (damo-data synth by hand)
    cfg = compose("data_stats", [f"data.root={fresh}", "data.generate=null", "data.decoded_cache_dir=null",
                                 "data.max_samples_per_split=2"])  # fmt: skip
    module = instantiate(cfg.data, tokenizer=tokenizer)
    module.prepare_data()
    assert len(next(iter(module.train_dataloader()))["sample_id"]) == 2
    # a set made by an older generator (no layout in its manifest) is not reused either
    manifest = fresh / "synth.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "layout"}))
    cfg = compose("data_stats", [f"data.root={fresh}", "data.generate.videos=10"])
    with pytest.raises(ValueError, match="older generator \\(layout 1, now 2"):
        instantiate(cfg.data).prepare_data()


def test_the_loaders_shard_for_ddp_ranks_themselves(synth_dir, tokenizer):
    """Under DDP each rank's loaders hold the project's own DistributedSamplers (EpochSampler for
    training, EvalSampler for evaluation), which Lightning leaves in place: every sample on exactly
    one rank, as many batches on each, and evaluation's evening-out repeat marked as padding."""
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    from damo_lit.data.dataset import EpochSampler, EvalSampler

    module = _module(synth_dir, tokenizer, train_tasks=["grounding"], eval_tasks=["grounding"], batch_size=5,
                     num_workers=1)
    train, val = [], []
    for rank in (0, 1):
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = module.train_dataloader()
        assert isinstance(loader.sampler, EpochSampler) and isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.num_replicas == 2 and loader.sampler.rank == rank
        train.append([i for batch in loader for i in batch["sample_id"]])
        loader = module.val_dataloader()
        assert isinstance(loader.sampler, EvalSampler) and loader.sampler.rank == rank
        val.append([(i, bool(p)) for batch in loader for i, p in zip(batch["sample_id"], batch["padding"])])
    everything = [s.record.id for s in module.splits["train"].samples]
    n = len(everything)
    assert len(train[0]) == len(train[1]) == (n + 1) // 2
    assert set(train[0]) | set(train[1]) == set(everything)  # DistributedSampler's repeat when n is odd
    assert len(set(train[0]) & set(train[1])) == n % 2
    real = [i for share in val for i, padding in share if not padding]
    assert sorted(real) == sorted(s.record.id for s in module.splits["val"].samples)  # each exactly once
    assert len(val[0]) == len(val[1]) and sum(p for share in val for _, p in share) == len(real) % 2
