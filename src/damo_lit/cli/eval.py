"""damo-eval: run a checkpoint over a split; write predictions JSONL and a metrics JSON beside it.

    damo-eval ckpt=outputs/demo/stage3 [data=synthetic] [split=test] [out=DIR] [limit=N]

Stage 3 and 4 checkpoints generate an answer for every query, parse its spans and score them
(predictions.jsonl: id, question, answer, pred_spans, gt_spans, duration, modality, iou; the
format damo-score grounding reads). Stage 1 and 2 checkpoints report their test figures
(retrieval, loss); stage 1 also writes each caption's text-to-video result (predictions.jsonl:
id, caption, video, rank, top_videos). On QVHighlights queries (data=qvhighlights) the answers
are also written as an official submission (qvhighlights_submission.jsonl) and scored with the
official evaluator (val/MR-full-R1@0.5, ...). metrics.json also counts the split's annotation fix-ups
(`fixes`, under data.on_bad_window / on_bad_record) and decode failures, and records the
settings (limit, prompt_style, batch_size, max_new_tokens, annotation files). stdout carries the
metrics JSON alone; progress bars and notes go to stderr.

Answers are written to predictions.jsonl.partial as they come and renamed at the end: an
evaluation stopped by Ctrl-C or a crash keeps what it answered. A new evaluation into the
same folder first removes the old predictions.

Keys (conf/eval.yaml): ckpt (run folder or .ckpt), data=<config> and data.* keys, split=val|test,
tasks=[grounding,...] (default: the stage's own), limit=N (the first N samples; of a mixture, each source its share),
batch_size=16, max_new_tokens=24, accelerator=auto|cpu|gpu, prompt_style=plain|chat (default:
the one the checkpoint was trained with), trust_remote_code=true, model.KEY=VALUE (a key of
the checkpoint's model config, e.g. model.llm.name_or_path=/local/copy), out=DIR (default:
<run folder>/eval/<data>_<split>, or <folder>/eval/<ckpt name>_<data>_<split> for a .ckpt
file, with _<tasks> and _first<N> added when tasks= or limit= are given).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from damo_lit.cli.common import (
    CONF_DIR, compose, integer_problem, quiet_inference_logs, split_model_overrides, unwritable_reason, user_errors,
)  # fmt: skip
from damo_lit.cli.predict import inference_device

TOP_VIDEOS = 10  # retrieved videos listed per stage 1 query


def stage_eval_tasks(stage_name: str) -> list[str]:
    """The record tasks a stage evaluates in training (`data.eval_tasks` of conf/stage/<stage>_*.yaml),
    so that damo-eval reproduces the figures the run logged."""
    from omegaconf import OmegaConf

    (path,) = sorted((CONF_DIR / "stage").glob(f"{stage_name}_*.yaml"))
    return list(OmegaConf.load(path).data.eval_tasks)


def grounding_figures(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """GroundingMetrics over predicted rows (top-1 span of each), NaN figures left out."""
    from damo_lit.metrics import GroundingMetrics

    metric = GroundingMetrics()
    metric.update([tuple(r["pred_spans"][0]) if r["pred_spans"] else None for r in rows],
                  [r["gt_spans"] for r in rows], [r["modality"] for r in rows])
    return {k: round(float(v), 6) for k, v in metric.compute().items() if not math.isnan(float(v))}


def retrieval_rows(queries: Sequence[tuple[str, str, str]], sim: Any, top_k: int = TOP_VIDEOS) -> list[dict[str, Any]]:
    """One row per (id, caption, video) query of a text x video similarity matrix whose pairs are on
    its diagonal: the rank of the query's own video (as RetrievalMetrics counts it, ties against
    it) and the `top_k` best-scoring videos, best first."""
    import numpy as np

    from damo_lit.metrics.retrieval import gold_ranks

    scores = np.asarray(sim, dtype=np.float64)
    ranks = gold_ranks(scores)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return [{"id": qid, "caption": caption, "video": video, "rank": int(rank),
             "top_videos": [queries[j][2] for j in top]}
            for (qid, caption, video), rank, top in zip(queries, ranks, best)]


def retrieval_callback() -> Any:
    """A callback that keeps stage 1's per-query results in `.rows`, from the embeddings its
    RetrievalMetrics gathered over the test set (nothing is encoded twice). Lightning runs a
    callback's on_test_epoch_end before the module's, which scores the metric and resets it.
    Built here so that importing this module (`--help`) does not import Lightning."""
    from lightning.pytorch.callbacks import Callback

    class RetrievalRows(Callback):
        def __init__(self) -> None:
            self.queries: list[tuple[str, str, str]] = []  # (id, caption, video) in the metric's row order
            self.rows: list[dict[str, Any]] = []

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                              dataloader_idx: int = 0) -> None:
            real = [not p for p in batch["padding"].tolist()]  # EvalSampler's repeats are not scored
            queries = zip(batch["sample_id"], batch["caption"], batch["video"])
            self.queries += [query for query, keep in zip(queries, real) if keep]

        def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            metric = getattr(pl_module, "retrieval", None)
            if metric is not None and int(metric.dim):
                self.rows = retrieval_rows(self.queries, paired_similarity(metric, len(self.queries)))

    return RetrievalRows()


def paired_similarity(metric: Any, queries: int) -> Any:
    """The text x video matrix a RetrievalMetrics scores (its gathered embeddings), as numpy."""
    sim = metric.similarity()
    if sim.shape[0] != queries:
        raise RuntimeError(f"damo-eval: the retrieval metric holds {sim.shape[0]} rows for {queries} queries")
    return sim.cpu().numpy()


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def split_fixes(datamodule: Any, split: str) -> dict[str, int]:
    """The split's annotation fix-ups and drops by kind (zeros too), also named on stderr: an
    evaluation set that a fix-up shrank or changed is never silently taken for the whole one."""
    from damo_lit.data.sources.base import describe_fixes

    fixes = dict(datamodule.fixes().get(split, {}))
    print(f"data {datamodule.name} {split}: annotation fix-ups and drops: {describe_fixes(fixes) or 'none'}",
          file=sys.stderr)
    return fixes


PREDICTIONS = "predictions.jsonl"


def default_output(ckpt: Path, data: str, split: str, tasks: Sequence[str] | None, limit: int | None) -> Path:
    """<run folder>/eval/<data>_<split> (a .ckpt file: <its folder>/eval/<file name>_<data>_<split>),
    with the tasks and the limit when given: runs of other settings never overwrite each other."""
    name = f"{data}_{split}" if ckpt.is_dir() else f"{ckpt.stem}_{data}_{split}"
    if tasks:
        name += "_" + "+".join(tasks)
    if limit is not None:
        name += f"_first{limit}"
    return (ckpt if ckpt.is_dir() else ckpt.parent) / "eval" / name


def prediction_writer(path: Path) -> Any:
    """A callback that appends each predicted batch's rows to `path`.partial (flushed) and keeps
    them in `.rows`; `finish()` renames the file to `path`. Stopped by Ctrl-C or an error, the
    partial file keeps every answer given so far, and stderr says where it is."""
    from lightning.pytorch.callbacks import Callback

    class PredictionWriter(Callback):
        def __init__(self) -> None:
            self.partial = path.with_name(path.name + ".partial")
            self.rows: list[dict[str, Any]] = []
            self.handle: Any = None

        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            self.handle = self.partial.open("w")

        def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                 dataloader_idx: int = 0) -> None:
            for row in outputs:
                self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()
            self.rows += outputs

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if self.handle is not None:
                self.handle.close()
                print(f"damo-eval stopped: the {len(self.rows)} answers given so far are in {self.partial}",
                      file=sys.stderr)

        def finish(self) -> list[dict[str, Any]]:
            self.handle.close()
            self.partial.replace(path)
            return self.rows

    return PredictionWriter()


def output_folder(path: Path) -> Path:
    """Make damo-eval's output folder; one that cannot be made (a file in the way) is a ValueError
    naming out=, before anything slow has run when the user gave it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out={path}: cannot make the output folder ({unwritable_reason(path, err)}); "
                         "expected a folder, or a path where one can be made") from None
    return path


def qvhighlights_figures(rows: Sequence[dict[str, Any]], datamodule: Any, split: str, out: Path) -> dict[str, Any] | None:
    """For answers to QVHighlights queries: write them as an official submission into `out` and
    score it with the official evaluator against the split's own file (the queries answered,
    so a limit= or dropped records score the rest). None when no row is a QVHighlights query."""
    from damo_lit.cli.score import json_safe, score_qvhighlights
    from damo_lit.cli.submission import SUBMISSION, qvhighlights_submission

    (out / SUBMISSION).unlink(missing_ok=True)  # another evaluation's: never left beside this one's
    lines = qvhighlights_submission(rows, datamodule.splits[split].samples)
    if not lines:
        return None
    write_rows(out / SUBMISSION, lines)
    files = [spec.annotation_file(split) for spec in datamodule.specs if spec.format == "qvhighlights"]
    if len(files) != 1:
        print(f"damo-eval: {out / SUBMISSION} written; not scored, as the answers come from {len(files)} "
              "QVHighlights files (damo-score qvhighlights --allow-partial scores it against one)", file=sys.stderr)
        return None
    # a length range without queries gives NaN figures: null, as damo-score writes them
    return json_safe(score_qvhighlights(out / SUBMISSION, files[0], match_number=False))


def run_eval(cfg: Any, model_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate cfg.ckpt as conf/eval.yaml describes; `model_overrides` (`KEY=VALUE`) change keys
    of the checkpoint's model config."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from damo_lit.cli.checkpoint import load_stage
    from damo_lit.data.collection import check_tasks
    from damo_lit.data.datamodule import NoSamplesError
    from damo_lit.data.schema import EVALUATED_BY_SPAN
    from damo_lit.stages.progress import progress_bar

    # damo-eval's own keys are checked here, so that the message names the key the user typed
    # (the datamodule would name data.eval_tasks and data.max_samples_per_split).
    if cfg.split not in ("val", "test"):
        raise SystemExit(f"damo-eval: split must be val or test, got {cfg.split!r}")
    if cfg.limit is not None and (isinstance(cfg.limit, bool) or not isinstance(cfg.limit, int) or cfg.limit < 1):
        raise SystemExit(f"damo-eval: limit must be an integer >= 1 or null (every sample), got {cfg.limit!r}")
    problem = integer_problem(cfg, "max_new_tokens", 1) or integer_problem(cfg, "batch_size", 1)
    if problem:
        raise SystemExit(f"damo-eval: {problem}")
    try:
        given = check_tasks([cfg.tasks] if isinstance(cfg.tasks, str) else cfg.tasks, "tasks") if cfg.tasks else None
    except ValueError as err:
        raise SystemExit(f"damo-eval: {err}") from None
    inference_device(cfg.accelerator)  # a GPU this machine lacks: said now, not by Lightning after the set-up
    if cfg.out:
        output_folder(Path(cfg.out))
    stage = load_stage(cfg.ckpt, trust_remote_code=bool(cfg.trust_remote_code), model_overrides=model_overrides)
    if model_overrides:
        print(f"damo-eval: the checkpoint's model config with model.{', model.'.join(model_overrides)}", file=sys.stderr)
    ckpt = Path(cfg.ckpt)
    generates = hasattr(stage, "max_new_tokens")  # stages 3 and 4: answers with spans, scored
    unscorable = [t for t in (given or []) if generates and t not in EVALUATED_BY_SPAN]
    if unscorable:  # their rows would count as misses in every grounding figure
        raise SystemExit(f"damo-eval: tasks={','.join(unscorable)}: a {stage.stage_name} checkpoint is scored on "
                         f"the time spans of its answers, which only {' and '.join(EVALUATED_BY_SPAN)} records hold")
    tasks = list(given) if given else stage_eval_tasks(stage.stage_name)
    prompt_style = cfg.prompt_style or stage.prompt_style
    if prompt_style != stage.prompt_style:
        print(f"damo-eval: the checkpoint was trained with prompt_style={stage.prompt_style}; asking with "
              f"prompt_style={prompt_style} as told", file=sys.stderr)
    with open_dict(cfg):
        cfg.model = OmegaConf.create(stage.model_cfg)
        cfg.data.prompt_style = prompt_style
    datamodule = instantiate(cfg.data, timestamps=stage.timestamps, eval_tasks=tasks, batch_size=cfg.batch_size,
                             max_samples_per_split=cfg.limit, _convert_="partial")
    datamodule.set_tokenizer(stage.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("validate" if cfg.split == "val" else "test")
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()
    if len(loader) == 0:  # the trainer would skip it and return nothing to score
        raise NoSamplesError(f"{datamodule.describe_split(cfg.split)}: no sample to evaluate (tasks "
                             f"{', '.join(tasks)}); pick another split or data source (split=..., data=..., "
                             "data.splits.<split>=FILE)")
    out = output_folder(Path(cfg.out) if cfg.out else default_output(ckpt, datamodule.name, cfg.split, given, cfg.limit))
    for old in (out / PREDICTIONS, out / f"{PREDICTIONS}.partial"):  # another evaluation's: never left beside this one's
        old.unlink(missing_ok=True)
    retrieval, writer = retrieval_callback(), prediction_writer(out / PREDICTIONS)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False,
                        callbacks=[progress_bar(stderr=True), retrieval, writer])
    if generates:
        stage.max_new_tokens = int(cfg.max_new_tokens)
        trainer.predict(stage, dataloaders=loader, return_predictions=False)
        rows = writer.finish()
        values = {f"{cfg.split}/{k}": v for k, v in grounding_figures(rows).items()}
        present = sorted({r["task"] for r in rows})
        if len(present) > 1:  # as the stage logs them: over all queries, and per task apart
            for task in present:
                figures = grounding_figures([r for r in rows if r["task"] == task])
                values.update({f"{cfg.split}/{task}_{k}": v for k, v in figures.items()})
        official = qvhighlights_figures(rows, datamodule, cfg.split, out)
        if official:
            values.update({f"{cfg.split}/{k}": v for k, v in official["brief"].items()})
    else:
        official = None
        results = trainer.test(stage, dataloaders=loader, verbose=False)
        # a non-finite figure (a NaN loss) is null: NaN is no JSON, and stdout must parse
        values = {k.replace("test/", f"{cfg.split}/"): round(float(v), 6) if math.isfinite(float(v)) else None
                  for k, v in results[0].items()}
        if retrieval.rows:  # stage 1; stage 2's one figure is the LM loss, with nothing per query
            write_rows(out / PREDICTIONS, retrieval.rows)
    failures = datamodule.decode_failures()
    report = {"ckpt": str(ckpt), "stage": stage.stage_name, "data": datamodule.name, "split": cfg.split,
              "tasks": tasks, "metrics": values, "decode_failures": {k: v for k, v in failures.items()},
              "fixes": split_fixes(datamodule, cfg.split),
              "settings": {"limit": cfg.limit, "prompt_style": prompt_style, "batch_size": int(cfg.batch_size),
                           "model_overrides": list(model_overrides),
                           "max_new_tokens": int(cfg.max_new_tokens) if generates else None,
                           "annotations": datamodule.split_files(cfg.split)}}
    if official:
        report["qvhighlights"] = official
    (out / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    print(json.dumps(values, sort_keys=True))
    print(f"predictions and metrics: {out}", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    # besides the common mistakes (a checkpoint that cannot be used among them): a split without samples, a
    # synthetic set made with other parameters, a GPU this machine lacks, an output folder that cannot be made
    # data.prompt_style, the data config's key, means what prompt_style= means here (the default
    # being the checkpoint's, not the data config's plain)
    argv = [f"prompt_style={a.partition('=')[2]}" if a.startswith("data.prompt_style=") else a for a in argv]
    with user_errors("damo-eval", ValueError), quiet_inference_logs():
        model_overrides, argv = split_model_overrides(argv, "damo-eval")
        run_eval(compose("eval", argv), model_overrides)


if __name__ == "__main__":
    main()
