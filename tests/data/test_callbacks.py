"""DecodeFailureReport: a real (tiny) Lightning run logs and names the files that failed to decode."""

from __future__ import annotations

import shutil
import warnings

import lightning as L
import pytest
import torch

from damo_lit.data.callbacks import DecodeFailureReport
from damo_lit.data.datamodule import DaMODataModule
from damo_lit.data.schema import read_jsonl, write_jsonl


class FrameMean(L.LightningModule):
    """Learns one number: enough to run the loops over real batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.samples = 0

    def training_step(self, batch, batch_idx):
        self.samples += len(batch["sample_id"])
        return (self.weight - batch["frames"].float().mean() / 255) ** 2

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_failures_are_logged_each_epoch_and_named_once(tmp_path, synth_dir, tokenizer):
    records = [r for _, r in read_jsonl(synth_dir / "annotations" / "train.jsonl") if r.task == "grounding"][:4]
    (tmp_path / "videos").mkdir(parents=True)
    for r in records:
        shutil.copy(synth_dir / r.video, tmp_path / r.video)
    broken = records[0].__class__(**{**records[0].__dict__, "id": "broken", "video": "videos/broken.mp4"})
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video at all" * 50)
    for split in ("train", "val", "test"):
        write_jsonl(tmp_path / "annotations" / f"{split}.jsonl", records + [broken])
    module = DaMODataModule(annotations=str(tmp_path / "annotations"), video_dir=str(tmp_path), train_tasks=["grounding"],
                            batch_size=2, num_frames=4, frame_size=16, num_audio_segments=2, audio_segment_frames=10)  # fmt: skip
    module.set_tokenizer(tokenizer)
    model = FrameMean()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[DecodeFailureReport()],
                        accelerator="cpu", devices=1)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=module)
    assert model.samples == 2 * len(records)  # every good sample, both epochs
    assert trainer.callback_metrics["data/decode_failures"] == 1
    # skipped: train epoch 1 + val 1 + train epoch 2 + val 2
    assert trainer.callback_metrics["data/skipped_samples"] == pytest.approx(4)
    named = [w for w in caught if "could not be decoded and were skipped" in str(w.message)]
    assert len(named) == 1 and str(tmp_path / "videos" / "broken.mp4") in str(named[0].message)
