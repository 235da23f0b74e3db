"""damo-model summary: parameter counts from the config alone (meta device)."""

from __future__ import annotations

import json

import pytest

from damo_lit.cli.model import main, summary_command


@pytest.fixture(scope="module")
def paper() -> dict:
    return summary_command(["model=damo_paper", "format=json"])


def test_paper_summary_numbers(paper: dict, capsys) -> None:
    capsys.readouterr()
    assert main(["summary", "model=damo_paper", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out) == paper  # format=json prints exactly one JSON object
    params = paper["params"]
    assert {"vision", "audio", "global_residual", "fuseformer", "projector", "llm", "total"} <= set(params)
    assert params["llm"] == pytest.approx(7.24e9, rel=0.01)  # Mistral-7B, 32064-token vocabulary
    assert params["vision"] == pytest.approx(0.303e9, rel=0.01)  # CLIP ViT-L/14 vision tower
    assert params["audio"] == pytest.approx(0.088e9, rel=0.01)  # whisper-small's encoder
    assert params["total"] == sum(v for k, v in params.items() if k != "total")
    lora = params["lora"]
    assert lora == 32 * 2 * 32 * (4096 + 4096) + 32 * 2 * 32 * (4096 + 1024)  # r=32 on q,o (4096) and k,v (1024 out)
    trainable = paper["trainable"]
    learned = params["global_residual"] + params["fuseformer"] + params["projector"]
    assert trainable["stage2"] == learned  # towers and LM frozen in the paper
    assert trainable["stage3"] == learned + lora
    assert trainable["stage4"] == params["fuseformer"] + params["projector"] + lora
    heads = paper["stage_heads"]["stage1"]  # the VTM head and the temperature, outside the model
    assert 3e6 < heads < 4e6
    assert trainable["stage1"] == learned + params["text_encoder"] + heads


def test_tokens_per_video_do_not_depend_on_frames(paper: dict, capsys) -> None:
    more = summary_command(["model=damo_paper", "model.num_frames=96", "format=json"])
    assert more["llm_tokens_per_video"] == paper["llm_tokens_per_video"] == 32
    capsys.readouterr()


def test_depth_is_a_knob(capsys) -> None:
    sizes = [summary_command(["model=damo_paper", f"model.fuseformer.depth={d}", "format=json"])["params"]["fuseformer"] for d in (1, 2)]
    assert sizes[0] < sizes[1]
    capsys.readouterr()


def test_tiny_table(capsys, tmp_path) -> None:
    assert main(["summary", f"paths.cache_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "global_residual" in out and "stage3" in out and "LLM tokens per video: 32" in out
    assert not (tmp_path / "tiny_models").exists()  # the summary never builds the tiny folder


def test_bad_format_is_an_error(tmp_path) -> None:
    with pytest.raises(SystemExit, match="format must be table or json"):
        main(["summary", "format=yaml", f"paths.cache_dir={tmp_path}"])


def test_build_tiny_cli(tmp_path, capsys) -> None:
    assert main(["build-tiny", "--out", str(tmp_path / "t")]) == 0
    assert "audio, llm, text_encoder, vision" in capsys.readouterr().out


def test_eva_clip_summary_says_which_architecture_it_counted(paper: dict, capsys) -> None:
    """damo_paper's vision.arch is a CLIP ViT: an eva_clip summary counts that, and says so."""
    assert paper["architectures"]["vision"] == "CLIPVisionModel" and paper["notes"] == []
    eva = summary_command(["model=damo_paper", "model.vision.kind=eva_clip", "format=json"])
    assert eva["params"]["vision"] == paper["params"]["vision"]
    assert eva["architectures"]["vision"] == "CLIPVisionModel"
    assert any("model.vision.kind=eva_clip was counted as CLIPVisionModel" in note for note in eva["notes"])
    capsys.readouterr()
    assert main(["summary", "model=damo_paper", "model.vision.kind=eva_clip"]) == 0
    assert "note: model.vision.kind=eva_clip was counted as CLIPVisionModel" in capsys.readouterr().out
