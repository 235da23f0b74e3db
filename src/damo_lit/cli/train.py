"""damo-train: run one training stage from the composed Hydra config (conf/train.yaml).

    damo-train stage=stage3_temporal model=damo_tiny data=synthetic trainer.devices=2
    damo-train stage=stage4_dialogue stage.init_from=outputs/demo/stage3
    damo-train -m model.fuseformer.depth=1,2,4          # a sweep
    damo-train --help                                    # Hydra's help: groups and options

The run folder (hydra.run.dir) receives the composed config, checkpoints/ (Lightning, for exact
resume with resume_from=...), weights.safetensors + stage.json (what the next stage's
stage.init_from reads), adapter/ (LoRA, peft format) and metrics.json.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from damo_lit.cli.common import CONF_DIR, check_conf_dir, register_resolvers

log = logging.getLogger("damo_lit.train")


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        number = float(value.item() if hasattr(value, "item") else value)
        if math.isfinite(number):
            out[key] = round(number, 6)
    return out


def quiet_console() -> None:
    """One line per message: Hydra's handlers already show Lightning's logs (no second copy), and
    no per-file weight-loading bars from transformers for the tiny parts."""
    import transformers

    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logging.getLogger().handlers:
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build_run(cfg: Any) -> tuple[Any, Any, Any]:
    """(stage module, datamodule, trainer) from a composed config; builds what is missing first."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from damo_lit.cli.model import ensure_model_parts
    from damo_lit.data.timestamps import parse_spans

    quiet_console()
    L.seed_everything(int(cfg.seed), workers=True)
    ensure_model_parts(cfg.model)
    parser = functools.partial(parse_spans, fmt=cfg.timestamps)
    stage = instantiate(cfg.stage, model_cfg=OmegaConf.to_container(cfg.model, resolve=True),
                        timestamps=cfg.timestamps, span_parser=parser, _convert_="partial")
    datamodule = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
    datamodule.set_tokenizer(stage.tokenizer)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, _convert_="partial")
    return stage, datamodule, trainer


def run(cfg: Any) -> dict[str, float]:
    """Fit, then test, one stage; write metrics.json into the run folder and return the metrics."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    stage, datamodule, trainer = build_run(cfg)
    if getattr(stage, "init_report", None) is not None:
        report = stage.init_report
        log.info("started from %s: %d tensors loaded, %d not in this model",
                 report.path, len(report.loaded), len(report.unexpected))
    trainer.fit(stage, datamodule=datamodule, ckpt_path=cfg.get("resume_from"))
    metrics = _plain_metrics(dict(trainer.callback_metrics))
    if cfg.get("test_after_fit", True):
        if hasattr(stage, "span_prior"):
            prior = datamodule.train_span_prior()
            stage.span_prior = (prior.start, prior.end) if prior is not None else None
        trainer.test(stage, datamodule=datamodule)
        metrics.update(_plain_metrics(dict(trainer.callback_metrics)))
    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        log.info("metrics: %s", out_dir / "metrics.json")
    return metrics


def main() -> None:
    import hydra

    register_resolvers()
    check_conf_dir()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _main(cfg: Any) -> float | None:
        metrics = run(cfg)
        # A sweeper (hparams_search) optimises the value returned here.
        target = cfg.get("optimized_metric")
        return metrics.get(target) if target else None

    _main()


if __name__ == "__main__":
    sys.exit(main())
