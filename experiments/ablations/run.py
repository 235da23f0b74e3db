"""make exp-ablations: what each part of DaMO is worth, one full damo-demo run per variant.

    python experiments/ablations/run.py [--quick] [--force] [--collect] [exp.only=[A,B]] [KEY=VALUE ...]
    make exp-ablations [KEY=VALUE ...]

Variants (folder names, for exp.only):
  full          the embedded default (damo_tiny, stages 1-4)
  no_audio      model.audio.enabled=false: no audio stream at all
  no_residual   model.residual.enabled=false: plain pooling instead of the global residual
  concat        model.fuseformer.kind=concat: the streams concatenated, no T-Fuseformer
  skip_stage1   demo.skip=[stage1]: no video-text alignment
  skip_stage3   demo.skip=[stage3]: no temporal perception stage (stage 4 straight after 2)

The audio check: on the test split's audio-only grounding queries the no-audio model must do
no better than a constant-span baseline on the same queries + 0.05: the stronger of the
training set's mean relative span (what the runs log as test/baseline_*) and the one relative
span with the best training R@0.5 (experiments/priors `best`), both fitted on the train split of
the data the runs read (data.root / data.annotations; without those annotations, the runs' own
test/baseline_R@0.5_audio). If it does better, the synthetic picture gives the audio answers away. The table has
the check per variant (the full model should fail it, by a wide margin) and a verdict below it.
The shuffle test (experiments/ablations/shuffle.py) then asks the question without a prior:
damo-eval runs the full and the no-audio model over the test grounding queries (once, into
RUN/eval_test/), and their answers on audio-only queries are handed to other audio-only queries;
only a model that reads the answer from the media loses R@0.5 by it. Figures in OUT/shuffle.json.

Leaves OUT/results.md, results.json and results.png (R@0.5 overall and per query modality, per
variant, with the baseline). OUT: outputs/experiments/ablations.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments import common  # noqa: E402
from experiments.ablations import shuffle  # noqa: E402
from experiments.priors import run as priors  # noqa: E402

NAME = "ablations"
VARIANTS = [
    common.Run("full", {"variant": "full model"}),
    common.Run("no_audio", {"variant": "no audio"}, ["model.audio.enabled=false"]),
    common.Run("no_residual", {"variant": "no global residual"}, ["model.residual.enabled=false"]),
    common.Run("concat", {"variant": "concat fusion"}, ["model.fuseformer.kind=concat"]),
    common.Run("skip_stage1", {"variant": "skip stage 1"}, ["demo.skip=[stage1]"]),
    common.Run("skip_stage3", {"variant": "skip stage 3"}, ["demo.skip=[stage3]"]),
]
MARGIN = 0.05
AUDIO_HEADER = f"audio R@0.5 ≤ const. span+{MARGIN:g}"
BEST_SPAN = "the best constant span"


def data_annotations(extra: list[str]) -> Path | None:
    """The annotations folder the runs read (the composed data config's data.annotations); None
    where the words do not compose into a config (the runs then report their own failure)."""
    from hydra.errors import HydraException

    try:
        return Path(common.data_config(extra).annotations)
    except HydraException:
        return None


@dataclass(frozen=True)
class SpanPriors:
    """What constant spans fitted on the training split reach on the test split's audio-only
    grounding queries (experiments/priors: no media, no test peeking)."""

    mean_span: float  # the training set's mean relative span (what the runs log as test/baseline_*)
    best_span: float  # the one relative span with the best training R@0.5
    queries: int


def span_priors(annotations: Path | None) -> SpanPriors | None:
    """SpanPriors of a DaMO JSONL folder; None where the annotations or such queries are missing."""
    if annotations is None:
        return None
    files = [annotations / f"{split}.jsonl" for split in ("train", "test")]
    if not all(f.is_file() for f in files):
        return None
    train, test = (priors.grounding_queries(f) for f in files)
    audio = [q for q in test if q.modality == "audio"]
    if not train or not audio:
        return None
    return SpanPriors(priors.recall(priors.constant_prior(train), audio),
                      priors.recall(priors.duration_prior(train, bins=1), audio), len(audio))  # fmt: skip


@dataclass(frozen=True)
class AudioCheck:
    """On audio-only queries a model without audio may reach a constant-span guess and no more (+MARGIN).

    Two constant-span baselines, both fitted on the training split: the mean relative span (the
    runs' test/baseline_*) and the one relative span with the best training R@0.5. The mean span
    is a weak guess when events start anywhere in a video (its centred span misses most of them),
    and a model that sees no audio still learns the better constant guess from the training
    answers, so the check holds a run to the stronger of the two. With the annotations at hand,
    every figure is on the test split's audio-only grounding queries (test/grounding_R@0.5_audio
    in stage 4, whose test adds the dialogues); without them, on the run's own figures."""

    priors: SpanPriors | None

    @staticmethod
    def audio(o: common.Outcome) -> float | None:
        value = o.value("test/grounding_R@0.5_audio")
        return value if value is not None else o.value("test/R@0.5_audio")

    def mean_span(self, o: common.Outcome) -> float | None:
        if self.priors is not None:
            return self.priors.mean_span
        value = o.value("test/baseline_R@0.5_audio")
        return value if value is not None else o.value("test/baseline_R@0.5")

    def reference(self, o: common.Outcome) -> float | None:
        known = [v for v in (self.mean_span(o), self.priors and self.priors.best_span) if v is not None]
        return max(known) if known else None

    def holds(self, o: common.Outcome) -> bool | None:
        """Audio-only R@0.5 <= reference + MARGIN; None without the figures."""
        audio, reference = self.audio(o), self.reference(o)
        return None if audio is None or reference is None else audio <= reference + MARGIN

    def cell(self, o: common.Outcome) -> str:
        verdict = self.holds(o)
        return "–" if verdict is None else ("yes" if verdict else "no")


def verdict(outcomes: list[common.Outcome], check: AudioCheck) -> list[str]:
    """The sentences under the table: does the no-audio model fall to a constant span on audio queries?"""
    by_name = {o.run.name: o for o in outcomes}
    no_audio, full = by_name.get("no_audio"), by_name.get("full")
    if no_audio is None or check.holds(no_audio) is None:
        return ["Audio check: no figures for the no-audio model on audio-only queries."]
    audio, mean = check.audio(no_audio), check.mean_span(no_audio)
    reference, holds = check.reference(no_audio), check.holds(no_audio)
    where = (f"the test split's {check.priors.queries} audio-only grounding queries" if check.priors
             else "audio-only queries")
    baselines = f"the mean span {common.fmt(mean)}"
    if check.priors is not None:
        baselines += f", {BEST_SPAN} {common.fmt(check.priors.best_span)} (both fitted on the training split)"
    lines = [f"Audio check on {where}: the no-audio model reaches R@0.5 {common.fmt(audio)}; constant-span "
             f"baselines: {baselines}. {common.fmt(audio)} {'≤' if holds else '>'} "
             f"{common.fmt(reference)} + {MARGIN:g}: "
             + ("the model without audio does no better than a constant guess; the audio answers come from the "
                "audio stream." if holds else "NOT within the margin: the picture gives audio answers away "
                "(see the shuffle test below).")]  # fmt: skip
    if holds and mean is not None and audio is not None and audio > mean + MARGIN:
        lines.append(f"Against the mean span alone it would fail ({common.fmt(audio)} > {common.fmt(mean)} + "
                     f"{MARGIN:g}): the mean span is not the best constant guess on this data, and the model "
                     "learns the better one.")  # fmt: skip
    if full is not None and check.audio(full) is not None:
        lines.append(f"The full model reaches {common.fmt(check.audio(full))} on the same queries.")
    return lines


SHUFFLED_RUNS = ("full", "no_audio")


def shuffle_tests(outcomes: list[common.Outcome], opts: common.Options) -> dict[str, shuffle.ShuffleResult]:
    """The shuffle test of the full and the no-audio run, where they finished (damo-eval when needed)."""
    results = {}
    for o in outcomes:
        if o.run.name not in SHUFFLED_RUNS or o.summary is None or o.final_stage is None:
            continue
        predictions = shuffle.predictions_of(common.stages_folder(o), o.final_stage, common.recorded_overrides(o),
                                             limit=16 if opts.quick else None, run=not opts.collect)  # fmt: skip
        result = None if predictions is None else shuffle.shuffle_test(shuffle.read_predictions(predictions))
        if result is not None:
            results[o.run.name] = result
    if results:
        (opts.out / "shuffle.json").parent.mkdir(parents=True, exist_ok=True)
        (opts.out / "shuffle.json").write_text(json.dumps(
            {name: {**vars(r), "drop": r.drop} for name, r in results.items()}, indent=2))  # fmt: skip
    return results


def shuffle_lines(results: dict[str, shuffle.ShuffleResult]) -> list[str]:
    """What the shuffle test says, under the table."""
    if not results:
        return []
    lines = [f"Shuffle test (damo-eval over the test grounding queries; each model's answers on audio-only "
             f"queries, as shares of the video's length, handed to other audio-only queries, "
             f"{shuffle.SHUFFLES} permutations):"]  # fmt: skip
    for name, r in results.items():
        lines.append(f"- {name}: R@0.5 {common.fmt(r.own)} with its own answers, {common.fmt(r.shuffled)} shuffled "
                     f"(95th percentile {common.fmt(r.shuffled_p95)}; {r.queries} queries)")  # fmt: skip
    no_audio = results.get("no_audio")
    if no_audio is not None:
        leaks = no_audio.own > no_audio.shuffled_p95
        lines.append("The no-audio model's audio answers "
                     + ("do better on their own videos than shuffled beyond chance: the picture says something "
                        "about the audio events (a leak to fix in the synthetic set)." if leaks else
                        "do no better on their own videos than on others' (within chance): it answers audio "
                        "queries from a prior, not from the picture, so the picture gives no audio answer away."))
    return lines


def plot(outcomes: list[common.Outcome], check: AudioCheck, path: Path) -> Path:
    groups = {header: [o.value(key) for o in outcomes] for header, key in (
        ("R@0.5", "test/R@0.5"), ("R@0.5 audio", "test/R@0.5_audio"), ("R@0.5 visual", "test/R@0.5_visual"),
        ("R@0.5 audio-visual", "test/R@0.5_audio-visual"))}  # fmt: skip
    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    audio_limit = mean([check.reference(o) for o in outcomes])
    hlines = {"baseline R@0.5": mean([o.value("test/baseline_R@0.5") for o in outcomes]),
              f"audio check: constant span + {MARGIN:g}": None if audio_limit is None else audio_limit + MARGIN}
    return common.plot_bars(path, [str(o.run.label["variant"]) for o in outcomes], groups, ylabel="test R@0.5",
                            title="Ablations (damo_tiny, synthetic test split)", hlines=hlines)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = common.parse_args(argv, NAME, __doc__)
    common.reject_sweeps(opts.extra, NAME)
    outcomes = common.run_all(VARIANTS, opts)
    check = AudioCheck(span_priors(data_annotations(opts.extra)))
    columns = common.standard_columns(outcomes, [(AUDIO_HEADER, check.cell)])
    notes = [*verdict(outcomes, check), *shuffle_lines(shuffle_tests(outcomes, opts))]
    markdown = common.write_results(outcomes, opts, "Ablations: test grounding without each part of DaMO",
                                    columns, notes)  # fmt: skip
    plot(outcomes, check, opts.out / "results.png")
    return common.finish(outcomes, opts, markdown)


if __name__ == "__main__":
    sys.exit(main())
