"""The frozen-encoder feature cache: same loss as decoding, every stage takes it, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from damo_lit.cli.cache import build_cache, main, pool_local_tokens
from damo_lit.cli.common import compose, compose_run
from damo_lit.cli.train import build_run
from damo_lit.data.features import FEATURE_KEYS, FeatureCacheError, FeatureCacheWriter, FeatureStore

from .conftest import FROZEN
from .helpers import cache_error

STAGES = ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"]


def _first_train_batch(datamodule) -> dict:
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)  # the same shuffle for both runs
    return next(iter(datamodule.train_dataloader()))


def test_step0_loss_is_the_same_with_and_without_the_cache(
    train_overrides: list[str], feature_cache: Path, tmp_path: Path
) -> None:
    plain = compose_run("train", [*train_overrides, *FROZEN], tmp_path / "decoded")
    cached = compose_run("train", [*train_overrides, *FROZEN, f"data.features={feature_cache}"], tmp_path / "cached")
    stage_a, dm_a, _ = build_run(plain)
    stage_b, dm_b, _ = build_run(cached)
    batch_a, batch_b = _first_train_batch(dm_a), _first_train_batch(dm_b)

    assert batch_a["sample_id"] == batch_b["sample_id"]
    assert {"frames", "audio_mel"} <= set(batch_a) and not set(FEATURE_KEYS) & set(batch_a)
    assert set(FEATURE_KEYS) <= set(batch_b) and not {"frames", "audio_mel"} & set(batch_b)
    for key in set(batch_a) - {"frames", "audio_mel"}:  # everything else of the contract is unchanged
        a, b = batch_a[key], batch_b[key]
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
    n, m = plain.model.num_frames, plain.model.num_audio_segments
    assert batch_b["vision_global"].shape[:2] == (4, n) and batch_b["audio_local"].shape[:2] == (4, m)

    stage_a.train()
    stage_b.train()
    loss_a, loss_b = stage_a.lm_loss(batch_a)[0], stage_b.lm_loss(batch_b)[0]
    assert torch.isfinite(loss_a)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_trains_from_the_cache(stage: str, train_overrides: list[str], feature_cache: Path,
                                           tmp_path: Path) -> None:
    cfg = compose_run("train", [f"stage={stage}", *train_overrides, *FROZEN, f"data.features={feature_cache}",
                                "model.llm.trainable=false", "data.batch_size=2", "trainer.max_steps=1",
                                "trainer.limit_val_batches=0", "test_after_fit=false",
                                "callbacks.model_checkpoint=null", "trainer.log_every_n_steps=1"], tmp_path)  # fmt: skip
    stage_module, datamodule, trainer = build_run(cfg)
    trainer.fit(stage_module, datamodule=datamodule)
    assert trainer.global_step == 1
    loss = trainer.callback_metrics.get("train/loss")
    assert loss is not None and torch.isfinite(loss)


def test_trainable_towers_with_a_cache_are_refused(data_overrides: list[str], feature_cache: Path) -> None:
    cfg = compose("train", [*data_overrides, "model.audio.trainable=false", f"data.features={feature_cache}"])
    with pytest.raises(InstantiationException, match=r"must be frozen: set model\.vision\.trainable=false"):
        instantiate(cfg.data, _convert_="partial")


def test_a_cache_of_another_model_config_is_refused(data_overrides: list[str], feature_cache: Path) -> None:
    cfg = compose("train", [*data_overrides, *FROZEN, "model.vision.std=[0.5,0.5,0.5]",
                            f"data.features={feature_cache}"])  # fmt: skip
    datamodule = instantiate(cfg.data, _convert_="partial")
    with pytest.raises(FeatureCacheError, match=r"another model config: model\.vision\.std"):
        datamodule.setup("fit")
    # ... and damo-cache will not mix two configs in one folder either.
    with pytest.raises(SystemExit, match=r"made with another config \(model\.vision\.std"):
        main([*data_overrides, *FROZEN, "model.vision.std=[0.5,0.5,0.5]", f"out={feature_cache}"])


def test_a_run_with_other_tower_chunk_sizes_reads_the_same_cache(data_overrides: list[str], feature_cache: Path) -> None:
    """chunk_size changes how many frames one tower forward takes, not what the tower outputs (and a
    cache made before the key existed must keep serving)."""
    manifest = json.loads((feature_cache / "manifest.json").read_text())
    assert "chunk_size" not in json.dumps(manifest["signature"])
    cfg = compose("train", [*data_overrides, *FROZEN, "model.vision.chunk_size=3", "model.audio.chunk_size=2",
                            f"data.features={feature_cache}"])  # fmt: skip
    datamodule = instantiate(cfg.data, _convert_="partial")
    datamodule.setup("fit")
    assert datamodule.feature_store is not None
    from damo_lit.data.features import signature_diff

    with_keys = {"vision": {"kind": "clip", "chunk_size": 0, "trainable": True}, "seed": 0}
    assert signature_diff(with_keys, {"vision": {"kind": "clip"}, "seed": 0}) == []  # a cache that recorded them
    assert signature_diff(with_keys, {"vision": {"kind": "siglip"}, "seed": 0}) == [
        "model.vision.kind: cache 'clip', this run 'siglip'"]


def test_a_linked_path_to_the_same_towers_is_the_same_config(
    data_overrides: list[str], feature_cache: Path, tmp_path: Path
) -> None:
    # A checkout reached through a symlink names the towers by another path string; the cache
    # must still serve it (and a different folder must not: see the test above).
    tiny_dir = Path(compose("train", [*data_overrides, *FROZEN]).model.tiny_dir)
    link = tmp_path / "linked_tiny_models"
    link.symlink_to(tiny_dir, target_is_directory=True)
    cfg = compose("train", [*data_overrides, *FROZEN, f"model.tiny_dir={link}", f"data.features={feature_cache}"])
    datamodule = instantiate(cfg.data, _convert_="partial")
    datamodule.setup("fit")
    assert datamodule.feature_store is not None

    elsewhere = tmp_path / "other_tiny_models"
    elsewhere.mkdir()
    cfg = compose("train", [*data_overrides, *FROZEN, f"model.tiny_dir={elsewhere}",
                            f"data.features={feature_cache}"])  # fmt: skip
    with pytest.raises(FeatureCacheError, match=r"another model config: model\.audio\.name_or_path"):
        instantiate(cfg.data, _convert_="partial").setup("fit")


def test_towers_from_a_stage_checkpoint_need_a_cache_made_from_it(
    train_overrides: list[str], data_overrides: list[str], feature_cache: Path, tmp_path: Path
) -> None:
    # A stage checkpoint whose towers differ from the pretrained ones (as after the tiny model's stage 2).
    from damo_lit.stages.weights import save_stage_weights, stage_state

    donor = build_run(compose_run("train", [*train_overrides, *FROZEN], tmp_path / "donor"))[0]
    with torch.no_grad():
        for param in [*donor.model.vision.parameters(), *donor.model.audio.parameters()]:
            param.add_(0.05 * torch.randn_like(param))
    ckpt = tmp_path / "stage2"
    save_stage_weights(ckpt, stage_state(donor.model, set(donor.model.state_dict())), {"stage": "stage2"})
    started = [*train_overrides, *FROZEN, f"stage.init_from={ckpt}"]

    # The cache of the pretrained towers does not serve a run that starts from those towers ...
    with pytest.raises(FeatureCacheError, match=r"other tower weights .* damo-cache init_from="):
        build_run(compose_run("train", [*started, f"data.features={feature_cache}"], tmp_path / "stale"))
    # ... nor, the other way round, a run on the pretrained towers.
    own = tmp_path / "own-cache"
    assert main([*data_overrides, *FROZEN, f"out={own}", f"init_from={ckpt}", "num_workers=0"]) == 0
    assert json.loads((own / "manifest.json").read_text())["info"]["towers_from"] == str(ckpt)
    with pytest.raises(FeatureCacheError, match="other tower weights"):
        build_run(compose_run("train", [*train_overrides, *FROZEN, f"data.features={own}"], tmp_path / "pretrained"))

    # The cache made with init_from gives the loss that decoding gives with those towers.
    stage_a, dm_a, _ = build_run(compose_run("train", started, tmp_path / "decoded"))
    stage_b, dm_b, _ = build_run(compose_run("train", [*started, f"data.features={own}"], tmp_path / "cached"))
    batch_a, batch_b = _first_train_batch(dm_a), _first_train_batch(dm_b)
    stage_a.train()
    stage_b.train()
    torch.testing.assert_close(stage_b.lm_loss(batch_b)[0], stage_a.lm_loss(batch_a)[0], rtol=0, atol=1e-5)


def test_interrupted_cache_is_refused_then_resumed(data_overrides: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    from damo_lit.cli.cache import main as damo_cache

    out = tmp_path / "cache"
    words = [*data_overrides, *FROZEN, f"out={out}", "num_workers=0", "shard_size=4", "batch_size=4"]
    cfg = compose("cache", words)
    original = FeatureCacheWriter.write_shard
    calls = []

    def crash_on_second(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were killed while writing shard 2
        return original(self, rows)

    monkeypatch.setattr(FeatureCacheWriter, "write_shard", crash_on_second)
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line, the shell's status for SIGINT
        damo_cache(words)
    assert stopped.value.code == 130
    said = capsys.readouterr().err
    assert f"damo-cache: interrupted (Ctrl-C); its finished shards stay in {out}" in said and "Traceback" not in said
    monkeypatch.setattr(FeatureCacheWriter, "write_shard", original)
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"
    assert len(list((out / "shards").glob("*.safetensors"))) == 1, "only the finished shard is on disk"
    with pytest.raises(FeatureCacheError, match="incomplete"):
        FeatureStore(out)
    other_dtype = compose("cache", [*data_overrides, *FROZEN, f"out={out}", "num_workers=0", "shard_size=4",
                                    "batch_size=4", "dtype=float16"])  # fmt: skip
    with pytest.raises(FeatureCacheError, match=r"another config \(dtype: cache None, this run float16\)"):
        build_cache(other_dtype)  # its shards would be float16 beside the float32 one

    report = build_cache(cfg)
    assert report.reused == 4, "the finished shard is kept"
    assert report.encoded == report.videos - 4 == 12
    store = FeatureStore(out)
    assert len(store) == 16 and store.manifest["status"] == "complete"
    assert report.bytes == sum(p.stat().st_size for p in (out / "shards").glob("*.safetensors")) > 0
    again = build_cache(cfg)
    assert again.encoded == 0 and again.reused == 16


def test_pooled_locals_reproduce_the_model_exactly(data_overrides: list[str]) -> None:
    """pool_local stores L' tokens instead of every patch: exact when no feature norm precedes pooling."""
    from omegaconf import OmegaConf

    from damo_lit.cli.model import ensure_model_parts
    from damo_lit.models.damo import build_damo

    cfg = compose("cache", [*FROZEN, "model.residual.feature_norm=none"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    ensure_model_parts(model_cfg)
    damo = build_damo(model_cfg).eval()
    n, m, size = model_cfg["num_frames"], model_cfg["num_audio_segments"], model_cfg["vision"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (2, n, 3, size, size), generator=gen, dtype=torch.uint8)
    mel = torch.randn(2, m, 80, model_cfg["audio"]["segment_frames"], generator=gen)
    times = {"frame_times": torch.linspace(0, 9, n).expand(2, n), "audio_times": torch.linspace(0, 9, m).expand(2, m),
             "frame_mask": torch.ones(2, n, dtype=torch.bool), "audio_mask": torch.ones(2, m, dtype=torch.bool),
             "duration": torch.tensor([10.0, 10.0])}  # fmt: skip
    with torch.no_grad():
        feats = damo.encoder_features(frames, mel, times["frame_mask"], times["audio_mask"])
        pooled = pool_local_tokens(feats, model_cfg)
        assert pooled["vision_local"].shape[2] == model_cfg["residual"]["video_tokens"] < feats["vision_local"].shape[2]
        assert pooled["audio_local"].shape[2] == model_cfg["residual"]["audio_tokens"] < feats["audio_local"].shape[2]
        full = damo.encode_features(**feats, **times)
        small = damo.encode_features(**pooled, **times)
    torch.testing.assert_close(small.fusion, full.fusion, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.video, full.video, rtol=1e-5, atol=1e-5)


def test_damo_cache_names_a_bad_setting_before_building_anything(data_overrides: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    said = {
        f"out={blocker}": f"damo-cache: out={blocker}: cannot make the output folder ({blocker} is a file, not a folder)",
        "shard_size=0": "damo-cache: shard_size=0: expected an integer >= 1",
        "batch_size=-1": "damo-cache: batch_size=-1: expected an integer >= 1",
        "dtype=float61": "damo-cache: dtype=float61: expected null or one of float32, float16, bfloat16",
        "device=gpu": "damo-cache: device=gpu: expected auto, cpu, cuda or cuda:N",
        "splits=[training]": "damo-cache: splits: unknown ['training']; expected some of ['train', 'val', 'test']",
    }
    if not torch.cuda.is_available():
        said["device=cuda"] = "damo-cache: device=cuda: this machine has no CUDA GPU (use device=cpu or auto)"
    for word, message in said.items():
        assert cache_error(*data_overrides, f"out={tmp_path / 'c'}", word) == message


def test_damo_cache_fails_when_no_video_could_be_encoded(data_overrides: list[str], tmp_path: Path) -> None:
    """A wrong video folder left a 'complete' cache of no videos and exit status 0; training
    found out later."""
    said = cache_error(*data_overrides, *FROZEN, f"data.video_dir={tmp_path / 'nowhere'}", f"out={tmp_path / 'c'}")
    assert said.startswith("damo-cache: none of the ") and "videos could be encoded (e.g. " in said
    assert said.endswith("check data.video_dir (or data.root) of data synthetic")


def test_a_cache_of_other_decode_settings_or_missing_shards_is_named(
        data_overrides: list[str], feature_cache: Path, tmp_path: Path) -> None:
    import shutil

    from damo_lit.data.decode import DecodeParams
    from damo_lit.data.features import FeatureCacheError, FeatureStore, read_json

    manifest = read_json(feature_cache / "manifest.json")
    params = DecodeParams(**{**manifest["decode"], "sample_rate": 8000})
    with pytest.raises(FeatureCacheError, match=r"decoded with other settings: data\.sample_rate: cache 16000, "
                                                r"this run 8000; rebuild it"):
        FeatureStore(feature_cache, None, params)
    copy = shutil.copytree(feature_cache, tmp_path / "cache")
    first = sorted((copy / "shards").glob("*.safetensors"))[0]
    first.unlink()
    with pytest.raises(FeatureCacheError, match=rf"1 shard file\(s\) its index.json lists are gone \(first: {first.name}\)"):
        FeatureStore(copy)


def test_a_changed_model_key_is_named_before_the_tower_weights_are_blamed(
        train_overrides: list[str], feature_cache: Path, tmp_path: Path) -> None:
    """model.seed changes the tiny towers' weights too: the run named the weights digest and
    pointed at stage.init_from, where the key that differs is model.seed."""
    from damo_lit.data.features import FeatureCacheError

    cfg = compose_run("train", ["stage=stage3_temporal", *train_overrides, *FROZEN, f"data.features={feature_cache}",
                                "model.seed=5"], tmp_path)  # fmt: skip
    with pytest.raises(FeatureCacheError, match=r"another model config: model\.seed"):
        build_run(cfg)
