"""What the experiment runners (fusion_depth, ablations, data_efficiency) share.

Each runner is a list of `Run`s: a name (its folder under the experiment's output folder), the
label columns of its table row, and the damo-demo overrides that make it what it is. `run_all`
runs `python -m damo_lit.cli.demo demo.out_dir=OUT/NAME ...` for each (exp.jobs at a time),
with the overrides in this order: the --quick budgets, the user's KEY=VALUE words, the run's
own overrides (they define the run, so they come last). A run whose OUT/NAME/summary.json is
complete (damo-demo writes seconds.total only when every stage finished) and was made with the
same overrides (OUT/NAME/run.json) is reused, unless --force; so is the same run finished in
another experiment's folder under outputs/experiments (the ablations' `full` is fusion_depth's
`depth1` (the default depth) and data_efficiency's `videos800`): OUT/NAME then gets its summary.json and a run.json
whose `same_as` names it. Anything else is deleted and run again. A failed run is reported in the table and makes the runner exit 1; the others still run.

The final figures of a run are the test metrics of its last grounding stage (stage4, else
stage3). `write_results` leaves OUT/results.md (the table and notes), OUT/results.json (every
run's final metrics) and the runner draws OUT/results.png with `plot_lines` / `plot_bars`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from damo_lit.cli.common import CONF_DIR, PROJECT_ROOT, markdown_table, override_key
from damo_lit.models.config import MEMORY_ONLY_TOWER_KEYS

OUT_ROOT = PROJECT_ROOT / "outputs" / "experiments"
# --quick: a few steps per stage and one batch of val / test each, for smoke tests. The CSV logger
# starts faster than W&B offline. Later words (the user's, the run's) override these.
QUICK_OVERRIDES = [
    "trainer.max_steps=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "logger=csv",
]
FINAL_STAGES = ("stage4", "stage3")  # where a run's final grounding figures come from, first found
# The metric columns every table shows: (header, key in the final stage's metrics).
METRICS = [
    ("R@0.3", "test/R@0.3"),
    ("R@0.5", "test/R@0.5"),
    ("R@0.7", "test/R@0.7"),
    ("mIoU", "test/mIoU"),
    ("R@0.5 audio", "test/R@0.5_audio"),
    ("R@0.5 visual", "test/R@0.5_visual"),
    ("R@0.5 audio-visual", "test/R@0.5_audio-visual"),
    ("parse rate", "test/parse_rate"),
    ("baseline R@0.5", "test/baseline_R@0.5"),
]
# Options every runner takes as exp.KEY=VALUE (so that `make exp-... exp.quick=true` works too).
COMMON_PARAMS: dict[str, Any] = {"out": "", "quick": False, "force": False, "collect": False, "only": [], "jobs": 1}
OPTIONS_HELP = """
Options (each also as exp.KEY=VALUE, which is what `make exp-... KEY=VALUE` can forward):
  --quick            exp.quick=true: tiny budgets (2 steps per stage, one val / test batch, CSV
                     logger) into OUT_quick, for smoke tests
  --force            exp.force=true: rerun runs whose summary.json is already there
  --collect          exp.collect=true: run nothing, tabulate the runs already on disk
  exp.only=[A,B]     only these runs (by folder name)
  exp.out=DIR        output folder (default outputs/experiments/<experiment>[_quick])
  exp.jobs=N         N runs at a time, each with cores/N threads (OMP_NUM_THREADS); on a
                     2-core machine two 1-thread runs finish ~1.5x sooner than one after the other
Any other KEY=VALUE word is a Hydra override handed to every damo-demo run: a stage override
(model.*, data.*, trainer.*, ...) or a damo-demo option (demo.*). Runs whose
OUT/NAME/summary.json is complete and made with the same overrides are reused (resume).
Through make: make exp-ablations exp.quick=true trainer.devices=1   (or ARGS=--quick)
"""


@dataclass
class Run:
    """One damo-demo run of an experiment."""

    name: str  # folder name under the experiment's output folder
    label: dict[str, Any]  # the leading columns of its table row, e.g. {"depth": 2}
    overrides: list[str] = field(default_factory=list)


@dataclass
class Options:
    """A runner's parsed command line."""

    name: str  # the experiment
    out: Path
    quick: bool
    force: bool
    collect: bool
    only: list[str]
    jobs: int
    params: dict[str, Any]  # every exp.KEY value, the runner's own keys included
    extra: list[str]  # KEY=VALUE words for every demo run


@dataclass
class Outcome:
    """What became of a run: its summary when it finished (ran now or reused)."""

    run: Run
    out_dir: Path
    status: str  # ran | reused | failed | missing (--collect, not on disk)
    summary: dict[str, Any] | None = None
    error: str = ""

    @property
    def final_stage(self) -> str | None:
        return final_metrics(self.summary)[0] if self.summary else None

    @property
    def metrics(self) -> dict[str, float]:
        return final_metrics(self.summary)[1] if self.summary else {}

    def value(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if value is not None and math.isfinite(float(value)) else None

    @property
    def commit(self) -> str:
        """The commit the run's code was at ('+' when src/ or conf/ had uncommitted changes; '?' for
        a summary made before summaries recorded it)."""
        from damo_lit.cli.demo import commit_label

        return commit_label((self.summary or {}).get("code"))

    @property
    def minutes(self) -> float | None:
        seconds = (self.summary or {}).get("seconds", {}).get("total")
        return None if seconds is None else seconds / 60.0


# --- the command line ------------------------------------------------------------------------
def key_word(value: Any) -> str:
    """A default as a KEY=VALUE word of the command line takes it (for --help): null, true /
    false, JSON for lists and dicts, else the plain value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def key_words(prog: str, words: Sequence[str], defaults: Mapping[str, Any]) -> Any:
    """A script's KEY=VALUE words as an OmegaConf config; a key that `defaults` lacks stops the
    script with a message naming the known ones."""
    from omegaconf import OmegaConf

    cli = OmegaConf.from_dotlist(list(words))
    unknown = sorted(set(cli) - set(defaults))
    if unknown:
        raise SystemExit(f"{prog}: unknown key(s) {unknown}; expected some of {sorted(defaults)} (see --help)")
    return cli


def _coerce(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, str):
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise SystemExit(f"exp.{key}={raw}: not a value ({err})") from None
    if isinstance(default, list):
        values = value if isinstance(value, list) else [value]
        kinds = {type(item) for item in default}
        if len(kinds) == 1 and kinds <= {bool, int}:  # a list of flags or of counts takes only those
            (kind,) = kinds
            wrong = [v for v in values if type(v) is not kind or (kind is int and v < 1)]
            if wrong:
                expected = "true or false" if kind is bool else "whole numbers of at least 1"
                raise SystemExit(f"exp.{key}={raw}: expected a list of {expected}, got {wrong}")
        return values
    if isinstance(default, bool) and not isinstance(value, bool):
        raise SystemExit(f"exp.{key}={raw}: expected true or false")
    return value


def parse_args(argv: Sequence[str] | None, name: str, doc: str | None,
               params: Mapping[str, Any] | None = None) -> Options:
    """Flags, exp.KEY=VALUE options (COMMON_PARAMS plus the runner's `params`) and demo overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = {**COMMON_PARAMS, **(params or {})}
    values = dict(defaults)
    extra: list[str] = []
    for word in argv:
        if word in ("-h", "--help"):
            print((doc or "").rstrip() + "\n" + OPTIONS_HELP)
            raise SystemExit(0)
        if word in ("--quick", "--force", "--collect"):
            values[word[2:]] = True
        elif word.startswith("exp."):
            key, sep, raw = word[len("exp."):].partition("=")
            if not sep or key not in defaults:
                raise SystemExit(f"{word}: unknown option; exp. keys are {', '.join(sorted(defaults))}")
            values[key] = _coerce(key, raw, defaults[key])
        elif word.startswith("-"):
            raise SystemExit(f"{word}: unknown flag (see --help)")
        else:
            extra.append(word)
    out = Path(values["out"]) if values["out"] else OUT_ROOT / (name + ("_quick" if values["quick"] else ""))
    if values["collect"] and not out.is_dir():
        raise SystemExit(f"{name}: --collect: {out} does not exist, so there is nothing to collect (exp.out=DIR "
                         "names the folder of an experiment's runs)")
    return Options(name=name, out=out.resolve(), quick=values["quick"], force=values["force"],
                   collect=values["collect"], only=[str(x) for x in values["only"]], jobs=_jobs(values["jobs"]),
                   params=values,
                   extra=extra)  # fmt: skip


def _jobs(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SystemExit(f"exp.jobs={value}: expected a whole number of runs at a time, at least 1")
    return value


# --- Hydra sweep syntax ----------------------------------------------------------------------
def _parse(words: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(words))


def split_sweeps(words: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, {key: values}) of the sweep overrides among `words`, Hydra's multirun
    grammar: `k=1,2,4`, `k=range(1,5)`, `k=choice(a,b)`. The key keeps its +/~ prefix."""
    plain: list[str] = []
    sweeps: dict[str, list[str]] = {}
    for word, override in zip(words, _parse(words)):
        if override.is_sweep_override():
            sweeps[override.get_key_element()] = list(override.sweep_string_iterator())
        else:
            plain.append(word)
    return plain, sweeps


def reject_sweeps(words: Sequence[str], name: str) -> None:
    """Runners without a sweep: a `k=a,b` word is an error here, not a minute later in damo-train."""
    _, sweeps = split_sweeps(words)
    if sweeps:
        raise SystemExit(f"{name}: sweep override(s) {', '.join(sweeps)} (a,b / range / choice) are only "
                         "understood by experiments/fusion_depth; quote a value that holds a comma")  # fmt: skip


def sweep_points(sweeps: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """The grid of a sweep, in Hydra's order (the last key varies fastest)."""
    keys = list(sweeps)
    return [dict(zip(keys, values)) for values in product(*(sweeps[k] for k in keys))]


# --- running ---------------------------------------------------------------------------------
def demo_command(out_dir: Path, overrides: Sequence[str]) -> list[str]:
    """The damo-demo process of one run (tests replace this function)."""
    return [sys.executable, "-m", "damo_lit.cli.demo", f"demo.out_dir={out_dir}", *overrides]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_complete(summary: Any) -> bool:
    """damo-demo writes seconds.total only after its last stage; a failed pipeline leaves none."""
    return isinstance(summary, dict) and "total" in summary.get("seconds", {}) and "stages" in summary


def final_metrics(summary: Mapping[str, Any]) -> tuple[str | None, dict[str, float]]:
    """(stage, test metrics) of the last grounding stage that ran: stage4, else stage3."""
    stages = summary.get("stages", {})
    for key in FINAL_STAGES:
        metrics = stages.get(key) or {}
        if any(k.startswith("test/R@") for k in metrics):
            return key, dict(metrics)
    return None, {}


def _tee(cmd: Sequence[str], log_path: Path, echo: bool = True, env: Mapping[str, str] | None = None) -> int:
    """Run `cmd`, its output in `log_path` and (with `echo`) on the console."""
    with log_path.open("w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     text=True, bufsize=1, env=env) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
            log.write(line)
        return proc.wait()


# Hydra's compose API keeps global state: runs side by side (exp.jobs > 1) compose one at a time.
_COMPOSE_LOCK = threading.Lock()


def stage_config(extra: Sequence[str]) -> Any:
    """The training config the demo's stages compose from these words: conf/demo.yaml's overrides
    for every stage, then the stage words among them (the demo.* ones set the demo instead)."""
    from damo_lit.cli.common import compose
    from damo_lit.cli.demo import split_overrides

    demo_words, stage_words = split_overrides(list(extra))
    with _COMPOSE_LOCK:
        return compose("train", [*compose("demo", demo_words).common, *stage_words])


def data_config(extra: Sequence[str]) -> Any:
    """The data config the demo runs read (data=..., data.root=..., ... among the words)."""
    return stage_config(extra).data


# --- the same run elsewhere ------------------------------------------------------------------
def _restated_model_defaults(overrides: Sequence[str]) -> set[str]:
    """The `model.K=V` words of `overrides` whose V is what the model config says anyway (e.g.
    model.fuseformer.depth=2 where depth is 2), given the other words."""
    from omegaconf import OmegaConf

    value_words = [w for w in overrides if override_key(w).startswith("model.") and not w.startswith(("+", "~"))]
    if not value_words:
        return set()
    cfg = stage_config([w for w in overrides if w not in value_words])
    restated = set()
    for word, override in zip(value_words, _parse(value_words)):
        current = OmegaConf.select(cfg, override.key_or_group, default=object())
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        if current == override.value():
            restated.add(word)
    return restated


def canonical_words(overrides: Sequence[str]) -> list[str]:
    """The override words with absolute path values resolved (symlinks, `..`), so that a checkout
    reached through another path (a clone whose outputs/ links here) names the same run."""
    def canonical(word: str) -> str:
        key, sep, value = word.partition("=")
        if sep and value.startswith("/"):
            return f"{key}={os.path.realpath(value)}"
        return word
    return [canonical(w) for w in overrides]


def run_identity(overrides: Sequence[str]) -> list[str]:
    """What makes two runs the same run: their override words (paths resolved), sorted, without those
    that restate a model default. The stage budgets come from conf/demo.yaml, the same for every run
    of a checkout."""
    restated = _restated_model_defaults(overrides)
    return sorted(canonical_words(w for w in overrides if w not in restated))


DEMO_RECIPE_KEYS = ("common", "features", "stages")
# The composed groups a demo run's stages read besides conf/demo.yaml: their defaults are the recipe too.
RECIPE_GROUPS = ("model", "data", "trainer")
# Tower keys that change memory, not results: a run made before one existed, or with another value,
# is the same run.
NOT_IN_RECIPE = {"vision": MEMORY_ONLY_TOWER_KEYS, "audio": MEMORY_ONLY_TOWER_KEYS}


def demo_recipe() -> str:
    """A fingerprint of the recipe: conf/demo.yaml (the overrides every stage gets, the feature
    cache, the stages and their budgets; comments aside) and the defaults its stages compose (the
    model, data and trainer configs, each stage's config), unresolved. A run made under another
    recipe (say, before damo_tiny's default depth changed) is another run, never reused for this one."""
    import omegaconf

    cfg = omegaconf.OmegaConf.load(CONF_DIR / "demo.yaml")
    recipe = {k: omegaconf.OmegaConf.to_container(cfg[k]) for k in DEMO_RECIPE_KEYS if k in cfg}
    stages = tuple(str(stage.get("stage")) for stage in (cfg.get("stages") or {}).values() if stage.get("stage"))
    recipe["composed"] = _composed_defaults(tuple(cfg.get("common") or ()), stages)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def _composed_defaults(common: tuple[str, ...], stages: tuple[str, ...]) -> dict[str, Any]:
    """RECIPE_GROUPS and each stage's `stage` node as conf/train.yaml composes them under `common`,
    interpolations left as written (so that two checkouts in other folders agree)."""
    from omegaconf import OmegaConf

    from damo_lit.cli.common import compose

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node

    with _COMPOSE_LOCK:
        base = compose("train", list(common))
        out = {group: plain(base.get(group)) for group in RECIPE_GROUPS}
        for part, keys in NOT_IN_RECIPE.items():
            for key in keys:
                (out["model"].get(part) or {}).pop(key, None)
        out["stages"] = {name: plain(compose("train", [*common, f"stage={name}"]).stage) for name in stages}
    return out


def find_twin(out_dir: Path, overrides: Sequence[str], root: Path) -> Path | None:
    """A finished run under root/*/ (any experiment) that is the same run as `overrides`, made
    under the current demo recipe."""
    identity: list[str] | None = None
    recipe = demo_recipe()
    def outside_model(words: Sequence[str]) -> list[str]:
        return sorted(w for w in words if not override_key(w).startswith("model."))

    plain = outside_model(canonical_words(overrides))
    for run_json in sorted(root.glob("*/*/run.json")):
        other = run_json.parent
        recorded = read_json(run_json) or {}
        words = recorded.get("overrides")
        if other.resolve() == out_dir.resolve() or not isinstance(words, list) or recorded.get("same_as"):
            continue
        if recorded.get("recipe") != recipe:
            continue
        if outside_model(canonical_words(words)) != plain:
            continue  # cheap test first: runs that differ outside model.* are never the same
        if not is_complete(read_json(other / "summary.json")):
            continue
        identity = run_identity(overrides) if identity is None else identity
        if run_identity(words) == identity:
            return other
    return None


def reuse_twin(run: Run, out_dir: Path, overrides: list[str], twin: Path) -> Outcome:
    """out_dir gets the twin's summary.json and a run.json that names it (same_as)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shutil.copyfile(twin / "summary.json", out_dir / "summary.json")
    (out_dir / "run.json").write_text(json.dumps({"name": run.name, "label": run.label, "overrides": overrides,
                                                  "recipe": demo_recipe(), "same_as": str(twin)}, indent=2))  # fmt: skip
    print(f"{run.name}: the same run as {twin} (its summary reused; --force runs it again)", flush=True)
    return Outcome(run, out_dir, "reused", read_json(out_dir / "summary.json"))


def run_one(run: Run, out_dir: Path, overrides: list[str], force: bool = False, collect: bool = False,
            echo: bool = True, threads: int | None = None, twins_root: Path | None = None) -> Outcome:
    """Run (or reuse, or with `collect` only read) one demo into `out_dir`. Without `force`, a
    finished run of the same run in another experiment's folder under `twins_root` is reused too."""
    summary = read_json(out_dir / "summary.json")
    if collect:
        return Outcome(run, out_dir, "reused", summary) if is_complete(summary) else Outcome(run, out_dir, "missing")
    recorded = read_json(out_dir / "run.json") or {}
    if is_complete(summary) and not force:
        same_words = canonical_words(recorded.get("overrides") or []) == canonical_words(overrides)
        if same_words and recorded.get("recipe") == demo_recipe():
            print(f"reusing {out_dir / 'summary.json'} (--force runs it again)", flush=True)
            return Outcome(run, out_dir, "reused", summary)
        why = (f"other overrides ({recorded.get('overrides')})" if not same_words else
               f"another demo recipe ({recorded.get('recipe') or 'not recorded'}; now {demo_recipe()}: "
               f"conf/demo.yaml's stages or the model, data or stage defaults changed)")
        print(f"{out_dir}: made with {why}; running it again", flush=True)
    twin = None if force or twins_root is None else find_twin(out_dir, overrides, twins_root)
    if twin is not None:
        return reuse_twin(run, out_dir, overrides, twin)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cmd = demo_command(out_dir, overrides)
    (out_dir / "run.json").write_text(json.dumps({"name": run.name, "label": run.label, "overrides": overrides,
                                                  "recipe": demo_recipe(), "command": cmd, "threads": threads},
                                                 indent=2, default=str))  # fmt: skip
    print("    " + " ".join(cmd), flush=True)
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    code = _tee(cmd, out_dir / "demo.log", echo=echo, env=env)
    summary = read_json(out_dir / "summary.json")
    if code != 0 or not is_complete(summary):
        return Outcome(run, out_dir, "failed", summary, f"damo-demo exit code {code}; log: {out_dir / 'demo.log'}")
    return Outcome(run, out_dir, "ran", summary)


def stages_folder(outcome: Outcome) -> Path:
    """The folder that holds the run's stage folders: its own, or the one it was reused from (same_as)."""
    same_as = (read_json(outcome.out_dir / "run.json") or {}).get("same_as")
    return Path(same_as) if same_as else outcome.out_dir


def recorded_overrides(outcome: Outcome) -> list[str]:
    """The damo-demo overrides the run was made with (its run.json)."""
    return list((read_json(outcome.out_dir / "run.json") or {}).get("overrides") or [])


def select(runs: Sequence[Run], only: Sequence[str]) -> list[Run]:
    if not only:
        return list(runs)
    names = [r.name for r in runs]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise SystemExit(f"exp.only: unknown run(s) {unknown}; this experiment has {names}")
    return [r for r in runs if r.name in only]


def run_all(runs: Sequence[Run], opts: Options) -> list[Outcome]:
    """Run the selected runs, exp.jobs at a time (see the module docstring for the order of overrides).
    With more than one job, each run's output goes to its demo.log only, and each gets cores/jobs threads."""
    chosen = select(runs, opts.only)
    base = [*(QUICK_OVERRIDES if opts.quick else []), *opts.extra]
    jobs = min(opts.jobs, max(len(chosen), 1))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    # Runs are shared between experiments only in the default layout (outputs/experiments/<experiment>/).
    root = OUT_ROOT.resolve()  # opts.out is resolved: outputs/ may be a link to scratch storage
    twins_root = root if opts.out.is_relative_to(root) else None

    def one(i: int, run: Run) -> Outcome:
        if not opts.collect:
            print(f"\n##### {opts.name} [{i}/{len(chosen)}] {run.name} -> {opts.out / run.name}", flush=True)
        t0 = time.time()
        outcome = run_one(run, opts.out / run.name, [*base, *run.overrides], opts.force, opts.collect,
                          echo=jobs == 1, threads=threads, twins_root=twins_root)  # fmt: skip
        if outcome.status in ("ran", "failed"):
            print(f"##### {run.name}: {outcome.status} after {(time.time() - t0) / 60:.1f} min", flush=True)
        return outcome

    if jobs == 1 or opts.collect:
        return [one(i, run) for i, run in enumerate(chosen, 1)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, range(1, len(chosen) + 1), chosen))


# --- tables ----------------------------------------------------------------------------------
Column = tuple[str, Callable[[Outcome], str]]


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def label_columns(outcomes: Sequence[Outcome]) -> list[Column]:
    headers: list[str] = []
    for outcome in outcomes:
        headers += [h for h in outcome.run.label if h not in headers]
    return [(h, lambda o, h=h: str(o.run.label.get(h, ""))) for h in headers]


def metric_columns() -> list[Column]:
    return [(header, lambda o, key=key: fmt(o.value(key))) for header, key in METRICS]


def standard_columns(outcomes: Sequence[Outcome], extra: Sequence[Column] = ()) -> list[Column]:
    """Label columns, the stage the figures come from, METRICS, `extra`, minutes."""
    return [*label_columns(outcomes), ("stage", lambda o: o.final_stage or o.status), *metric_columns(), *extra,
            ("minutes", lambda o: fmt(o.minutes, 1))]  # fmt: skip


def write_results(outcomes: Sequence[Outcome], opts: Options, title: str, columns: Sequence[Column],
                  notes: Sequence[str] = ()) -> str:
    """OUT/results.md (title, table, notes, failures) and OUT/results.json; returns the markdown."""
    table = markdown_table([h for h, _ in columns], ([cell(o) for _, cell in columns] for o in outcomes))
    failures = [f"- {o.run.name}: {o.status} {o.error}".rstrip() for o in outcomes if o.status in ("failed", "missing")]
    parts = [f"# {title}", "", table, ""]
    parts += [*notes, ""] if notes else []
    parts += ["Runs without figures:", *failures, ""] if failures else []
    parts += [code_note(outcomes), ""]
    parts += [f"Figures: test split, final stage of each run (stage4, else stage3). Runs in {opts.out}"
              + (" (--quick budgets: not results)" if opts.quick else "") + "."]  # fmt: skip
    markdown = "\n".join(parts) + "\n"
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.md").write_text(markdown)
    rows = [{"name": o.run.name, "label": o.run.label, "status": o.status, "out_dir": str(o.out_dir),
             "final_stage": o.final_stage, "minutes": o.minutes, "metrics": o.metrics, "error": o.error,
             "commit": o.commit}
            for o in outcomes]  # fmt: skip
    (opts.out / "results.json").write_text(json.dumps({"experiment": opts.name, "quick": opts.quick,
                                                       "extra": opts.extra, "runs": rows}, indent=2))  # fmt: skip
    return markdown


def code_note(outcomes: Sequence[Outcome]) -> str:
    """Which commits the rows come from: a run is reused while its configs stay the same (the
    recipe), even when the code changed since; `--force` runs it again at this checkout."""
    from damo_lit.cli.demo import code_version, commit_label

    by_commit: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.summary:
            by_commit.setdefault(outcome.commit, []).append(outcome.run.name)
    made = "; ".join(f"{commit}: {', '.join(names)}" for commit, names in by_commit.items())
    current = commit_label(code_version())
    stale = any(commit != current for commit in by_commit)
    return (f"Code of each run (git commit; + = uncommitted changes, ? = not recorded): {made or 'none'}. "
            f"This checkout: {current}" + (" (rows from other commits: --force reruns them here)." if stale else "."))


def finish(outcomes: Sequence[Outcome], opts: Options, markdown: str) -> int:
    """Print the table and where it is; 1 when a run failed (or, collecting, none was there)."""
    print("\n" + markdown)
    print(f"results: {opts.out / 'results.md'}, {opts.out / 'results.png'}")
    failed = [o.run.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or not any(o.summary for o in outcomes) else 0


# --- plots -----------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(path: Path, series: Mapping[str, Sequence[tuple[float, float | None]]], *, xlabel: str,
               ylabel: str, title: str, dashed: Sequence[str] = (), logx: bool = False) -> Path:
    """One line per series of (x, y) points (None y: left out); series named in `dashed` are dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    xs_all: set[float] = set()
    for name, points in series.items():
        pts = [(x, y) for x, y in points if y is not None]
        xs_all.update(x for x, _ in pts)
        style = {"linestyle": "--", "color": "grey"} if name in dashed else {"marker": "o"}
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], label=name, **style)
    if logx:
        ax.set_xscale("log", base=2)
    if xs_all:
        ax.set_xticks(sorted(xs_all), [f"{x:g}" for x in sorted(xs_all)])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(path: Path, categories: Sequence[str], groups: Mapping[str, Sequence[float | None]], *,
              ylabel: str, title: str, hlines: Mapping[str, float | None] | None = None) -> Path:
    """Grouped bars: one group per category, one bar per `groups` entry (None: no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(categories) + 2), 4.4), dpi=110)
    width = 0.8 / max(len(groups), 1)
    for i, (name, values) in enumerate(groups.items()):
        xs = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [math.nan if v is None else v for v in values], width, label=name)  # nan: no bar
    for j, (name, y) in enumerate((hlines or {}).items()):
        if y is not None:
            ax.axhline(y, linestyle="--", color=f"C{len(groups) + j}", label=name)
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
