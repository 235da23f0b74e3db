"""A Hydra callback that tabulates a multirun: one row per job, best first.

`damo-train -m model.fuseformer.depth=1,2,4` (or `hparams_search=...`) leaves one folder per job
under the sweep folder, each with `.hydra/overrides.yaml` and, when the job finished, the
`metrics.json` that damo-train writes. After every job (and at the end of the multirun) this
callback reads them back from disk (so it works with any launcher whose jobs write to a shared
file system) and writes `sweep_summary.json` and `sweep_summary.md` into the sweep folder,
sorted by `optimized_metric` (higher is better, except losses and ranks). Jobs without metrics
are listed as such, never dropped: a sweep that lost a job must say so. A job that failed is
marked so (its error in the job folder's `job_failed.txt`), and since Hydra stops a
multirun whose job failed before it ends, the summary written after the last job is the one
that stays.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from damo_lit.cli.common import markdown_table

log = logging.getLogger(__name__)

# Shown beside the optimized metric when a job has them: the figures users compare first.
HEADLINE_METRICS = (
    "val/R@0.5", "val/mIoU", "test/R@0.5", "test/mIoU", "test/R@0.5_audio", "test/R@0.5_visual", "test/parse_rate",
    "val/t2v_R@1", "val/v2t_R@1", "val/loss", "test/loss",
)  # fmt: skip
MAX_COLUMNS = 6
SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
FAILED_FILE = "job_failed.txt"  # in a job's folder: the error that ended it


def metric_mode(name: str) -> str:
    """'min' for losses and ranks, 'max' for everything else (recalls, IoU, mAP, parse rate)."""
    lowered = name.lower()
    return "min" if "loss" in lowered or "rank" in lowered or lowered.endswith("mdr") else "max"


@dataclass
class JobResult:
    job: str  # the job's folder name under the sweep folder
    overrides: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "finished"  # finished | failed: ERROR | no metrics.json | unreadable metrics.json


def read_job(folder: Path) -> JobResult | None:
    """The job in `folder`, or None when it is not a Hydra job folder."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return None
    overrides = [str(o) for o in OmegaConf.load(overrides_file)]
    failed = folder / FAILED_FILE
    # a job that failed after fit keeps fit's metrics.json: its figures are shown, marked failed
    said = " ".join(failed.read_text().split()) if failed.is_file() else ""
    status = f"failed: {said[:200]}{'...' if len(said) > 200 else ''}" if failed.is_file() else "finished"
    metrics_file = folder / "metrics.json"
    if not metrics_file.is_file():
        return JobResult(folder.name, overrides, status="no metrics.json" if status == "finished" else status)
    try:
        raw = json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return JobResult(folder.name, overrides, status=f"unreadable metrics.json ({err})")
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return JobResult(folder.name, overrides, metrics, status)


def _job_sort_key(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (1 << 30, folder.name)


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job folder directly under `sweep_dir`, in job order."""
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=_job_sort_key)
    return [job for job in (read_job(p) for p in folders) if job is not None]


def rank_jobs(jobs: list[JobResult], metric: str | None) -> list[JobResult]:
    """Jobs with the metric first, best first; then the others in job order."""
    if not metric:
        return list(jobs)
    sign = -1.0 if metric_mode(metric) == "max" else 1.0
    scored = [j for j in jobs if metric in j.metrics and math.isfinite(j.metrics[metric])]
    rest = [j for j in jobs if j not in scored]
    return sorted(scored, key=lambda j: sign * j.metrics[metric]) + rest


def summary_columns(jobs: list[JobResult], metric: str | None) -> list[str]:
    present = {name for job in jobs for name in job.metrics}
    columns = [metric] if metric else []
    columns += [name for name in HEADLINE_METRICS if name in present and name != metric]
    return columns[:MAX_COLUMNS]


def varying_overrides(jobs: list[JobResult]) -> list[list[str]]:
    """Each job's overrides without those every job shares: the swept values."""
    if not jobs:
        return []
    shared = set(jobs[0].overrides).intersection(*(set(j.overrides) for j in jobs[1:]))
    return [[o for o in j.overrides if o not in shared] or ["(as configured)"] for j in jobs]


def summary_markdown(jobs: list[JobResult], metric: str | None) -> str:
    columns = summary_columns(jobs, metric)
    rows = ([job.job, " ".join(f"`{o}`" for o in swept),
             *(f"{job.metrics[c]:.4f}" if c in job.metrics else "–" for c in columns), job.status]
            for job, swept in zip(jobs, varying_overrides(jobs)))  # fmt: skip
    table = markdown_table(["job", "overrides", *columns, "status"], rows)
    order = f"sorted by {metric} ({'higher' if metric_mode(metric) == 'max' else 'lower'} is better)" if metric else (
        "in job order (set optimized_metric=... to rank them)")  # fmt: skip
    return "\n".join([f"# Sweep: {len(jobs)} jobs, {order}", "", table, ""])


def write_summary(sweep_dir: Path, metric: str | None) -> list[JobResult]:
    """Collect, rank and write the sweep's summary files; the ranked jobs."""
    jobs = rank_jobs(collect_jobs(sweep_dir), metric)
    payload = {"optimized_metric": metric, "mode": metric_mode(metric) if metric else None,
               "jobs": [asdict(j) for j in jobs]}  # fmt: skip
    _replace_text(sweep_dir / SUMMARY_JSON, json.dumps(payload, indent=2))
    _replace_text(sweep_dir / SUMMARY_MD, summary_markdown(jobs, metric))
    return jobs


def _replace_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: jobs of a parallel launcher may write the summary at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class SweepSummary(Callback):
    """conf/hydra/default.yaml registers it for every damo-train multirun."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Mark a failed job in its folder and bring the summary up to date (multiruns only)."""
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg is not None else None
        if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
            return
        job_dir, sweep_dir = Path(str(hydra_cfg.runtime.output_dir)), Path(str(hydra_cfg.sweep.dir))
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # the exception; return_value would raise it
            (job_dir / FAILED_FILE).write_text((str(error).strip() or type(error).__name__) + "\n")
        if sweep_dir.is_dir():
            write_summary(sweep_dir, (job_return.cfg or {}).get("optimized_metric") or None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        metric = config.get("optimized_metric") or None
        jobs = write_summary(sweep_dir, metric)
        missing = [j.job for j in jobs if j.status != "finished"]
        log.info("sweep summary: %s (%d jobs)", sweep_dir / SUMMARY_MD, len(jobs))
        if missing:
            log.warning("sweep: job(s) %s left no usable metrics.json", ", ".join(missing))
        if metric and jobs and metric in jobs[0].metrics:
            log.info("best %s = %.4f: job %s (%s)", metric, jobs[0].metrics[metric], jobs[0].job,
                     " ".join(jobs[0].overrides) or "as configured")  # fmt: skip
