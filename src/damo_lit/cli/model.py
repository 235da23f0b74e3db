"""damo-model: model tools.

    damo-model summary [model=damo_paper] [overrides...] [format=json]
        parameter counts per module group and per stage, and the LLM's tokens per video,
        from the config alone (built on the meta device: no weights, no download)
    damo-model build-tiny --out DIR [--seed N] [--force]
        create the tiny random-init parts (CLIP-style ViT, Whisper-style encoder, BERT, Llama
        LM + word tokenizer) with save_pretrained, for the damo_tiny config to load by folder
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from damo_lit.cli.common import PACKAGE_DIR, compose, user_errors
from damo_lit.locks import folder_lock

TINY_VOCAB = PACKAGE_DIR / "assets" / "tiny_vocab.txt"
MANIFEST = "manifest.json"


def read_tiny_vocab(path: Path = TINY_VOCAB) -> list[str]:
    """The tiny word list: one word per line, blank lines and '#' comments skipped."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            words.append(word)
    if not words:
        raise SystemExit(f"damo-model: {path} holds no words")
    return words


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _tiny_manifest(model_cfg: Mapping[str, Any], words: list[str], seed: int) -> dict[str, Any]:
    parts = {name: (model_cfg.get(name) or {}) for name in ("vision", "audio", "text_encoder", "llm")}
    return {
        "seed": seed,
        "vocab_sha256": hashlib.sha256("\n".join(words).encode()).hexdigest(),
        "arch": {name: part.get("arch") for name, part in parts.items()},
        "number_embeddings": parts["llm"].get("number_embeddings", "random"),
    }


def ensure_tiny_pretrained(
    directory: str | Path,
    model_cfg: Mapping[str, Any] | None = None,
    seed: int | None = None,
    force: bool = False,
) -> Path:
    """Build the tiny parts into `directory` unless it already holds these exact parts.

    The folder records the seed, the word list's hash and the `arch` numbers it was built
    from; any change (e.g. the data engineer extends tiny_vocab.txt) rebuilds it. The build
    happens in a temporary sibling folder that replaces `directory` at the end (a crash never
    leaves half a folder), under a lock beside it (runs started side by side build it once and
    never replace it under one another). Returns the folder.
    """
    from damo_lit.models.tiny import build_tiny_parts

    directory = Path(directory)
    if model_cfg is None:
        model_cfg = compose("model_summary", ["model=damo_tiny"]).model
    model_cfg = _plain(model_cfg)
    seed = int(model_cfg.get("seed", 0)) if seed is None else seed
    words = read_tiny_vocab()
    manifest = _tiny_manifest(model_cfg, words, seed)
    if not force and _holds(directory, manifest):
        return directory
    check_replaceable(directory)
    with folder_lock(directory, "building"):  # never replace the folder while another process builds or reads it
        if not force and _holds(directory, manifest):  # built by the process this one waited for
            return directory
        parts = build_tiny_parts(model_cfg, words, seed)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            for name, model in parts.items():
                model.save_pretrained(staging / name)
            for name in ("llm", "text_encoder"):
                if (staging / name).is_dir():
                    parts.tokenizer.save_pretrained(staging / name)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when it was put in place
    return directory


# What a folder of tiny parts holds: rebuilding replaces such a folder whole, and no other.
TINY_FOLDER_ENTRIES = ("audio", "llm", "text_encoder", "vision", MANIFEST)


class NotTinyPartsFolderError(ValueError):
    """A folder to build the tiny parts into that holds something else (it would be replaced whole)."""


def check_replaceable(directory: Path) -> None:
    """Refuse to build into a file, or into a folder that holds anything but tiny parts: the build
    replaces the folder whole, which deleted whatever a mistyped --out or model.tiny_dir named."""
    if directory.exists() and not directory.is_dir():
        raise NotTinyPartsFolderError(f"{directory} is a file; expected a folder for the tiny model parts")
    others = sorted(p.name for p in directory.iterdir() if p.name not in TINY_FOLDER_ENTRIES) if directory.is_dir() else []
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise NotTinyPartsFolderError(
            f"{directory} holds other files ({shown}); the tiny parts replace their folder whole: give an empty "
            "or new folder (--out, model.tiny_dir)")


def _holds(directory: Path, manifest: dict[str, Any]) -> bool:
    """True when `directory` was built from exactly `manifest`."""
    try:
        return json.loads((directory / MANIFEST).read_text()) == manifest
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False


def ensure_model_parts(model_cfg: Mapping[str, Any]) -> None:
    """Make the model config loadable: build the tiny parts when it names a `tiny_dir`."""
    tiny_dir = model_cfg.get("tiny_dir")
    if tiny_dir:
        ensure_tiny_pretrained(tiny_dir, model_cfg)


# -- summary ------------------------------------------------------------------------------------

def _format_int(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def print_summary_table(summary: Any, rows: dict[str, dict[str, int]], title: str) -> None:
    """One row per module group: parameters, and how many train in each stage."""
    from rich.console import Console
    from rich.table import Table

    stages = list(summary.trainable)
    table = Table(title=title, caption="stage columns: parameters that train in that stage")
    table.add_column("module group", no_wrap=True)
    table.add_column("parameters", justify="right")
    for stage in stages:
        table.add_column(stage, justify="right")
    for key, row in rows.items():
        table.add_row(key, _format_int(row["params"]) if row["params"] else "-",
                      *(_format_int(row[s]) if row[s] else "-" for s in stages))
    table.add_row(
        "total", _format_int(summary.params["total"]), *(_format_int(summary.trainable[s]) for s in stages), style="bold"
    )
    console = Console()
    console.print(table)
    console.print(f"LLM tokens per video: [bold]{summary.llm_tokens_per_video}[/bold]")


def summary_command(overrides: Sequence[str]) -> dict[str, Any]:
    """Compose conf/model_summary.yaml with overrides, build on meta, print; returns the JSON dict."""
    from damo_lit.models.damo import build_damo
    from damo_lit.models.summary import stage_table, summarize

    cfg = compose("model_summary", overrides)
    fmt = cfg.get("format", "table")
    if fmt not in ("table", "json"):
        raise SystemExit(f"damo-model summary: format must be table or json, got {fmt!r}")
    damo = build_damo(_plain(cfg.model), meta=True)
    summary = summarize(damo)
    heads = stage_heads(damo, cfg.model)
    for stage, count in heads.items():  # what a stage trains beside the model's groups
        summary.trainable[stage] += count
    result = {**summary.to_dict(), "stage_heads": heads, **counted_architectures(damo)}
    if fmt == "json":
        print(json.dumps(result))
    else:
        choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "damo_tiny")
        rows = stage_table(damo)
        for stage, count in heads.items():
            rows[f"{stage} heads"] = {"params": 0, **{s: count if s == stage else 0 for s in summary.trainable}}
        print_summary_table(summary, rows, f"DaMO parameters ({choice}, built on the meta device)")
        print("counted architectures: " + ", ".join(f"{k} {v}" for k, v in result["architectures"].items()))
        for note in result["notes"]:
            print(f"note: {note}")
    return result


def stage_heads(damo: Any, model_cfg: Any) -> dict[str, int]:
    """{stage: parameters it trains outside DaMO's module groups}: stage 1's VTM head and
    temperature, when the model has the text encoder that stage 1 needs."""
    from damo_lit.stages.align import stage1_head_count

    if damo.text_encoder is None:
        return {}
    return {"stage1": stage1_head_count(damo.text_encoder.dim, int(model_cfg.fuseformer.hidden))}


def counted_architectures(damo: Any) -> dict[str, Any]:
    """Which transformers class each part was counted as (built from its `arch` numbers), and a
    note where that is not the kind asked for: an EVA-CLIP summary counts whatever architecture
    model.vision.arch names (a CLIP ViT of the same numbers in damo_paper), not EVA-CLIP's own."""
    parts = {"vision": damo.vision, "audio": damo.audio, "text_encoder": damo.text_encoder, "llm": damo.llm}
    names = {}
    for key, part in parts.items():
        if part is not None:
            model = part.model.get_base_model() if hasattr(part.model, "get_base_model") else part.model
            names[key] = type(model).__name__
    notes = []
    if damo.cfg.vision.kind == "eva_clip" and "eva" not in names["vision"].lower():
        model_type = (damo.cfg.vision.arch or {}).get("model_type")
        notes.append(
            f"model.vision.kind=eva_clip was counted as {names['vision']}, the architecture that "
            f"model.vision.arch (model_type {model_type}) describes, not an EVA-CLIP model"
        )
    return {"architectures": names, "notes": notes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="damo-model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    summ = sub.add_parser("summary", help="parameter table of a model config (meta device)")
    summ.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=damo_paper format=json")
    tiny = sub.add_parser("build-tiny", help="save the tiny random-init parts into a folder")
    tiny.add_argument("--out", required=True, type=Path, help="folder to create (e.g. .cache/tiny_models)")
    tiny.add_argument("--seed", type=int, default=None, help="initialisation seed (default: model.seed)")
    tiny.add_argument("--force", action="store_true", help="rebuild even when the folder is up to date")
    tiny.add_argument("overrides", nargs="*", help="Hydra overrides of the tiny model config")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors(f"damo-model {args.command}", NotTinyPartsFolderError):
        if args.command == "summary":
            summary_command(args.overrides)
            return 0
        model_cfg = compose("model_summary", ["model=damo_tiny", *args.overrides]).model
        out = ensure_tiny_pretrained(args.out, model_cfg, args.seed, args.force)
    print(f"tiny model parts in {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.is_dir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
