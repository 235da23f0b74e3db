"""damo-augment: generate temporally grounded QA pairs and dialogues as DaMO JSONL.

Composes conf/augment.yaml with key=value overrides, reads the annotations, runs the chosen
backend over every video not yet done in OUT, validates each item and prints a summary.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

USAGE = """\
usage: damo-augment input=FILE out=FILE.jsonl [format=activitynet|charades_sta|damo]
                    [durations=Charades_v1_test.csv] [backend=template|openai|transformers]
                    [key=value ...]

Generate temporally grounded QA pairs (when does X happen, what happens before / after X, how
long does X last, which comes first) and multi-turn dialogues from paragraph-level annotations,
as DaMO JSONL records (task qa / dialogue; answers refer to `spans` through {span:i},
{start:i}, {end:i}). Every item is validated (inside the video, overlapping its source window,
order right, no literal times, no duplicate question) before it is written.

inputs
  format=activitynet    ActivityNet Captions JSON {vid: {duration, timestamps, sentences}}
  format=charades_sta   Charades-STA lines `VID start end##sentence`; needs durations=CSV
  format=damo           DaMO JSONL; caption / grounding records become the events
backends (conf/backend/)
  backend=template      deterministic templates over the source windows (offline default)
  backend=openai        an OpenAI-compatible endpoint: backend.base_url=... backend.model=...
                        backend.api_key_env=OPENAI_API_KEY backend.concurrency=4; replies are
                        cached by hash in backend.cache_dir, so a rerun costs nothing
  backend=transformers  a local causal LM: backend.model=NAME_OR_PATH backend.device=cuda
useful keys (conf/augment.yaml)
  limit=N                         only the first N videos (N >= 1; a larger N later continues the run)
  questions.types=[when,order]    question kinds; questions.per_video=8
  questions.dialogues_per_video=1 questions.dialogue_turns=3 questions.seed=0
  "video_path='{video}.mp4'"      the records' `video` field from the source id (quoted: Hydra
                                  reads a bare { as the start of a dictionary)
  overwrite=true                  start over; otherwise an interrupted run resumes from
                                  OUT.progress.jsonl and skips the videos already written
  progress=false                  no progress bar
outputs
  OUT                   the records;  OUT.summary.json  items per type, span lengths, rejects
  OUT.progress.jsonl    finished videos (what a rerun skips)

examples
  damo-augment input=val_1.json format=activitynet out=outputs/augment/anet_val.jsonl limit=100
  damo-augment input=charades_sta_test.txt format=charades_sta durations=Charades_v1_test.csv \\
      backend=openai backend.base_url=http://localhost:8000/v1 backend.model=Qwen/Qwen2.5-7B-Instruct \\
      backend.api_key_env=null out=outputs/augment/charades_llm.jsonl
"""


def _fail(message: str) -> "SystemExit":
    return SystemExit(f"damo-augment: {message}")


def _required(cfg: DictConfig, key: str, what: str) -> Any:
    try:
        value = cfg[key]
    except MissingMandatoryValue:
        value = None
    if value in (None, ""):
        raise _fail(f"missing {key}= ({what}; conf/augment.yaml key '{key}'). Run damo-augment --help for usage.")
    return value


def run(cfg: DictConfig, on_video_done: Any = None) -> Any:
    """Run an augmentation from a composed config; returns the Summary."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from damo_lit.augment.backend import BackendError
    from damo_lit.augment.items import QuestionSpec
    from damo_lit.augment.output import OutputError
    from damo_lit.augment.pipeline import run_augment
    from damo_lit.augment.sources import SourceError, load_videos
    from damo_lit.augment.validate import ValidationSettings
    from damo_lit.data.schema import RecordError

    input_path = Path(_required(cfg, "input", "the annotation file"))
    out = Path(_required(cfg, "out", "the JSONL file to write"))
    fmt = str(cfg.format)
    try:
        spec_cfg = OmegaConf.to_container(cfg.questions, resolve=True)
        spec = QuestionSpec(**{**spec_cfg, "types": tuple(spec_cfg["types"])})
        settings = ValidationSettings(**OmegaConf.to_container(cfg.validation, resolve=True))
    except (TypeError, ValueError) as err:
        raise _fail(f"questions / validation config: {err} (known keys: "
                    f"{[f.name for f in fields(QuestionSpec)]} and {[f.name for f in fields(ValidationSettings)]})")
    try:
        source = load_videos(
            input_path, fmt, cfg.durations, video_path=str(cfg.video_path), limit=cfg.limit,
            on_bad_window=str(cfg.on_bad_window), on_bad_record=str(cfg.on_bad_record),
        )
    except (SourceError, RecordError) as err:
        raise _fail(str(err))
    if not source.videos:
        fixes = f" (fixes: {source.fixes})" if source.fixes else ""
        raise _fail(f"input={input_path} holds no video with a usable event window for format={fmt}{fixes}")
    try:
        backend = instantiate(cfg.backend)
    except InstantiationException as err:
        raise _fail(f"could not build backend={cfg.backend.get('_target_')}: {err.__cause__ or err}")
    # the input's path and what it was read with (its digest, format=, on_bad_window=, video_path=)
    fingerprint = {"input": str(input_path.resolve()), "durations": cfg.durations, "source": source.settings}
    try:
        summary = run_augment(
            source.videos,
            backend,
            spec,
            out,
            source_format=fmt,
            fingerprint=fingerprint,
            settings=settings,
            source_fixes=dict(source.fixes),
            overwrite=bool(cfg.overwrite),
            progress=bool(cfg.progress),
            on_video_done=on_video_done,
        )
    except (OutputError, BackendError) as err:
        raise _fail(str(err))
    summary.print()
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Console script entry point: `damo-augment key=value ...` (see --help)."""
    from damo_lit.cli.common import compose, user_errors

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return
    bad = [a for a in args if "=" not in a and not a.startswith(("~", "+"))]
    if bad:
        raise _fail(f"arguments are key=value Hydra overrides, got {bad}. Run damo-augment --help for usage.")
    with user_errors("damo-augment"):
        cfg = compose("augment", args)
    try:
        summary = run(cfg)
    except KeyboardInterrupt:  # run_augment has said what was written and how to resume
        raise SystemExit(130) from None
    problem = summary.problem()  # videos left to retry, or not one record: not a success
    if problem:
        raise _fail(problem)


if __name__ == "__main__":
    main()
