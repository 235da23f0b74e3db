"""damo-predict: answer a question about a video (or a file of them); print the answer and its spans as JSON.

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

Many questions: queries=FILE.jsonl answers every line of a file, in batches (batch_size=8,
num_workers=2 decoding processes), and prints a summary JSON; a line is {"video", "question"[, "id"]}
(a relative video under video_dir=DIR, default the file's folder) or an official QVHighlights line
{"qid", "query", "vid"} (the video <video_dir>/<vid>.mp4; the test release, which has no windows, is
answered this way). OUT/predictions.jsonl gets one row per line, in file order (id, video,
question, answer, spans, duration, has_audio; "error" instead for a video that does not decode),
streamed to predictions.jsonl.partial until the end; QVHighlights lines also go to
OUT/qvhighlights_submission.jsonl, the official submission format (damo-score qvhighlights reads
it). out=DIR (default: <run folder>/predict/<file stem>).

    damo-predict ckpt=outputs/demo/stage4 queries=my_questions.jsonl video_dir=/data/clips
    damo-predict ckpt=RUN queries=highlight_test_release.jsonl video_dir=/data/qvhighlights/videos

The question is checked and the video decoded before the model is built (minutes for a 7B LM),
so that a typo costs nothing (a query file is read whole and every bad line named first). A
stage 3 or 4 checkpoint answers with timestamps; stage 2 answers without them (the JSON's "stage"
says which answered); stage 1 does not answer questions.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from damo_lit.cli.common import (
    compose, integer_problem, quiet_inference_logs, split_model_overrides, stopped_by_ctrl_c, user_errors,
)  # fmt: skip
from damo_lit.files import not_a_file


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
LITERAL_KEYS = ("video", "question", "queries")


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


def answering_checkpoint(cfg: Any, model_overrides: Sequence[str]) -> tuple[Any, Any]:
    """(the checkpoint as read, the decode parameters of its model): read once, before any model
    is built; a stage 1 checkpoint, which does not answer questions, is refused."""
    from damo_lit.cli.checkpoint import read_checkpoint, with_model_overrides
    from damo_lit.data.decode import DecodeParams

    checkpoint = read_checkpoint(cfg.ckpt)
    meta = checkpoint[0]
    if meta["stage"] == "stage1":
        raise ValueError(f"ckpt={cfg.ckpt}: a stage1 checkpoint (video-text alignment) does not answer questions; "
                         "use one of stage 3 or 4 (stage 2 answers without timestamps)")
    model_cfg = with_model_overrides(meta["model_cfg"], model_overrides)
    params = DecodeParams(num_frames=model_cfg["num_frames"], frame_size=model_cfg["vision"]["image_size"],
                          num_audio_segments=model_cfg["num_audio_segments"],
                          audio_segment_frames=model_cfg["audio"]["segment_frames"],
                          n_mels=model_cfg["audio"]["n_mels"])
    return checkpoint, params


def answering_stage(cfg: Any, checkpoint: Any, model_overrides: Sequence[str]) -> Any:
    """The stage of the checkpoint, built, on the device cfg.accelerator names, for answering."""
    from damo_lit.cli.checkpoint import load_stage

    stage = load_stage(cfg.ckpt, trust_remote_code=bool(cfg.trust_remote_code), model_overrides=model_overrides,
                       checkpoint=checkpoint)
    return stage.to(inference_device(cfg.accelerator)).eval()


def answer_batch(stage: Any, batch: dict[str, Any], max_new_tokens: int) -> list[dict[str, Any]]:
    """The answer of each sample of a question batch: text, spans (seconds), duration, audio."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    batch = move_data_to_device(batch, stage.device)
    with torch.no_grad():
        texts = stage.generate_text(batch, stage.soft_prompt(batch), int(max_new_tokens))
    answers = []
    for i, text in enumerate(texts):
        duration = float(batch["duration"][i])
        spans = stage.span_parser(text, duration)
        answers.append({"answer": text, "spans": [[round(s, 2), round(e, 2)] for s, e in spans],
                        "duration": round(duration, 3), "has_audio": bool(batch["has_audio"][i])})
    return answers


def predict(cfg: Any, video: str | None = None, question: str | None = None,
            model_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Answer `question` about `video` (either one, when not given, from the config's key);
    `model_overrides` (`KEY=VALUE`) change keys of the checkpoint's model config."""
    from damo_lit.data.decode import decode_video
    from damo_lit.data.inference import checked_question, question_batch

    video = video if video is not None else cfg.get("video")
    question = question if question is not None else cfg.get("question")
    missing = [key for key, value in (("video", video), ("question", question)) if value is None]
    if missing:
        raise ValueError(f"missing {' and '.join(k + '=' for k in missing)}: give video=PATH and question=TEXT "
                         "(one question), or queries=FILE.jsonl (many); damo-predict --help says more")
    video, question = Path(str(video)), checked_question(str(question))
    if (problem := not_a_file(video)) is not None:
        raise FileNotFoundError(f"video={video}: {problem}")
    inference_device(cfg.accelerator)  # a GPU this machine lacks: said before the model is built
    checkpoint, params = answering_checkpoint(cfg, model_overrides)
    decoded = decode_video(video, params)
    stage = answering_stage(cfg, checkpoint, model_overrides)
    batch = question_batch(video, question, stage.tokenizer, params, decoded=decoded,
                           prompt_style=cfg.get("prompt_style") or stage.prompt_style)
    (answer,) = answer_batch(stage, batch, int(cfg.max_new_tokens))
    return {"video": str(video), "stage": stage.stage_name, "question": question, **answer}


def default_output(ckpt: Path, queries: Path) -> Path:
    """<run folder>/predict/<queries file stem> (a .ckpt file: <its folder>/predict/<file name>_<stem>)."""
    name = queries.stem if ckpt.is_dir() else f"{ckpt.stem}_{queries.stem}"
    return (ckpt if ckpt.is_dir() else ckpt.parent) / "predict" / name


@contextlib.contextmanager
def _said_where_on_failure(partial: Path, rows: list[dict[str, Any]]) -> Iterator[None]:
    """Stopped by Ctrl-C or an error: say where the answers given so far are."""
    try:
        yield
    except BaseException:
        print(f"damo-predict stopped: the {len(rows)} answers given so far are in {partial}", file=sys.stderr)
        raise


def predict_many(cfg: Any, queries_file: str, model_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Answer every query of a query file (damo_lit.cli.queries) in batches; write
    OUT/predictions.jsonl (streamed to .partial, renamed at the end) and, for QVHighlights lines,
    OUT/qvhighlights_submission.jsonl; return the summary that is printed."""
    from rich.console import Console
    from rich.progress import Progress
    from torch.utils.data import DataLoader

    from damo_lit.cli.eval import output_folder
    from damo_lit.cli.queries import read_queries
    from damo_lit.cli.submission import SUBMISSION, submission_line
    from damo_lit.data.dataset import Collator
    from damo_lit.data.decode import worker_context
    from damo_lit.data.features import VideoFiles, keep_list
    from damo_lit.data.inference import question_item

    problem = integer_problem(cfg, "batch_size", 1) or integer_problem(cfg, "num_workers", 0)
    if problem:
        raise ValueError(problem)
    queries = read_queries(queries_file, cfg.get("video_dir"))
    inference_device(cfg.accelerator)
    checkpoint, params = answering_checkpoint(cfg, model_overrides)
    out = output_folder(Path(cfg.out) if cfg.get("out") else default_output(Path(cfg.ckpt), Path(queries_file)))
    final, partial, submission = out / "predictions.jsonl", out / "predictions.jsonl.partial", out / SUBMISSION
    for old in (final, partial, submission):  # another run's: never left beside this one's
        old.unlink(missing_ok=True)
    stage = answering_stage(cfg, checkpoint, model_overrides)
    style = cfg.get("prompt_style") or stage.prompt_style
    collate = Collator(stage.tokenizer.pad_token_id)
    workers = int(cfg.num_workers)
    videos = VideoFiles([(str(i), str(q.video)) for i, q in enumerate(queries)], params, None)
    loader = DataLoader(videos, batch_size=int(cfg.batch_size), num_workers=workers, collate_fn=keep_list,
                        multiprocessing_context=worker_context() if workers else None)
    rows: list[dict[str, Any]] = []
    with partial.open("w") as handle, Progress(console=Console(stderr=True)) as progress, \
            _said_where_on_failure(partial, rows):
        task = progress.add_task(f"answering {len(queries)} queries", total=len(queries))
        for batch in loader:
            good = [(queries[int(i)], video) for i, video, _ in batch if video is not None]
            answers = iter(answer_batch(stage, collate([
                question_item(str(q.video), str(q.id), q.question, video, stage.tokenizer, style) for q, video in good
            ]), int(cfg.max_new_tokens)) if good else [])  # fmt: skip
            for i, video, reason in batch:
                query = queries[int(i)]
                row = {"id": query.id, "video": str(query.video), "question": query.question}
                row.update(next(answers) if video is not None else {"error": reason})
                rows.append(row)
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            progress.advance(task, len(batch))
    partial.replace(final)
    failed = [r for r in rows if "error" in r]
    official = [(q, r) for q, r in zip(queries, rows) if q.official]
    if official:
        with submission.open("w") as handle:
            for query, row in official:  # a failed video's query: no spans, so the window of a miss
                handle.write(json.dumps(submission_line(query.official, row.get("spans", []))) + "\n")
    for row in failed[:20]:
        print(f"damo-predict: no answer for {row['id']!r}: {row['video']}: {row['error']}", file=sys.stderr)
    if len(failed) > 20:
        print(f"damo-predict: ... and {len(failed) - 20} more without an answer (each row in {final} says why)",
              file=sys.stderr)
    return {"out": str(out), "stage": stage.stage_name, "queries": len(rows), "answered": len(rows) - len(failed),
            "with_spans": sum(bool(r.get("spans")) for r in rows), "failed": len(failed),
            "submission": str(submission) if official else None}


def main(argv: Sequence[str] | None = None) -> None:
    from damo_lit.data.decode import DecodeError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    # besides the common mistakes: an empty question, a GPU this machine lacks, a video that does not decode
    literal, overrides = split_words(argv)
    with user_errors("damo-predict", ValueError, DecodeError), quiet_inference_logs(), \
            stopped_by_ctrl_c("damo-predict", "stopped before the end"):
        model_overrides, overrides = split_model_overrides(overrides, "damo-predict")
        cfg = compose("predict", overrides)
        problem = integer_problem(cfg, "max_new_tokens", 1)
        if problem:
            raise ValueError(problem)
        queries = literal.pop("queries", None)
        if queries is not None and literal:
            raise ValueError(f"queries= answers a file of questions; {' and '.join(sorted(literal))}= ask one: "
                             "give one or the other")
        if queries is not None:
            result = predict_many(cfg, queries, model_overrides)
        else:
            result = predict(cfg, **literal, model_overrides=model_overrides)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
