"""make demo: run the four training stages in order and summarise them.

    python -m damo_lit.cli.demo [KEY=VALUE ...] [demo.KEY=VALUE ...]

Each stage is a `damo-train` run in its own process and folder (OUT/stage1 .. OUT/stage4),
started from the previous stage's weights (stage.init_from). KEY=VALUE words go to every stage;
demo.KEY=VALUE words set conf/demo.yaml (out_dir, skip, stages.<key>.overrides, ...). With
demo.features.enabled (the default), the stages from demo.features.first_stage on freeze the
towers and read a frozen-encoder feature cache (OUT/features, made by damo-cache with the towers
of the stage before, which trained them), instead of decoding and encoding every batch. At the end
OUT/summary.json maps each stage to its final metrics, named as they were logged
({split}/{metric}, the constant-span baseline as test/baseline_*), and a table is printed.
A stage that fails stops the pipeline with its exit code; what finished stays on disk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from damo_lit.cli.common import PROJECT_ROOT, compose, overrides_under

USAGE = __doc__


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(demo overrides without their `demo.` prefix, overrides for every stage)."""
    demo, stage = [], []
    for word in argv:
        key = word.lstrip("+~")
        if key.startswith("demo."):
            demo.append(word[: len(word) - len(key)] + key[len("demo."):])
        else:
            stage.append(word)
    return demo, stage


def stage_command(stage_cfg: str, run_dir: Path, init_from: Path | None, overrides: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "damo_lit.cli.train", f"stage={stage_cfg}", f"hydra.run.dir={run_dir}"]
    if init_from is not None:
        cmd.append(f"stage.init_from={init_from}")
    return cmd + list(overrides)


CACHE_KEYS = ("model", "data", "paths")  # the overrides damo-cache's config takes (no seed: encoding is deterministic)
FROZEN_TOWERS = ["model.vision.trainable=false", "model.audio.trainable=false"]


def cache_command(out: Path, init_from: Path | None, overrides: Sequence[str]) -> list[str]:
    """damo-cache into `out` with the model / data overrides of the stages (not trainer.* etc.),
    encoding with the towers of `init_from` when its weights file holds some."""
    cmd = [sys.executable, "-m", "damo_lit.cli.cache", f"out={out}"]
    if init_from is not None and _has_tower_weights(init_from):
        cmd.append(f"init_from={init_from}")
    return cmd + overrides_under(overrides, CACHE_KEYS) + FROZEN_TOWERS  # the stages that read the cache run with these


def _has_tower_weights(run_dir: Path) -> bool:
    from safetensors import safe_open

    from damo_lit.stages.weights import resolve_weights_path

    with safe_open(str(resolve_weights_path(run_dir)), framework="pt") as handle:
        return any(k.startswith(("vision.", "audio.")) for k in handle.keys())


def feature_overrides(features_dir: Path) -> list[str]:
    """What a stage needs to read the cache: the folder, and frozen towers."""
    return [f"data.features={features_dir}", *FROZEN_TOWERS]


def _call(key: str, cmd: Sequence[str], out_dir: Path, summary: dict[str, Any], where: Path) -> None:
    print("    " + " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    code = subprocess.call(list(cmd))
    summary["seconds"][key] = round(time.time() - t0, 1)
    if code != 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        raise SystemExit(f"demo: {key} failed with exit code {code}; its log is in {where}")


def code_version(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """The checkout a run was made with: its git commit, and whether src/ or conf/ had changes not
    committed (then the commit alone does not say what ran). None outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=7", "HEAD")
    if not commit:
        return None
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--", "src", "conf"))}


def commit_label(code: dict[str, Any] | None) -> str:
    """`code_version`'s answer as one word: the commit, '+' when src/ or conf/ had uncommitted
    changes; '?' when it is not known."""
    if not code or not code.get("commit"):
        return "?"
    return f"{code['commit']}{'+' if code.get('dirty') else ''}"


def run_pipeline(demo_overrides: Sequence[str] = (), stage_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the configured stages; write and return the summary."""
    cfg = compose("demo", demo_overrides)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(cfg.skip) - set(cfg.stages)
    if unknown:
        raise SystemExit(f"demo.skip: unknown stage(s) {sorted(unknown)}; expected some of {list(cfg.stages)}")
    summary: dict[str, Any] = {"stages": {}, "seconds": {}, "code": code_version()}
    previous: Path | None = None
    started = time.time()
    order = list(cfg.stages)
    features = cfg.get("features") or {}
    if features.get("enabled") and features.first_stage not in order:
        raise SystemExit(f"demo.features.first_stage: {features.first_stage!r} is not a stage; expected one of {order}")
    cache_from = order.index(features.first_stage) if features.get("enabled") else len(order)
    cached: list[str] = []
    for position, (key, spec) in enumerate(cfg.stages.items()):
        if key in cfg.skip:
            continue
        if position >= cache_from and not cached:
            features_dir = out_dir / "features"
            shutil.rmtree(features_dir, ignore_errors=True)  # made from this run's towers, never an older run's
            cmd = cache_command(features_dir, previous, [*cfg.common, *stage_overrides])
            print(f"\n=== features (damo-cache, towers of {previous or 'the model config'}) -> {features_dir}", flush=True)
            _call("features", cmd, out_dir, summary, features_dir)
            cached = feature_overrides(features_dir)
        run_dir = out_dir / key
        cmd = stage_command(spec.stage, run_dir, previous, [*cfg.common, *cached, *spec.overrides, *stage_overrides])
        print(f"\n=== {key} ({spec.stage}) -> {run_dir}", flush=True)
        _call(key, cmd, out_dir, summary, run_dir)
        metrics_file = run_dir / "metrics.json"
        summary["stages"][key] = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        previous = run_dir
    summary["seconds"]["total"] = round(time.time() - started, 1)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print_table(summary, list(cfg.table))
    print(f"\nsummary: {out_dir / 'summary.json'}")
    return summary


def print_table(summary: dict[str, Any], columns: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="damo-lit demo (test split)")
    table.add_column("stage")
    shown = [c for c in columns if any(c in m for m in summary["stages"].values())]
    for column in shown:
        table.add_column(column.removeprefix("test/"), justify="right")
    table.add_column("seconds", justify="right")
    for key, metrics in summary["stages"].items():
        cells = [f"{metrics[c]:.3f}" if c in metrics else "" for c in shown]
        table.add_row(key, *cells, f"{summary['seconds'].get(key, 0):.0f}")
    console = Console()
    if not console.is_terminal:  # a log file or pipe: rich would squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    demo, stage = split_overrides(argv)
    run_pipeline(demo, stage)


if __name__ == "__main__":
    main()
