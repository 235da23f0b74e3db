"""make demo: run the four training stages in order and summarise them.

    python -m damo_lit.cli.demo [KEY=VALUE ...] [demo.KEY=VALUE ...]

Each stage is a `damo-train` run in its own process and folder (OUT/stage1 .. OUT/stage4),
started from the previous stage's weights (stage.init_from). KEY=VALUE words go to every stage;
demo.KEY=VALUE words set conf/demo.yaml (out_dir, skip, stages.<key>.overrides, ...). At the end
OUT/summary.json maps each stage to its final metrics, named as they were logged
({split}/{metric}, the constant-span baseline as test/baseline_*), and a table is printed.
A stage that fails stops the pipeline with its exit code; what finished stays on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from damo_lit.cli.common import compose

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


def run_pipeline(demo_overrides: Sequence[str] = (), stage_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the configured stages; write and return the summary."""
    cfg = compose("demo", demo_overrides)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(cfg.skip) - set(cfg.stages)
    if unknown:
        raise SystemExit(f"demo.skip: unknown stage(s) {sorted(unknown)}; expected some of {list(cfg.stages)}")
    summary: dict[str, Any] = {"stages": {}, "seconds": {}}
    previous: Path | None = None
    started = time.time()
    for key, spec in cfg.stages.items():
        if key in cfg.skip:
            continue
        run_dir = out_dir / key
        cmd = stage_command(spec.stage, run_dir, previous, [*cfg.common, *spec.overrides, *stage_overrides])
        print(f"\n=== {key} ({spec.stage}) -> {run_dir}", flush=True)
        print("    " + " ".join(cmd[1:]), flush=True)
        t0 = time.time()
        code = subprocess.call(cmd)
        summary["seconds"][key] = round(time.time() - t0, 1)
        if code != 0:
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
            raise SystemExit(f"demo: {key} failed with exit code {code}; its log is in {run_dir}")
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
