"""A real (tiny) Lightning run over a set with a broken file: it never stops, every good sample is
trained on, and a callback can read the failure counts at the end of each epoch."""

from __future__ import annotations

import shutil
import warnings

import lightning as L
import torch

from damo_lit.data.datamodule import DaMODataModule
from damo_lit.data.schema import read_jsonl, write_jsonl


class FrameMean(L.LightningModule):
    """Learns one number: enough to run the loops over real batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.samples: list[str] = []

    def training_step(self, batch, batch_idx):
        self.samples += batch["sample_id"]
        return (self.weight - batch["frames"].float().mean() / 255) ** 2

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Counts(L.Callback):
    """What an epoch-end report callback sees."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        failures = trainer.datamodule.decode_failures()
        self.seen.append((len(failures), trainer.datamodule.skipped_samples()))


def test_a_broken_file_never_stops_a_run(tmp_path, synth_dir, tokenizer):
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
    model, counts = FrameMean(), Counts()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[counts],
                        accelerator="cpu", devices=1)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=module)
    assert sorted(model.samples) == sorted([r.id for r in records] * 2)  # every good sample, both epochs
    # one file, skipped once per epoch in train and once in each validation (which Lightning runs
    # before on_train_epoch_end)
    assert counts.seen == [(1, 2), (1, 4)]
    named = [w for w in caught if f"skipping {tmp_path / 'videos' / 'broken.mp4'}" in str(w.message)]
    assert len(named) == 1  # named once, not every epoch
