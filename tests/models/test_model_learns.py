"""The tiny DaMO must learn temporal grounding fast: a toy task, a few hundred CPU steps.

Toy videos (no files): 32 frames of 64x64 noise where a coloured square shows during one span,
or 32 mel segments where a tone band lights up during one span; the answer is that span in
relative time ("from 12 to 40 ."). A model that ignores the media stays near the constant-span
baseline (R@0.5 about 0.25); the tiny config reaches about 1.0 within 300 steps.
"""

from __future__ import annotations

import re

import pytest
import torch

from damo_lit.models.damo import DaMO

N = M = 32
SIZE = 64
COLORS = {"red": (220, 40, 40), "blue": (40, 40, 220), "green": (40, 200, 40)}


def _sample(g: torch.Generator) -> tuple:
    duration = 8 + 12 * torch.rand(1, generator=g).item()
    frames = torch.full((N, 3, SIZE, SIZE), 30, dtype=torch.uint8) + torch.randint(0, 20, (N, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    mel = torch.randn(M, 80, 64, generator=g) * 0.3
    kind = "visual" if torch.rand(1, generator=g).item() < 0.5 else "audio"
    length = 0.15 + 0.35 * torch.rand(1, generator=g).item()
    start = (1 - length) * torch.rand(1, generator=g).item()
    span = (start, start + length)
    centres = (torch.arange(N) + 0.5) / N
    on = ((centres >= span[0]) & (centres < span[1])).nonzero().flatten().tolist()
    if kind == "visual":
        colour = list(COLORS)[int(torch.randint(0, 3, (1,), generator=g))]
        x, y = (int(v) for v in torch.randint(0, SIZE - 20, (2,), generator=g))
        for i in on:
            frames[i, :, y : y + 20, x : x + 20] = torch.tensor(COLORS[colour])[:, None, None]
        question = f"when does the {colour} square appear ?"
    else:
        band = int(torch.randint(10, 70, (1,), generator=g))
        for i in on:
            mel[i, band - 3 : band + 3] += 3.0
        question = "when does the tone sound ?"
    answer = f"from {int(span[0] * 100)} to {min(99, int(span[1] * 100))} ."
    return frames, mel, duration, question, answer, span, kind


def _batch(damo: DaMO, size: int, g: torch.Generator) -> dict:
    tok = damo.tokenizer
    items = [_sample(g) for _ in range(size)]
    duration = torch.tensor([it[2] for it in items])
    times = (torch.arange(N) + 0.5)[None] / N * duration[:, None]
    tok.padding_side = "right"
    enc = tok([f"<video> {it[3]} {it[4]} {tok.eos_token}" for it in items], return_tensors="pt", padding=True)
    labels = enc.input_ids.clone()
    for i, it in enumerate(items):
        labels[i, : len(tok(f"<video> {it[3]}")["input_ids"])] = -100
    labels[enc.attention_mask == 0] = -100
    tok.padding_side = "left"
    prompt = tok([f"<video> {it[3]}" for it in items], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    media = {
        "frames": torch.stack([it[0] for it in items]),
        "frame_times": times,
        "frame_mask": torch.ones(size, N, dtype=torch.bool),
        "audio_mel": torch.stack([it[1] for it in items]),
        "audio_times": times,
        "audio_mask": torch.ones(size, M, dtype=torch.bool),
        "duration": duration,
    }
    return {"media": media, "ids": enc.input_ids, "mask": enc.attention_mask, "labels": labels, "prompt": prompt, "items": items}


def _recall(damo: DaMO, batches: list[dict]) -> dict[str, float]:
    damo.eval()
    hits: dict[str, list[bool]] = {"visual": [], "audio": []}
    with torch.no_grad():
        for b in batches:
            embeds = damo.media_embeds(damo.encode(**b["media"]))
            new = damo.generate(b["prompt"].input_ids, b["prompt"].attention_mask, embeds, max_new_tokens=6)
            for text, it in zip(damo.tokenizer.batch_decode(new, skip_special_tokens=True), b["items"]):
                found = re.search(r"(\d+)\s+to\s+(\d+)", text)
                ok = False
                if found:
                    pred = (int(found.group(1)) / 100, int(found.group(2)) / 100)
                    inter = max(0.0, min(pred[1], it[5][1]) - max(pred[0], it[5][0]))
                    union = max(pred[1], it[5][1]) - min(pred[0], it[5][0])
                    ok = union > 0 and inter / union >= 0.5
                hits[it[6]].append(ok)
    damo.train()
    return {k: sum(v) / len(v) for k, v in hits.items()}


@pytest.mark.slow
def test_tiny_model_learns_audio_and_visual_grounding(make_damo) -> None:
    torch.manual_seed(0)
    damo = make_damo()
    damo.set_trainable(damo.trainable_groups("stage3"))
    damo.train()
    g = torch.Generator().manual_seed(1)
    train = [_batch(damo, 16, g) for _ in range(40)]
    test = [_batch(damo, 50, torch.Generator().manual_seed(123 + i)) for i in range(2)]
    opt = torch.optim.AdamW([p for p in damo.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.02)
    for step in range(300):
        b = train[step % len(train)]
        loss = damo(b["ids"], b["mask"], b["labels"], damo.media_embeds(damo.encode(**b["media"]))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(damo.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    recall = _recall(damo, test)
    print(f"toy grounding R@0.5 after 300 steps: {recall}")
    assert recall["visual"] >= 0.6 and recall["audio"] >= 0.6
