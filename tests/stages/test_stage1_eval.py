"""Stage 1's evaluation and its contrastive pieces: retrieval R@1/5/10 logged by a validation run of
the tiny model, VTM's hard-negative mining, and the VTC feature gather across DDP ranks."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run
from damo_lit.metrics.retrieval import retrieval_metrics
from damo_lit.stages.align import AlignStage, hard_negatives, same_tokens

WORLD = 2


def test_stage1_validation_logs_retrieval_over_the_whole_set(tiny_overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_run("train", ["stage=stage1_align", *tiny_overrides], tmp_path)
    stage, datamodule, trainer = build_run(cfg)
    datamodule.setup("fit")
    # The training split (16 captions in 4 batches) as the validation set: the 2 val videos would
    # make R@5 and R@10 trivially 1, and several batches check that retrieval ranks over the whole set.
    loader = datamodule.train_dataloader()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    update = stage.retrieval.update

    def spy(text: torch.Tensor, video: torch.Tensor) -> None:
        seen.append((text.detach(), video.detach()))
        update(text, video)

    stage.retrieval.update = spy
    (logged,) = trainer.validate(stage, dataloaders=loader)

    text, video = (torch.cat(part) for part in zip(*seen))
    assert len(seen) == len(loader) > 1 and text.shape[0] == len(loader.dataset) == 16
    sim = F.normalize(text.double(), dim=-1) @ F.normalize(video.double(), dim=-1).T
    expected = {**retrieval_metrics(sim, prefix="t2v_"), **retrieval_metrics(sim.T, prefix="v2t_")}
    for direction in ("t2v", "v2t"):
        recall = [logged[f"val/{direction}_R@{k}"] for k in (1, 5, 10)]
        assert all(0.0 <= r <= 1.0 for r in recall) and recall == sorted(recall), (direction, recall)
        assert 1.0 <= logged[f"val/{direction}_MdR"] <= 16 and 1.0 <= logged[f"val/{direction}_MnR"] <= 16
        for name in ("R@1", "R@5", "R@10", "MdR", "MnR"):
            key = f"{direction}_{name}"
            assert logged[f"val/{key}"] == pytest.approx(expected[key], abs=1e-6), key
    assert "val/loss_vtg" in logged and not any(k.endswith("_count") for k in logged)

    with open(tmp_path / "csv" / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert "val/t2v_R@1" in header and all(k in ("epoch", "step") or k.startswith("val/") for k in header), header
    # one process: the gather hands back its input
    features = torch.randn(3, 4)
    gathered, offset = stage.gather(features)
    assert gathered is features and offset == 0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a bare validation_step: no trainer
def test_stage1_leaves_evaluation_padding_out_of_retrieval(tiny_overrides: list[str], tmp_path: Path) -> None:
    """A repeat that EvalSampler marks as padding (it evens out the ranks' batches) is no candidate."""
    stage, datamodule, _ = build_run(compose_run("train", ["stage=stage1_align", *tiny_overrides], tmp_path))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    size = len(batch["sample_id"])
    assert not batch["padding"].any(), "training batches hold no padding"
    batch["padding"] = torch.arange(size) == size - 1
    stage.eval()
    with torch.no_grad():
        stage.validation_step(batch, 0)
    assert stage.retrieval.compute()["t2v_count"] == size - 1


# -- hard negatives --------------------------------------------------------------------------------
def same_captions(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[a == b for b in captions] for a in captions])


def local_negatives(sim: torch.Tensor, captions: list[str], generator: torch.Generator | None = None):
    """hard_negatives over one process's batch: its videos x texts matrix and its transpose."""
    return hard_negatives(sim, sim.T, same_captions(captions), generator=generator)


def draws(sim: torch.Tensor, captions: list[str], times: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative text per video, negative video per text), `times` draws each: (times, B), -1 for none."""
    generator = torch.Generator().manual_seed(0)
    size = sim.shape[0]
    texts_of, videos_of = torch.full((times, size), -1), torch.full((times, size), -1)
    for t in range(times):
        videos, neg_text, texts, neg_video = local_negatives(sim, captions, generator=generator)
        texts_of[t, videos], videos_of[t, texts] = neg_text, neg_video
    return texts_of, videos_of


def test_hard_negatives_are_never_the_pair_nor_an_identical_caption() -> None:
    torch.manual_seed(0)
    captions = ["a dog", "a cat", "a dog", "a bird", "a fish", "a cat"]
    sim = torch.randn(6, 6)
    sim[0, 2] = sim[2, 0] = sim[1, 5] = sim[5, 1] = 5.0  # the duplicates look the most alike: still no negatives
    texts_of, videos_of = draws(sim, captions, 300)
    for anchor in range(6):
        for negatives in (texts_of[:, anchor], videos_of[:, anchor]):
            assert (negatives >= 0).all(), "every anchor has other captions: it gets a negative"
            assert all(captions[n] != captions[anchor] for n in negatives.tolist()), anchor


def test_hard_negatives_are_drawn_by_similarity() -> None:
    # video 0 resembles text 1 far more than texts 2 and 3: text 1 nearly always; equally similar
    # items share the draws evenly; and two items 0.05 apart split as softmax(20 * sim) says
    # (e^1 : 1): a draw weighted by similarity, not the arg max
    sim = torch.tensor([[0.9, 0.8, 0.10, 0.05],
                        [0.0, 0.9, 0.20, 0.20],
                        [0.0, 0.0, 0.90, 0.00],
                        [0.0, 0.0, 0.00, 0.90]])
    texts_of, videos_of = draws(sim, ["w", "x", "y", "z"], 1000)
    assert (texts_of[:, 0] == 1).float().mean() > 0.99
    among = texts_of[:, 1][texts_of[:, 1] != 0]  # video 1: texts 2 and 3 tie, text 0 lies far below
    assert (among == 2).float().mean() == pytest.approx(0.5, abs=0.05)
    share = (videos_of[:, 0] == 1).float().mean()  # text 0's videos: 1 (0.0), 2 (0.0), 3 (0.0) alike
    assert share == pytest.approx(1 / 3, abs=0.05)
    high = torch.tensor([[0.9, 0.5, 0.45], [0.0, 0.9, 0.0], [0.0, 0.0, 0.9]])
    picks = draws(high, ["x", "y", "z"], 1000)[0][:, 0]
    expected = torch.softmax(torch.tensor([0.5, 0.45]) * 20, 0)[0]
    assert (picks == 1).float().mean() == pytest.approx(float(expected), abs=0.045)


def test_an_anchor_whose_batch_mates_all_share_its_caption_gets_no_negative() -> None:
    videos, neg_text, texts, neg_video = local_negatives(torch.randn(3, 3), ["same", "same", "other"])
    assert videos.tolist() == texts.tolist() == [0, 1, 2]
    for negatives in (neg_text.tolist(), neg_video.tolist()):
        assert negatives[:2] == [2, 2] and negatives[2] in (0, 1)
    alone = local_negatives(torch.randn(2, 2), ["same", "same"])
    assert all(len(part) == 0 for part in alone)


# -- the VTC gather across ranks -------------------------------------------------------------------
class GatherProbe(L.LightningModule):
    """The stage's gather on a bare module (no model to build in each process)."""

    gather = AlignStage.gather
    distributed = AlignStage.distributed


ROWS = (2, 3)  # rank 1 holds one row more (a failed decode can shrink one rank's batch)


def local_features(rank: int) -> torch.Tensor:
    return torch.arange(3 * ROWS[rank], dtype=torch.float32).reshape(ROWS[rank], 3) + 10 * rank


def weights(rank: int) -> torch.Tensor:
    """Each rank's loss weighs the gathered rows differently."""
    return torch.arange(3 * sum(ROWS), dtype=torch.float32).reshape(sum(ROWS), 3) * (rank + 1)


@contextlib.contextmanager
def probe_on_rank(probe_class: type[L.LightningModule], rank: int, port: int) -> Iterator[L.LightningModule]:
    """A bare probe module as one of WORLD gloo ranks, with the trainer attributes the stage reads."""
    from lightning.pytorch.strategies import DDPStrategy

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        probe = probe_class()
        probe.trainer = SimpleNamespace(world_size=WORLD, global_rank=rank, strategy=DDPStrategy())
        yield probe
    finally:
        dist.destroy_process_group()


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    with probe_on_rank(GatherProbe, rank, port) as probe:
        features = local_features(rank).requires_grad_()
        gathered, offset = probe.gather(features)
        (gathered * weights(rank)).sum().backward()
        torch.save({"gathered": gathered.detach(), "grad": features.grad, "offset": offset},
                   Path(out_dir) / f"rank{rank}.pt")


def test_gather_concatenates_uneven_ranks_and_sends_gradients_back_to_the_local_rows(tmp_path: Path) -> None:
    from tests.metrics.test_metrics_ddp import free_port

    mp.spawn(_gather_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    whole = torch.cat([local_features(r) for r in range(WORLD)])
    total_weight = sum(weights(r) for r in range(WORLD))
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(out["gathered"], whole, rtol=0, atol=0)
        offset = out["offset"]
        assert offset == sum(ROWS[:rank]), "the VTC targets of this rank's rows: their place in the gathered batch"
        # every rank's loss reads this rank's rows: their gradient is the sum over ranks
        torch.testing.assert_close(out["grad"], total_weight[offset : offset + ROWS[rank]], rtol=0, atol=0)


# -- VTM negatives mined across ranks ---------------------------------------------------------------
class MiningProbe(L.LightningModule):
    """The stage's caption and feature gathers on a bare module."""

    gather = AlignStage.gather
    gather_captions = AlignStage.gather_captions
    distributed = AlignStage.distributed
    text_tokenizer = SimpleNamespace(pad_token_id=0)


CAPTION_TOKENS = ([5, 6], [7, 8, 9])  # each rank's one caption, of its own length; rank r has ROWS[r] copies


def _mining_worker(rank: int, port: int, out_dir: str) -> None:
    with probe_on_rank(MiningProbe, rank, port) as probe:
        ids = torch.tensor([CAPTION_TOKENS[rank]] * ROWS[rank])
        ids, mask, ids_all, mask_all = probe.gather_captions(ids, torch.ones_like(ids))
        torch.manual_seed(rank)
        video, text = F.normalize(torch.randn(ROWS[rank], 4), dim=-1), F.normalize(torch.randn(ROWS[rank], 4), dim=-1)
        video_all, _ = probe.gather(video)
        text_all, offset = probe.gather(text)
        same = same_tokens(ids, mask, ids_all, mask_all)
        videos, neg_text, texts, neg_video = hard_negatives(video @ text_all.T, text @ video_all.T, same)
        torch.save({"ids_all": ids_all, "mask_all": mask_all, "offset": offset, "same": same, "videos": videos,
                    "neg_text": neg_text, "texts": texts, "neg_video": neg_video}, Path(out_dir) / f"mine{rank}.pt")


def test_vtm_negatives_come_from_other_ranks_when_a_rank_holds_one_caption(tmp_path: Path) -> None:
    """Each rank's batch repeats one caption: mined within the rank, VTM would get no negative at
    all; mined across ranks, every anchor gets one, from the other rank's rows."""
    from tests.metrics.test_metrics_ddp import free_port

    mp.spawn(_mining_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    padded = [tokens + [0] * (3 - len(tokens)) for tokens in CAPTION_TOKENS]
    expected_ids = torch.tensor([padded[r] for r in range(WORLD) for _ in range(ROWS[r])])
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"mine{rank}.pt", weights_only=True)
        torch.testing.assert_close(out["ids_all"], expected_ids, rtol=0, atol=0)
        assert out["mask_all"][:ROWS[0], 2].tolist() == [0] * ROWS[0], "rank 0's shorter caption is padding there"
        mine = range(out["offset"], out["offset"] + ROWS[rank])
        assert out["same"].sum(1).tolist() == [ROWS[rank]] * ROWS[rank], "the same caption: this rank's rows only"
        assert out["videos"].tolist() == out["texts"].tolist() == list(range(ROWS[rank])), "every anchor has one"
        for negatives in (out["neg_text"], out["neg_video"]):
            assert all(n not in mine for n in negatives.tolist()), "negatives come from the other rank"
