"""Stage 1, video-text alignment, BLIP-2 style, on caption data:

- VTC: symmetric InfoNCE between the pooled video embedding and the text encoder's embedding,
  with the features gathered across DDP ranks so that every rank contrasts against the global
  batch;
- VTM: binary video-text matching on the fused tokens, with hard negatives drawn from the VTC
  similarities of this rank's items to every rank's (identical captions never count as negatives);
- VTG: video-grounded caption generation through the projector and the LLM.
Validation reports text-to-video and video-to-text retrieval R@1/5/10 and median rank.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from damo_lit.metrics import RetrievalMetrics
from damo_lit.models.llm import load_tokenizer
from damo_lit.stages.base import DaMOStage


class MatchingHead(nn.Module):
    """VTM: every caption token cross-attends to the fused media tokens; their masked mean
    decides match / no match (a random-init text encoder's [CLS] alone carries too little)."""

    def __init__(self, text_dim: int, media_dim: int, heads: int = 4) -> None:
        super().__init__()
        heads = heads if text_dim % heads == 0 else 1
        self.media_proj = nn.Linear(media_dim, text_dim)
        self.cross = nn.MultiheadAttention(text_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(text_dim)
        self.classify = nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU(), nn.Linear(text_dim, 2))

    def forward(self, text_states: Tensor, text_mask: Tensor, media: Tensor) -> Tensor:
        keys = self.media_proj(media)
        attended, _ = self.cross(text_states, keys, keys, need_weights=False)
        fused = self.norm(text_states + attended)
        weights = text_mask.unsqueeze(-1).to(fused.dtype)
        return self.classify((fused * weights).sum(1) / weights.sum(1).clamp(min=1))


def stage1_head_count(text_dim: int, media_dim: int) -> int:
    """Parameters stage 1 trains outside the model's groups (counted on the meta device): the VTM
    head and the learned temperature, as AlignStage builds them."""
    with torch.device("meta"):
        head = MatchingHead(text_dim, media_dim)
    return sum(p.numel() for p in head.parameters()) + 1  # + logit_scale


def hard_negatives(sim_v2t: Tensor, sim_t2v: Tensor, same: Tensor, generator: torch.Generator | None = None,
                   sharpness: float = 20.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One hard negative per video and per text for VTM, BLIP-2 style: drawn (not the arg max, so
    that one near-duplicate does not become every epoch's negative) with probability
    softmax(sharpness * sim) over the candidates. A candidate whose caption equals the anchor's
    (the anchor's own pair included) is never drawn: it is no negative.

    sim_v2t: (B, W) this rank's videos x all ranks' texts; sim_t2v: (B, W) this rank's texts x all
    ranks' videos; same: (B, W) whether candidate j's caption equals anchor i's. Returns (videos, their
    negative texts, texts, their negative videos): anchors as local rows, negatives as candidate
    columns. An anchor whose candidates all share its caption gets none.
    """
    with torch.no_grad():
        weights_v2t = F.softmax(sim_v2t.float() * sharpness, dim=1).masked_fill(same, 0)
        weights_t2v = F.softmax(sim_t2v.float() * sharpness, dim=1).masked_fill(same, 0)

    def draw(weights: Tensor) -> tuple[Tensor, Tensor]:
        anchors = (weights.sum(1) > 0).nonzero().squeeze(1)
        if len(anchors) == 0:
            return anchors, anchors.clone()
        return anchors, torch.multinomial(weights[anchors], 1, generator=generator).squeeze(1)

    videos, neg_text = draw(weights_v2t)
    texts, neg_video = draw(weights_t2v)
    return videos, neg_text, texts, neg_video


def same_tokens(ids: Tensor, mask: Tensor, ids_all: Tensor, mask_all: Tensor) -> Tensor:
    """(B, W): whether caption j of all ranks tokenises exactly as local caption i (same tokens,
    same length): the same caption, which is never a negative of its own."""
    local = ids.masked_fill(mask == 0, -1)
    every = ids_all.masked_fill(mask_all == 0, -1)
    return (local[:, None, :] == every[None, :, :]).all(-1)


class AlignStage(DaMOStage):
    def __init__(self, *args: Any, loss_weights: Mapping[str, float] | None = None,
                 temperature: float = 0.07, max_caption_tokens: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, loss_weights=loss_weights, temperature=temperature,
                         max_caption_tokens=max_caption_tokens, **kwargs)
        if self.model.text_encoder is None:
            raise ValueError("stage1 needs a text encoder: model.text_encoder.enabled must be true")
        weights = {"vtc": 1.0, "vtm": 1.0, "vtg": 1.0, **dict(loss_weights or {})}
        unknown = set(weights) - {"vtc", "vtm", "vtg"}
        if unknown:
            raise ValueError(f"stage.loss_weights: unknown loss(es) {sorted(unknown)}; expected vtc, vtm, vtg")
        self.loss_weights = weights
        text_cfg = self.model_cfg["text_encoder"]
        source = text_cfg.get("tokenizer") or text_cfg.get("name_or_path")
        self.text_tokenizer = load_tokenizer(source, offline=bool(text_cfg.get("offline", True)))
        self.max_caption_tokens = max_caption_tokens
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.vtm_head = MatchingHead(self.model.text_encoder.dim, int(self.model_cfg["fuseformer"]["hidden"]))
        self.retrieval = RetrievalMetrics()

    # -- pieces ---------------------------------------------------------------------------------
    def tokenize_captions(self, captions: Sequence[str | None]) -> tuple[Tensor, Tensor]:
        missing = [i for i, c in enumerate(captions) if not c]
        if missing:
            raise ValueError(f"stage1 needs a caption for every sample; batch positions {missing} have none "
                             "(data.train_tasks should be [caption])")
        enc = self.text_tokenizer(list(captions), padding=True, truncation=True,
                                  max_length=self.max_caption_tokens, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def text_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model.text_encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state

    @property
    def distributed(self) -> bool:
        return self._trainer is not None and self._trainer.world_size > 1

    def gather(self, x: Tensor, grads: bool = True) -> tuple[Tensor, int]:
        """All ranks' rows in rank order (with `grads`, gradients flow back to this rank's rows), and
        where this rank's rows start among them. Ranks may hold different numbers of rows (a video
        that fails to decode drops its sample from one rank's batch): the collective runs on rows
        padded to the largest count, and the padding is cut out of the result."""
        if not self.distributed:
            return x, 0
        counts = [int(n) for n in self.all_gather(torch.tensor(x.shape[0], device=x.device)).flatten().tolist()]
        padded = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])
        gathered = self.all_gather(padded, sync_grads=grads)  # (world, max rows, ...)
        rank = self._trainer.global_rank
        return torch.cat([gathered[r, :n] for r, n in enumerate(counts)]), sum(counts[:rank])

    def gather_captions(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(local ids, local mask, all ranks' ids, all ranks' masks), every one padded to the longest
        caption of any rank, so that local and gathered captions go through the text encoder alike."""
        length = ids.shape[1]
        if self.distributed:
            length = int(self.all_gather(torch.tensor(length, device=ids.device)).max())
        pad = length - ids.shape[1]
        ids = F.pad(ids, (0, pad), value=int(self.text_tokenizer.pad_token_id or 0))
        mask = F.pad(mask, (0, pad), value=0)
        both, _ = self.gather(torch.stack([ids, mask], dim=1), grads=False)
        return ids, mask, both[:, 0], both[:, 1]

    def losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        media = self.media(batch)
        video = F.normalize(self.model.pooled_video(media), dim=-1)
        ids, mask = self.tokenize_captions(batch["caption"])
        if self.model.text_encoder is None:
            raise ValueError("model.text_encoder.enabled=false: there is no text encoder")
        states, text = self.model.text_encoder.encode(ids, mask)  # one pass serves VTC and VTM
        text = F.normalize(text, dim=-1)
        size = video.shape[0]
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        both, offset = self.gather(torch.cat([video, text], dim=1))  # one collective for the pair
        video_all, text_all = both.split([video.shape[1], text.shape[1]], dim=1)
        targets = torch.arange(size, device=self.device) + offset
        sim_v2t = scale * video @ text_all.T
        sim_t2v = scale * text @ video_all.T
        out = {"vtc": (F.cross_entropy(sim_v2t, targets) + F.cross_entropy(sim_t2v, targets)) / 2}
        out["vtm"] = self.matching_loss(ids, mask, states, media.fusion, video.detach(), text.detach(),
                                        video_all.detach(), text_all.detach())
        if self.loss_weights["vtg"] > 0:
            out["vtg"], _ = self.lm_loss(batch, self.soft_prompt(batch, media))
        return out

    def matching_loss(self, ids: Tensor, mask: Tensor, states: Tensor, fusion: Tensor, video: Tensor,
                      text: Tensor, video_all: Tensor, text_all: Tensor) -> Tensor:
        """VTM with one hard negative text per video and one hard negative video per text, mined
        from the similarities of this rank's items to every rank's (BLIP-2 mines across the world
        batch too): the negatives' fused tokens and captions come from whichever rank holds them.
        `states` are the text encoder's token states of this rank's captions (ids, mask)."""
        ids, mask, ids_all, mask_all = self.gather_captions(ids, mask)
        # captions padded to the longest of any rank: the padding's states are never read (the
        # head's queries are the tokens, each on its own, and it averages over `mask` alone)
        states = F.pad(states, (0, 0, 0, ids.shape[1] - states.shape[1]))
        fusion_all, _ = self.gather(fusion)
        same = same_tokens(ids, mask, ids_all, mask_all)
        videos, neg_text, texts, neg_video = hard_negatives(video @ text_all.T, text @ video_all.T, same)
        if not self.distributed:  # the candidates are this process's own captions
            neg_states = states[neg_text]
        else:
            neg_states = self.text_states(ids_all[neg_text], mask_all[neg_text])
        pairs_text = [states, neg_states, states[texts]]
        pairs_mask = [mask, mask_all[neg_text], mask[texts]]
        pairs_media = [fusion, fusion[videos], fusion_all[neg_video]]
        size = ids.shape[0]
        labels = torch.cat([torch.ones(size, dtype=torch.long, device=ids.device),
                            torch.zeros(len(videos) + len(texts), dtype=torch.long, device=ids.device)])
        logits = self.vtm_head(torch.cat(pairs_text), torch.cat(pairs_mask), torch.cat(pairs_media))
        return F.cross_entropy(logits, labels)

    # -- Lightning hooks ------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        parts = self.losses(batch)
        loss = sum(self.loss_weights[k] * v for k, v in parts.items())
        size = self.batch_size_of(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_metrics("train", {f"loss_{k}": v for k, v in parts.items()}, batch_size=size)
        return loss

    def _evaluate(self, split: str, batch: Mapping[str, Any]) -> None:
        media = self.media(batch)
        ids, mask = self.tokenize_captions(batch["caption"])
        video = self.model.pooled_video(media)
        text = self.model.encode_text(ids, mask)
        real = ~batch["padding"] if "padding" in batch else slice(None)  # EvalSampler's repeats: not scored twice
        self.retrieval.update(text.float()[real], video.float()[real])
        loss, _ = self.lm_loss(batch, self.soft_prompt(batch, media))
        self.log(f"{split}/loss_vtg", loss, batch_size=self.batch_size_of(batch), sync_dist=True)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _log_retrieval(self, split: str) -> None:
        if int(self.retrieval.dim) == 0:
            return
        values = self.retrieval.compute()
        self.log_metrics(split, {k: v for k, v in values.items() if not k.endswith("_count")})
        self.retrieval.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_retrieval("val")

    def on_test_epoch_end(self) -> None:
        self._log_retrieval("test")
