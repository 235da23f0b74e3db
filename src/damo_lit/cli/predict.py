"""damo-predict: answer one question about one video; print the answer and its spans as JSON.

    damo-predict ckpt=outputs/demo/stage4 video=clip.mp4 question="when does the dog bark?"
    damo-predict ckpt=outputs/demo/stage4 "video=my clip (1).mp4" "question=when's the first bark (and why)?"

`video=` and `question=` are taken literally: everything after the first '=' is the value (commas,
quotes, apostrophes, brackets, '=' and spaces included; quote the word for the shell only), not
parsed as Hydra overrides. Every other word is a Hydra override of conf/predict.yaml.

Works on any MP4, including one without an audio track (the audio is masked, not an error).
Spans are in seconds, parsed from the answer in the checkpoint's timestamp format. Other keys:
accelerator=auto|cpu|gpu (auto: a GPU when there is one), max_new_tokens=24,
prompt_style=plain|chat (chat: the tokenizer's chat template, for real LLMs; default: the one the
checkpoint was trained with), trust_remote_code=true (build a checkpoint whose stored model config
runs code shipped with its weights, e.g. EVA-CLIP), model.KEY=VALUE (a key of the checkpoint's
model config, e.g. model.llm.name_or_path=/local/copy where the LM lives elsewhere here).

The question is checked and the video decoded before the model is built (minutes for a 7B LM),
so that a typo costs nothing. A stage 3 or 4 checkpoint answers with timestamps; stage 2 answers
without them (the JSON's "stage" says which answered); stage 1 does not answer questions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from damo_lit.cli.common import compose, quiet_inference_logs, split_model_overrides, user_errors


def inference_device(accelerator: str) -> "torch.device":
    """`accelerator` (cpu, gpu, cuda, auto) as the device to answer on: auto takes a GPU when there
    is one; asking for a GPU where there is none is an error, not a silent CPU run."""
    import torch

    choice = str(accelerator).lower()
    if choice not in ("cpu", "gpu", "cuda", "auto"):
        raise ValueError(f"accelerator={accelerator}: expected cpu, gpu, cuda or auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator={accelerator}: this machine has no CUDA GPU (use accelerator=cpu or auto)")
    return torch.device("cuda" if choice in ("gpu", "cuda") else "cpu")


# Words whose value is taken as it is, outside Hydra's override grammar (which would choke on a
# question's commas, quotes and brackets, or on a file name with spaces and parentheses).
LITERAL_KEYS = ("video", "question")


def split_words(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The command line as (literal values, Hydra overrides): a `video=` or `question=` word
    (`+`/`++` forms too) gives everything after its first '=' as the value, unparsed; every other
    word is a Hydra override. A key given twice keeps its last value."""
    literal: dict[str, str] = {}
    overrides: list[str] = []
    for word in argv:
        key, sep, value = word.partition("=")
        if sep and key.lstrip("+") in LITERAL_KEYS:
            literal[key.lstrip("+")] = value
        else:
            overrides.append(word)
    return literal, overrides


def predict(cfg: Any, video: str | None = None, question: str | None = None,
            model_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Answer `question` about `video` (either one, when not given, from the config's key);
    `model_overrides` (`KEY=VALUE`) change keys of the checkpoint's model config."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from damo_lit.cli.checkpoint import load_stage, read_checkpoint, with_model_overrides
    from damo_lit.data.decode import DecodeParams, decode_video
    from damo_lit.data.inference import checked_question, question_batch

    video = Path(cfg.video if video is None else video)
    question = checked_question(str(cfg.question if question is None else question))
    if not video.is_file():
        raise FileNotFoundError(f"video={video}: no such file")
    device = inference_device(cfg.accelerator)
    checkpoint = read_checkpoint(cfg.ckpt)  # the stage and model config, before the model is built
    meta = checkpoint[0]
    if meta["stage"] == "stage1":
        raise ValueError(f"ckpt={cfg.ckpt}: a stage1 checkpoint (video-text alignment) does not answer questions; "
                         "use one of stage 3 or 4 (stage 2 answers without timestamps)")
    model_cfg = with_model_overrides(meta["model_cfg"], model_overrides)
    params = DecodeParams(num_frames=model_cfg["num_frames"], frame_size=model_cfg["vision"]["image_size"],
                          num_audio_segments=model_cfg["num_audio_segments"],
                          audio_segment_frames=model_cfg["audio"]["segment_frames"],
                          n_mels=model_cfg["audio"]["n_mels"])
    decoded = decode_video(video, params)
    stage = load_stage(cfg.ckpt, trust_remote_code=bool(cfg.trust_remote_code), model_overrides=model_overrides,
                       checkpoint=checkpoint)
    stage = stage.to(device)
    batch = question_batch(video, question, stage.tokenizer, params, decoded=decoded,
                           prompt_style=cfg.get("prompt_style") or stage.prompt_style)
    batch = move_data_to_device(batch, device)
    with torch.no_grad():
        embeds = stage.soft_prompt(batch)
        answer = stage.generate_text(batch, embeds, int(cfg.max_new_tokens))[0]
    duration = float(batch["duration"][0])
    spans = stage.span_parser(answer, duration)
    return {"video": str(video), "stage": stage.stage_name, "question": question, "answer": answer,
            "spans": [[round(s, 2), round(e, 2)] for s, e in spans], "duration": round(duration, 3),
            "has_audio": bool(batch["has_audio"][0])}


def main(argv: Sequence[str] | None = None) -> None:
    from damo_lit.data.decode import DecodeError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    # besides the common mistakes: an empty question, a GPU this machine lacks, a video that does not decode
    literal, overrides = split_words(argv)
    with user_errors("damo-predict", ValueError, DecodeError), quiet_inference_logs():
        model_overrides, overrides = split_model_overrides(overrides, "damo-predict")
        result = predict(compose("predict", overrides), **literal, model_overrides=model_overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
