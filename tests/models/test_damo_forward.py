"""DaMO on the tiny config: shapes, the cache path, missing audio, ablations, splicing, generation."""

from __future__ import annotations

import pytest
import torch

from damo_lit.models.damo import DaMO
from tests.models.conftest import make_batch


@pytest.fixture(scope="module")
def damo(make_damo) -> DaMO:
    return make_damo()


def test_forward_backward_shapes(make_damo) -> None:
    damo = make_damo()
    b = make_batch(damo, batch=3)
    media = damo.encode(**b.media())
    cfg = damo.cfg
    assert media.fusion.shape == (3, cfg.fuseformer.fusion_tokens, cfg.fuseformer.hidden)
    assert media.video.shape == (3, cfg.fuseformer.video_queries, cfg.fuseformer.hidden)
    assert media.audio is not None and media.audio.shape == (3, cfg.fuseformer.audio_queries, cfg.fuseformer.hidden)
    embeds = damo.media_embeds(media)
    k = cfg.projector.queries
    assert embeds.shape == (3, k, damo.llm.hidden_size)
    logits = damo(b.input_ids, b.attention_mask, None, embeds).logits  # without labels: every position
    assert logits.shape[:2] == (3, b.input_ids.shape[1] + k - 1)
    loss = damo(b.input_ids, b.attention_mask, b.labels, embeds).loss  # with labels: the loss alone
    assert torch.isfinite(loss)
    damo.zero_grad()
    loss.backward()
    assert damo.residual.video.proj.weight.grad is not None
    assert all(p.grad is not None for p in damo.vision.parameters())  # the tiny towers train
    assert all(p.grad is not None for p in damo.audio.parameters() if p.requires_grad)


@pytest.mark.parametrize("feature_norm", ["none", "batch"])
def test_encode_features_equals_encode(make_damo, feature_norm: str) -> None:
    damo = make_damo(f"residual.feature_norm={feature_norm}").eval()
    b = make_batch(damo, batch=2, seed=1)
    b.frame_mask[1, -5:] = False  # padded frames
    b.audio_mask[0, 3:9] = False
    with torch.no_grad():
        direct = damo.encode(**b.media())
        feats = damo.encoder_features(b.frames, b.audio_mel, b.frame_mask, b.audio_mask)
        assert set(feats) == {"vision_global", "vision_local", "audio_global", "audio_local"}
        assert feats["vision_local"].shape[:2] == b.frames.shape[:2]
        assert torch.count_nonzero(feats["vision_global"][1, -5:]) == 0  # padding never hits the tower
        cached = damo.encode_features(
            **feats,
            frame_times=b.frame_times,
            frame_mask=b.frame_mask,
            audio_times=b.audio_times,
            audio_mask=b.audio_mask,
            duration=b.duration,
        )
    for name in ("fusion", "video", "audio"):
        torch.testing.assert_close(getattr(cached, name), getattr(direct, name), rtol=0, atol=0)


def test_towers_in_chunks_give_the_outputs_and_gradients_of_one_pass(make_damo) -> None:
    """model.{vision,audio}.chunk_size bounds how many items one tower forward sees; the result,
    padding and gradients included, is that of one pass over the whole batch."""
    whole, chunked = make_damo(), make_damo("vision.chunk_size=5", "audio.chunk_size=3")
    assert (chunked.vision.chunk_size, chunked.audio.chunk_size) == (5, 3)
    b = make_batch(whole, batch=2, seed=2)
    b.frame_mask[1, -4:] = False  # 2*N - 4 valid frames: not a multiple of 5
    b.audio_mask[0, 1:4] = False
    calls = []
    hook = chunked.vision.model.register_forward_hook(lambda module, args, output: calls.append(1))
    results = []
    for damo in (whole, chunked):
        damo.zero_grad()
        vision = damo.vision(b.frames, b.frame_mask)
        audio = damo.audio(b.audio_mel, b.audio_mask)
        (vision.local.square().mean() + vision.global_.sum() + audio.local.mean() + audio.global_.square().sum()).backward()
        grads = [p.grad.clone() for p in [*damo.vision.parameters(), *damo.audio.parameters()] if p.grad is not None]
        results.append((vision, audio, grads))
    hook.remove()
    valid_frames = int(b.frame_mask.sum())
    assert len(calls) == -(-valid_frames // 5) > 1
    (v1, a1, g1), (v2, a2, g2) = results
    for x, y in ((v1.global_, v2.global_), (v1.local, v2.local), (a1.global_, a2.global_), (a1.local, a2.local)):
        torch.testing.assert_close(y, x)
    assert torch.count_nonzero(v2.global_[1, -4:]) == 0
    assert len(g1) == len(g2) > 0
    for x, y in zip(g1, g2):  # sums over the chunks add in another order
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


def test_negative_chunk_size_names_the_key(make_damo) -> None:
    from damo_lit.models.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.audio.chunk_size: must be >= 0"):
        make_damo("audio.chunk_size=-1")


@pytest.mark.parametrize("grid", [False, True])
def test_the_residual_pools_in_chunks_under_the_kernel_limit(grid: bool) -> None:
    """CUDA's adaptive pooling refuses 2**31 elements (batch 256 at paper size): the global residual
    pools slices of the rows below a limit, with the outputs and gradients of one pass."""
    import torch.nn.functional as F

    from damo_lit.models import residual

    x = torch.randn(7, 6, 16, 16, requires_grad=True) if grid else torch.randn(7, 6, 50, requires_grad=True)
    calls: list[int] = []

    def pool(part: torch.Tensor) -> torch.Tensor:
        calls.append(part.shape[0])
        return F.adaptive_avg_pool2d(part, 3) if grid else F.adaptive_avg_pool1d(part, 8)

    whole = pool(x)
    limit = 2 * x[0].numel() + 1  # two rows a slice
    chunked = residual.pool_rows_in_chunks(x, pool, max_elements=limit)
    assert calls == [7, 2, 2, 2, 1]
    assert torch.equal(whole, chunked)
    weights = torch.randn_like(whole)
    (g_whole,) = torch.autograd.grad((whole * weights).sum(), x)
    (g_chunked,) = torch.autograd.grad((chunked * weights).sum(), x)
    assert torch.allclose(g_whole, g_chunked)
    assert residual.pool_rows_in_chunks(x, pool) is not None and calls[-1] == 7, "one pass under the real limit"


def test_missing_audio_gives_no_nan(damo: DaMO) -> None:
    b = make_batch(damo, batch=3, seed=2)
    b.audio_mask[:] = False  # the whole batch without audio
    b.audio_mask[2, :4] = True  # ... but one sample with a few segments
    b.audio_mel[0] = float("nan")  # masked segments are never read
    media = damo.encode(**b.media())
    embeds = damo.media_embeds(media)
    out = damo(b.input_ids, b.attention_mask, b.labels, embeds)
    assert torch.isfinite(media.fusion).all() and torch.isfinite(embeds).all()
    assert torch.isfinite(out.loss)
    damo.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in damo.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # a sample without audio differs from one with: the audio stream matters
    assert not torch.allclose(media.audio[0], media.audio[2])


def test_time_anchors_add_time_token_embeddings(damo: DaMO) -> None:
    b = make_batch(damo, batch=2, seed=3)
    with torch.no_grad():
        media = damo.encode(**b.media())
        embeds = damo.media_embeds(media)
        plain = damo.projector.project(damo.projector(media))
    k = damo.cfg.projector.queries
    tok = damo.tokenizer
    # query k stands for relative time (k + 0.5) / K: token "floor(100 (k + 0.5) / K)"
    expected_ids = [tok.convert_tokens_to_ids(str(int(100 * (i + 0.5) / k))) for i in range(k)]
    time_embeds = damo.llm.embed_tokens(torch.tensor(expected_ids))
    torch.testing.assert_close(embeds - plain, time_embeds.expand(2, -1, -1))


def test_splice_places_media_and_masks_labels(damo: DaMO) -> None:
    b = make_batch(damo, batch=3, seed=4)
    k = damo.cfg.projector.queries
    media = torch.randn(3, k, damo.llm.hidden_size)
    s = damo.splice(b.input_ids, b.attention_mask, media, b.labels)
    video_id = damo.llm.video_token_id
    t = b.input_ids.shape[1]
    assert s.inputs_embeds.shape == (3, t + k - 1, damo.llm.hidden_size)
    for i in range(3):
        pos = int((b.input_ids[i] == video_id).nonzero())
        torch.testing.assert_close(s.inputs_embeds[i, pos : pos + k], media[i])
        assert (s.labels[i, pos : pos + k] == -100).all()
        assert (s.attention_mask[i, pos : pos + k] == 1).all()
        # text after the placeholder moved by K - 1, labels and mask with it
        assert torch.equal(s.labels[i, pos + k :], b.labels[i, pos + 1 :])
        assert torch.equal(s.attention_mask[i, pos + k :], b.attention_mask[i, pos + 1 :])
        torch.testing.assert_close(s.inputs_embeds[i, :pos], damo.llm.embed_tokens(b.input_ids[i, :pos]))
    assert int((s.labels != -100).sum()) == int((b.labels != -100).sum())


def test_the_loss_at_labelled_positions_is_the_full_pass_loss(make_damo) -> None:
    """The LM head runs only where the next token is labelled; the loss and every gradient are
    those of transformers' own loss over full logits. A batch without any label gives 0, not NaN."""
    damo = make_damo("llm.length_buckets=1")
    b = make_batch(damo, batch=4, seed=5)
    media = torch.randn(4, damo.cfg.projector.queries, damo.llm.hidden_size, requires_grad=True)
    labelled = int((b.labels != -100).sum())
    assert 0 < labelled < b.labels.numel() // 2, "most positions carry no label"

    def loss_and_grads(full: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        damo.zero_grad()
        media.grad = None
        if full:
            s = damo.llm.splice(b.input_ids, b.attention_mask, media, b.labels)
            loss = damo.llm.model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                  position_ids=s.position_ids, labels=s.labels, use_cache=False).loss  # fmt: skip
        else:
            loss = damo(b.input_ids, b.attention_mask, b.labels, media).loss
        loss.backward()
        return loss.detach(), [media.grad.clone(), *(p.grad.clone() for p in damo.llm.parameters() if p.grad is not None)]

    kept: list[int] = []
    hook = damo.llm.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: kept.append(args[0].shape[1]))
    loss, grads = loss_and_grads(full=False)
    hook.remove()
    full_loss, full_grads = loss_and_grads(full=True)
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(full_grads) > 1
    for mine, theirs in zip(grads, full_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    width = b.input_ids.shape[1] + damo.cfg.projector.queries - 1
    assert kept and kept[0] < width // 2, f"the LM head saw {kept[0]} of {width} positions"

    none = torch.full_like(b.labels, -100)
    empty = damo(b.input_ids, b.attention_mask, none, media).loss
    assert float(empty) == 0.0
    empty.backward()


def test_length_buckets_give_the_loss_and_gradients_of_one_pass(make_damo) -> None:
    """Passes over groups of rows of similar length, each cut after its longest row, lose nothing:
    the loss and every gradient equal those of one padded pass."""
    damo = make_damo("llm.length_buckets=1")
    b = make_batch(damo, batch=5, seed=8)
    lengths = b.attention_mask.sum(1)
    assert lengths.min() < lengths.max(), "rows of different lengths, so that cutting removes padding"
    media = torch.randn(5, damo.cfg.projector.queries, damo.llm.hidden_size, requires_grad=True)

    def loss_and_grads(buckets: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        damo.llm.length_buckets = buckets
        damo.zero_grad()
        media.grad = None
        loss = damo(b.input_ids, b.attention_mask, b.labels, media).loss
        loss.backward()
        grads = [p.grad.clone() for p in damo.llm.parameters() if p.grad is not None]
        return loss.detach(), [media.grad.clone(), *grads]

    loss, grads = loss_and_grads(1)
    for buckets in (2, 3, 5, 9):
        other, other_grads = loss_and_grads(buckets)
        torch.testing.assert_close(other, loss, rtol=1e-5, atol=1e-6)
        assert len(other_grads) == len(grads) > 1
        for g1, g2 in zip(grads, other_grads):
            torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception, match=r"model.llm.length_buckets: expected an integer >= 1, got 0"):
        make_damo("llm.length_buckets=0")


def test_splice_rejects_sequences_without_one_video_token(damo: DaMO) -> None:
    b = make_batch(damo, batch=2, seed=5)
    ids = b.input_ids.clone()
    ids[1][ids[1] == damo.llm.video_token_id] = damo.tokenizer.unk_token_id
    media = torch.zeros(2, damo.cfg.projector.queries, damo.llm.hidden_size)
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] hold \[0\] <video> tokens"):
        damo.splice(ids, b.attention_mask, media)


def test_generate_decodes_and_left_padding_does_not_change_answers(damo: DaMO) -> None:
    b = make_batch(damo, batch=3, seed=6)
    damo.eval()
    with torch.no_grad():
        embeds = damo.media_embeds(damo.encode(**b.media()))
    new = damo.generate(b.prompt_ids, b.prompt_attention_mask, embeds, max_new_tokens=6)
    assert new.dtype == torch.long and new.shape[0] == 3 and 1 <= new.shape[1] <= 6
    text = damo.tokenizer.batch_decode(new, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in text) and any(t.strip() for t in text)
    # a sample generated alone (no padding) gets the same greedy tokens as inside the padded batch
    i = int(b.prompt_attention_mask.sum(1).argmin())  # the most left-padded prompt
    keep = b.prompt_attention_mask[i].bool()
    alone = damo.generate(b.prompt_ids[i : i + 1, keep], b.prompt_attention_mask[i : i + 1, keep], embeds[i : i + 1], max_new_tokens=6)
    n = alone.shape[1]
    assert torch.equal(alone[0], new[i, :n])
    damo.train()


def test_generate_differs_with_media(damo: DaMO) -> None:
    """The soft prompt reaches the LM: different media give different next-token scores."""
    b = make_batch(damo, batch=1, seed=7)
    with torch.no_grad():
        e1 = damo.media_embeds(damo.encode(**b.media()))
        out1 = damo(b.input_ids, b.attention_mask, None, e1).logits
        out2 = damo(b.input_ids, b.attention_mask, None, e1 + 1.0).logits
    assert not torch.allclose(out1[:, -1], out2[:, -1])


@pytest.mark.parametrize(
    "overrides, audio",
    [
        (("audio.enabled=false",), False),
        (("residual.enabled=false",), True),
        (("fuseformer.kind=concat",), True),
        (("fuseformer.kind=concat", "audio.enabled=false"), False),
        (("projector.inputs=fusion", "projector.time_anchors=false", "fuseformer.time_anchors=false"), True),
        (("fuseformer.time_bias=false", "projector.time_bias=false"), True),
        (("fuseformer.query_init=learned", "fuseformer.layer_scale=null", "residual.feature_norm=none"), True),
        (("fuseformer.query_init=pooled", "audio.enabled=false"), False),
    ],
)
def test_ablations_run(make_damo, overrides: tuple[str, ...], audio: bool) -> None:
    damo = make_damo(*overrides)
    assert damo.has_audio is audio
    b = make_batch(damo, batch=2, seed=8)
    b.audio_mask[1] = False
    media = damo.encode(**b.media())
    assert (media.audio is not None) is audio
    assert media.fusion.shape[1] == damo.cfg.fuseformer.fusion_tokens
    out = damo(b.input_ids, b.attention_mask, b.labels, damo.media_embeds(media))
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_residual_switch_removes_the_global_term(make_damo) -> None:
    on, off = make_damo(), make_damo("residual.enabled=false")
    assert on.residual.video.ffn is not None and off.residual.video.ffn is None
    n_on = sum(p.numel() for p in on.residual.parameters())
    n_off = sum(p.numel() for p in off.residual.parameters())
    assert n_off < n_on


def test_depth_changes_fuseformer_size(make_damo) -> None:
    sizes = {d: sum(p.numel() for p in make_damo(f"fuseformer.depth={d}").fuseformer.parameters()) for d in (1, 2, 4)}
    assert sizes[1] < sizes[2] < sizes[4]
    assert sizes[4] - sizes[2] == 2 * (sizes[2] - sizes[1])  # each block adds the same


def test_uneven_sampling_and_duration_change_the_stream_tokens(damo: DaMO) -> None:
    """Times reach the stream tokens through the time embedding: the same pixels and audio at
    other times or in a longer video give other tokens (asserted on the residual's streams, as
    time_bias and time_anchors carry times further on by other ways)."""
    b = make_batch(damo, batch=1, seed=9)
    with torch.no_grad():
        feats = damo.encoder_features(b.frames, b.audio_mel, b.frame_mask, b.audio_mask)

        def streams(frame_times: torch.Tensor, audio_times: torch.Tensor, duration: torch.Tensor) -> list[torch.Tensor]:
            video = damo.residual.video_stream(feats["vision_global"], feats["vision_local"], frame_times, b.frame_mask, duration)
            audio = damo.residual.audio_stream(feats["audio_global"], feats["audio_local"], audio_times, b.audio_mask, duration)
            return [video.tokens, audio.tokens]

        base = streams(b.frame_times, b.audio_times, b.duration)
        shifted = streams(b.frame_times**1.1, b.audio_times**1.1, b.duration)  # uneven sampling
        longer = streams(b.frame_times, b.audio_times, b.duration * 2)
    for other in (shifted, longer):
        for mine, theirs in zip(base, other):
            assert not torch.allclose(mine, theirs)


def test_frames_are_resized_to_the_tower(damo: DaMO) -> None:
    b = make_batch(damo, batch=1, seed=10)
    big = torch.nn.functional.interpolate(b.frames[0].float(), size=(96, 80)).round().to(torch.uint8)[None]
    with torch.no_grad():
        out = damo.vision(big)
    assert out.local.shape == (1, b.frames.shape[1], damo.vision.num_tokens, damo.vision.dim)


def test_bad_mel_length_names_the_config_key(damo: DaMO) -> None:
    b = make_batch(damo, batch=1, seed=11)
    with pytest.raises(ValueError, match="model.audio.segment_frames"):
        damo.encode(**{**b.media(), "audio_mel": b.audio_mel[..., :-2]})


def test_masked_batch_norm_ignores_padding_and_keeps_running_stats() -> None:
    from damo_lit.models.layers import MaskedBatchNorm

    norm = MaskedBatchNorm(3, momentum=1.0)
    x = torch.randn(4, 5, 3) * 3 + 7
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 3:] = False
    padded = x.clone()
    padded[~mask] = 1e6  # padding must not move the statistics
    y = norm(padded, mask)
    valid = y[mask]
    torch.testing.assert_close(valid.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.running_mean, x[mask].mean(0))
    norm.eval()  # eval: the running statistics, whatever the batch
    torch.testing.assert_close(norm(x[:1, :2]), (x[:1, :2] - norm.running_mean) / (norm.running_var + 1e-5).sqrt())


def test_zero_layer_scale_makes_the_fuseformer_start_as_pooling(make_damo) -> None:
    """query_init=pooled + layer_scale=0: every block is the identity, queries hold their time bin."""
    from damo_lit.models.layers import masked_adaptive_pool

    damo = make_damo("fuseformer.query_init=pooled", "fuseformer.layer_scale=0.0").eval()
    b = make_batch(damo, batch=2, seed=12)
    b.audio_mask[1] = False
    with torch.no_grad():
        feats = damo.encoder_features(b.frames, b.audio_mel, b.frame_mask, b.audio_mask)
        video = damo.residual.video_stream(feats["vision_global"], feats["vision_local"], b.frame_times, b.frame_mask, b.duration)
        audio = damo.residual.audio_stream(feats["audio_global"], feats["audio_local"], b.audio_times, b.audio_mask, b.duration)
        media = damo.fuseformer(video, audio, b.duration)
        fuse = damo.fuseformer
        expected_video = fuse.norm(fuse.video_queries(2)[0] + masked_adaptive_pool(video.tokens, video.mask, None, 32)[0])
        expected_audio = fuse.norm(fuse.audio_queries(2)[0] + masked_adaptive_pool(audio.tokens, audio.mask, None, 32)[0])
    torch.testing.assert_close(media.video, expected_video)
    torch.testing.assert_close(media.audio, expected_audio)
    # the silent sample's audio queries hold nothing but the learned queries
    torch.testing.assert_close(media.audio[1], fuse.norm(fuse.audio_queries(1)[0][0]))


def test_projected_tokens_start_at_the_llm_embedding_scale(damo: DaMO) -> None:
    """With match_embedding_scale the soft tokens are as large as word embeddings, so that the
    time-token embeddings added to them are not drowned (they were 30x smaller without it)."""
    assert damo.cfg.projector.match_embedding_scale
    b = make_batch(damo, batch=2, seed=5)
    with torch.no_grad():
        soft = damo.projector.project(damo.projector(damo.encode(**b.media())))
        words = damo.llm.model.get_input_embeddings().weight
    soft_rms = soft.pow(2).mean().sqrt().item()
    word_rms = words.pow(2).mean().sqrt().item()
    assert 0.5 < soft_rms / word_rms < 2.0


def test_question_aware_projector_reads_the_prompt(make_damo) -> None:
    """With projector.question_aware the soft tokens depend on the question; without prompt ids
    the model says what it needs instead of silently ignoring the question."""
    damo = make_damo("projector.question_aware=true").eval()
    b = make_batch(damo, batch=2, seed=6)
    with torch.no_grad():
        media = damo.encode(**b.media())
        asked = damo.media_embeds(media, prompt_ids=b.prompt_ids, prompt_mask=b.prompt_attention_mask)
        other = b.prompt_ids.roll(1, 0)  # the other sample's question, same video
        asked_other = damo.media_embeds(media, prompt_ids=other, prompt_mask=b.prompt_attention_mask.roll(1, 0))
    assert not torch.allclose(asked, asked_other)
    with pytest.raises(ValueError, match="prompt_ids"):
        damo.media_embeds(media)


def test_number_tokens_start_as_sinusoids_of_their_value(damo: DaMO) -> None:
    """The tiny LM's "0".."99" rows: neighbours alike, far numbers not, at the other rows' scale."""
    tok = damo.tokenizer
    for table in (damo.llm.model.get_input_embeddings().weight, damo.llm.model.get_output_embeddings().weight):
        rows = table[[tok.convert_tokens_to_ids(str(k)) for k in (40, 41, 90)]].detach()
        cos = torch.nn.functional.cosine_similarity
        assert cos(rows[0], rows[1], dim=0) > 0.8
        assert cos(rows[0], rows[2], dim=0) < 0.5
        ratio = rows.pow(2).mean().sqrt() / table.detach().pow(2).mean().sqrt()
        assert 0.7 < float(ratio) < 1.3


def test_pooled_projector_queries_carry_their_time_bins_content(make_damo) -> None:
    """projector.query_init=pooled: soft token k starts from the fusion tokens of its time bin,
    so changing the fused content of one bin changes that soft token most."""
    damo = make_damo("projector.query_init=pooled").eval()
    b = make_batch(damo, batch=1, seed=8)
    with torch.no_grad():
        media = damo.encode(**b.media())
        before = damo.projector(media)
        k = damo.cfg.projector.queries
        bins = media.fusion.shape[1]
        assert bins == k  # tiny: one fusion token per soft token
        media.fusion[:, 5] += 10.0
        change = (damo.projector(media) - before).norm(dim=-1)[0]
    assert int(change.argmax()) == 5
    with pytest.raises(ValueError, match="query_init"):
        make_damo("projector.query_init=mean")


@pytest.mark.parametrize("towers", ["pretrained", "random-init"])
def test_encoders_alone_are_the_models_towers(tiny_cache, towers: str) -> None:
    """build_encoders (what damo-cache runs) has no LLM, yet the very towers of build_damo: the same
    state and features, also when the towers are random-initialised from the seed."""
    from damo_lit.data.features import tower_digest
    from damo_lit.models.damo import build_damo, build_encoders
    from tests.models.conftest import tiny_config

    extra = ["model.vision.name_or_path=null", "model.audio.name_or_path=null"] if towers == "random-init" else []
    cfg = tiny_config(tiny_cache, extra)
    damo, encoders = build_damo(cfg).eval(), build_encoders(cfg)
    assert not hasattr(encoders, "llm") and not any(p.requires_grad for p in encoders.parameters())
    assert {k.split(".")[0] for k in encoders.state_dict()} == {"vision", "audio"}
    assert tower_digest(encoders) == tower_digest(damo)
    b = make_batch(damo, batch=2)
    with torch.no_grad():
        want = damo.encoder_features(b.frames, b.audio_mel, b.frame_mask, b.audio_mask)
        got = encoders.encoder_features(b.frames, b.audio_mel, b.frame_mask, b.audio_mask)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
