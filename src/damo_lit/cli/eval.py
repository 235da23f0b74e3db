"""damo-eval: run a checkpoint over a split; write predictions JSONL and a metrics JSON beside it.

    damo-eval ckpt=outputs/demo/stage3 [data=synthetic] [split=test] [out=DIR] [limit=N]

Stage 3 and 4 checkpoints generate an answer for every query, parse its spans and score them
(predictions.jsonl: id, question, answer, pred_spans, gt_spans, duration, modality, iou; the
format damo-score grounding reads). Stage 1 and 2 checkpoints report their test figures
(retrieval, loss). The config is conf/eval.yaml; `damo-eval --help` prints this text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from damo_lit.cli.common import CONF_DIR, compose, user_errors

def stage_eval_tasks(stage_name: str) -> list[str]:
    """The record tasks a stage evaluates in training (`data.eval_tasks` of conf/stage/<stage>_*.yaml),
    so that damo-eval reproduces the figures the run logged."""
    from omegaconf import OmegaConf

    (path,) = sorted((CONF_DIR / "stage").glob(f"{stage_name}_*.yaml"))
    return list(OmegaConf.load(path).data.eval_tasks)


def grounding_figures(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """GroundingMetrics over predicted rows (top-1 span of each), NaN figures left out."""
    import math

    from damo_lit.metrics import GroundingMetrics

    metric = GroundingMetrics()
    metric.update([tuple(r["pred_spans"][0]) if r["pred_spans"] else None for r in rows],
                  [r["gt_spans"] for r in rows], [r["modality"] for r in rows])
    return {k: round(float(v), 6) for k, v in metric.compute().items() if not math.isnan(float(v))}


def run_eval(cfg: Any) -> dict[str, Any]:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import RichProgressBar
    from omegaconf import OmegaConf, open_dict

    from damo_lit.cli.checkpoint import load_stage

    if cfg.split not in ("val", "test"):
        raise SystemExit(f"split must be val or test, got {cfg.split!r}")
    stage = load_stage(cfg.ckpt, trust_remote_code=bool(cfg.trust_remote_code))
    ckpt = Path(cfg.ckpt)
    tasks = list(cfg.tasks) if cfg.tasks else stage_eval_tasks(stage.stage_name)
    with open_dict(cfg):
        cfg.model = OmegaConf.create(stage.model_cfg)
    datamodule = instantiate(cfg.data, timestamps=stage.timestamps, eval_tasks=tasks, batch_size=cfg.batch_size,
                             max_samples_per_split=cfg.limit, _convert_="partial")
    datamodule.set_tokenizer(stage.tokenizer)
    datamodule.prepare_data()
    datamodule.setup("validate" if cfg.split == "val" else "test")
    loader = datamodule.val_dataloader() if cfg.split == "val" else datamodule.test_dataloader()
    out = Path(cfg.out) if cfg.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "eval" / f"{datamodule.name}_{cfg.split}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, callbacks=[RichProgressBar()],
                        enable_checkpointing=False, enable_model_summary=False)
    if hasattr(stage, "max_new_tokens"):
        stage.max_new_tokens = int(cfg.max_new_tokens)
        rows = [row for batch_rows in trainer.predict(stage, dataloaders=loader) for row in batch_rows]
        with (out / "predictions.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        values = {f"{cfg.split}/{k}": v for k, v in grounding_figures(rows).items()}
        present = sorted({r["task"] for r in rows})
        if len(present) > 1:  # as the stage logs them: over all queries, and per task apart
            for task in present:
                figures = grounding_figures([r for r in rows if r["task"] == task])
                values.update({f"{cfg.split}/{task}_{k}": v for k, v in figures.items()})
    else:
        results = trainer.test(stage, dataloaders=loader, verbose=False)
        values = {k.replace("test/", f"{cfg.split}/"): round(float(v), 6) for k, v in results[0].items()}
    failures = datamodule.decode_failures()
    report = {"ckpt": str(ckpt), "stage": stage.stage_name, "data": datamodule.name, "split": cfg.split,
              "tasks": tasks, "metrics": values, "decode_failures": {k: v for k, v in failures.items()}}
    (out / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    print(json.dumps(values, sort_keys=True))
    print(f"predictions and metrics: {out}", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    with user_errors("damo-eval"):
        run_eval(compose("eval", argv))


if __name__ == "__main__":
    main()
