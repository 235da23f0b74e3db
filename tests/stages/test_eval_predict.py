"""damo-eval and damo-predict on a small checkpoint that the test trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from damo_lit.cli.common import compose, compose_run
from damo_lit.cli.train import run
from damo_lit.data.timestamps import parse_spans

QUIETED = ("Loading weights", "GPU available")  # transformers' and Lightning's noise, off in these commands


@pytest.fixture(scope="module")
def stage3_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage3_run")
    overrides = [f"data.root={synthetic_root}", f"data.decoded_cache_dir={synthetic_root / 'decoded'}",
                 "data.generate=null", "data.num_workers=0", "data.batch_size=4", "logger=csv",
                 "callbacks.progress_bar=null", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                 "trainer.max_steps=3", "trainer.limit_val_batches=0", "test_after_fit=false"]
    run(compose_run("train", ["stage=stage3_temporal", *overrides], out))
    return out


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600)


def _timestamps(run_dir: Path) -> str:
    return json.loads((run_dir / "stage.json").read_text())["timestamps"]


def _flat(pairs: list) -> list[float]:
    return [value for pair in pairs for value in pair]


def assert_spans_of_answer(spans: Any, answer: str, duration: float, fmt: str, digits: int | None = None) -> None:
    """`spans` are [start, end] pairs inside the video, and exactly the ones the answer states
    (so an answer that names a window can never come back with none, nor the reverse)."""
    assert isinstance(spans, list) and all(isinstance(s, list) and len(s) == 2 for s in spans), spans
    for start, end in spans:
        assert 0 <= start <= end <= duration + 1e-6, (spans, duration)
    expected = [[round(s, digits) if digits else s, round(e, digits) if digits else e]
                for s, e in parse_spans(answer, duration, fmt)]
    assert _flat(spans) == pytest.approx(_flat(expected), abs=0.01), answer


def test_damo_eval_writes_predictions_and_metrics_that_damo_score_agrees_with(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """Also: stdout is the metrics JSON alone (progress bars on stderr), and a record that the test
    split drops (data.on_bad_record=drop) is counted in metrics.json and named on stderr."""
    out = tmp_path / "eval"
    gt = synthetic_root / "annotations" / "test.jsonl"
    test_grounding = [r for r in map(json.loads, gt.read_text().splitlines()) if r["task"] == "grounding"]
    bad = dict(test_grounding[0], id="reversed-window", spans=[test_grounding[0]["spans"][0][::-1]])
    with_bad = tmp_path / "test_with_bad.jsonl"
    with_bad.write_text(gt.read_text() + json.dumps(bad) + "\n")
    done = _cli("damo_lit.cli.eval", f"ckpt={stage3_run}", f"data.root={synthetic_root}", "data.generate=null",
                f"data.decoded_cache_dir={synthetic_root / 'decoded'}", "data.num_workers=0", "split=test",
                f"data.splits.test={with_bad}", "data.on_bad_record=drop", f"out={out}", "accelerator=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in test_grounding)
    assert not (out / "predictions.jsonl.partial").exists(), "renamed once every answer is in"
    for row in rows:
        assert {"id", "video", "question", "answer", "pred_spans", "gt_spans", "duration", "modality", "iou"} <= set(row)
        assert Path(row["video"]).is_file()
        assert row["question"].startswith(("when", "at what time"))
        assert_spans_of_answer(row["pred_spans"], row["answer"], row["duration"], _timestamps(stage3_run))
    report = json.loads((out / "metrics.json").read_text())
    assert report["stage"] == "stage3" and report["split"] == "test"
    assert report["settings"] == {"limit": None, "prompt_style": "plain", "batch_size": 16, "max_new_tokens": 24,
                                  "model_overrides": [], "annotations": [str(with_bad)]}
    metrics = report["metrics"]
    assert metrics["test/count"] == len(rows)
    assert json.loads(done.stdout) == metrics  # one JSON object, nothing else on stdout
    assert "Predicting" in done.stderr and not any(noise in done.stderr for noise in QUIETED), done.stderr
    assert report["fixes"]["record_malformed_dropped"] == 1 and sum(report["fixes"].values()) == 1
    assert "fix-ups and drops: record_malformed_dropped=1" in done.stderr
    # The scorer reads the same files and must agree with the evaluation.
    scored = _cli("damo_lit.cli.score", "grounding", "--pred", str(out / "predictions.jsonl"), "--gt", str(gt))
    assert scored.returncode == 0, scored.stderr
    figures = json.loads(scored.stdout)
    for key in ("R@0.5", "mIoU", "parse_rate"):
        assert figures[key] == pytest.approx(metrics[f"test/{key}"], abs=1e-6)


def test_damo_eval_on_qvhighlights_writes_an_official_submission_and_its_figures(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """QVHighlights queries (the synthetic test split's grounding queries written in the official
    format): the answers become an official moment-retrieval submission, scored
    by the official evaluator, whose R1@0.5 is the grounding R@0.5 of the same answers."""
    test = [r for r in map(json.loads, (synthetic_root / "annotations" / "test.jsonl").read_text().splitlines())
            if r["task"] == "grounding"]
    official = tmp_path / "highlight_val_release.jsonl"
    with official.open("w") as handle:
        for qid, r in enumerate(test, start=7000):
            handle.write(json.dumps({"qid": qid, "query": r["turns"][0]["content"], "vid": Path(r["video"]).stem,
                                     "duration": r["duration"], "relevant_windows": r["spans"],
                                     "relevant_clip_ids": [], "saliency_scores": []}) + "\n")
    out = tmp_path / "eval"
    done = _cli("damo_lit.cli.eval", f"ckpt={stage3_run}", "data=qvhighlights", f"data.annotations={official}",
                f"data.video_dir={synthetic_root / 'videos'}", f"data.decoded_cache_dir={synthetic_root / 'decoded'}",
                "data.num_workers=0", "split=val", f"out={out}", "accelerator=cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "qvhighlights_submission.jsonl").read_text().splitlines()]
    assert sorted(line["qid"] for line in lines) == list(range(7000, 7000 + len(test)))  # the official ints
    rows = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    for line in lines:
        row = rows[f"qvhighlights-{line['qid']}"]
        assert line["vid"] == Path(row["video"]).stem and line["query"] in row["question"]  # asked as a question
        windows = line["pred_relevant_windows"]
        if row["pred_spans"]:
            assert [w[:2] for w in windows] == pytest.approx(row["pred_spans"], abs=1e-4)
            assert [w[2] for w in windows] == sorted((w[2] for w in windows), reverse=True)
        else:
            assert windows == [[0.0, 0.0, 0.0]]  # the evaluator reads a first window: a miss
    report = json.loads((out / "metrics.json").read_text())
    brief = report["qvhighlights"]["brief"]
    assert report["metrics"]["val/MR-full-R1@0.5"] == brief["MR-full-R1@0.5"]
    hits = sum(r["iou"] >= 0.5 for r in rows.values())  # iou: the top-1 window against its best-matching one
    assert brief["MR-full-R1@0.5"] == pytest.approx(100 * hits / len(rows), abs=0.01)
    scored = _cli("damo_lit.cli.score", "qvhighlights", "--pred", str(out / "qvhighlights_submission.jsonl"),
                  "--gt", str(official))
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["brief"] == brief


def test_qvhighlights_figures_are_the_official_ones_of_the_answers(shared_data: Path, tmp_path: Path) -> None:
    """Answers to 30 official validation queries (the first window exactly, a shifted one, or
    none): the submission scores R1@IoU as the answers' own top-1 IoUs say, through the official
    evaluator, on the queries answered."""
    from types import SimpleNamespace

    from damo_lit.cli.eval import qvhighlights_figures
    from damo_lit.data.collection import load_split
    from damo_lit.data.sources.base import SourceSpec
    from damo_lit.stages.reporting import span_iou

    official = shared_data / "qvhighlights" / "highlight_val_release.jsonl"
    spec = SourceSpec(format="qvhighlights", annotations=str(official), video_dir=str(tmp_path))
    samples = load_split([spec], "val").samples[:30]
    rows = []
    for i, sample in enumerate(samples):
        start, end = sample.record.spans[0]
        spans = [[[start, end]], [[start + (end - start) * 0.6, end + (end - start) * 0.6]], []][i % 3]
        rows.append({"id": sample.record.id, "pred_spans": spans, "iou": span_iou(tuple(spans[0]) if spans else None,
                                                                                  sample.record.spans)})
    datamodule = SimpleNamespace(splits={"val": SimpleNamespace(samples=samples)}, specs=[spec])
    figures = qvhighlights_figures(rows, datamodule, "val", tmp_path)
    for threshold in ("0.5", "0.7"):
        hits = sum(r["iou"] >= float(threshold) for r in rows)
        assert figures["brief"][f"MR-full-R1@{threshold}"] == pytest.approx(100 * hits / len(rows), abs=0.01)
    assert 0 < figures["brief"]["MR-full-R1@0.5"] < 100
    lines = (tmp_path / "qvhighlights_submission.jsonl").read_text().splitlines()
    assert [json.loads(line)["qid"] for line in lines] == [s.record.meta["qid"] for s in samples]
    elsewhere = SimpleNamespace(splits=datamodule.splits, specs=[SourceSpec(format="charades_sta", annotations="x")])
    assert qvhighlights_figures([{"id": "other", "pred_spans": []}], elsewhere, "val", tmp_path) is None
    assert not (tmp_path / "qvhighlights_submission.jsonl").exists(), "an earlier evaluation's submission is removed"


def test_decoding_progress_goes_to_stderr(synthetic_root: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    from damo_lit.data.cache import prepare
    from damo_lit.data.decode import DecodeParams

    video = sorted((synthetic_root / "videos").glob("test_*.mp4"))[0]
    report = prepare([video], tmp_path / "decoded", DecodeParams(num_frames=4, frame_size=32), workers=1)
    assert report.decoded == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "decoding 1 videos" in captured.err


@pytest.mark.parametrize("clip,has_audio", [("dog_barking.mp4", True), ("silence_girl.mp4", False)])
def test_damo_predict_on_real_clips(stage3_run: Path, shared_data: Path, clip: str, has_audio: bool) -> None:
    done = _cli("damo_lit.cli.predict", f"ckpt={stage3_run}", f"video={shared_data / 'videos' / clip}",
                "question=when does the dog bark?")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert not any(noise in done.stderr for noise in QUIETED), done.stderr
    assert answer["has_audio"] is has_audio
    assert isinstance(answer["answer"], str)
    assert answer["duration"] == pytest.approx({"dog_barking.mp4": 7.2, "silence_girl.mp4": 11.7}[clip], abs=0.3)
    # the 3-step checkpoint answers "" or a stray word: a parsed window is checked with a scripted answer below
    assert_spans_of_answer(answer["spans"], answer["answer"], answer["duration"], _timestamps(stage3_run), digits=2)


def test_damo_predict_returns_the_windows_an_answer_states(
        stage3_run: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a trained checkpoint's answer turns into, with the answer scripted (the test's checkpoint
    is too short-trained to name a window; training one that does would take minutes)."""
    import damo_lit.cli.checkpoint as checkpoint
    from damo_lit.cli.predict import predict
    from damo_lit.data.timestamps import format_span

    load = checkpoint.load_stage
    fmt = _timestamps(stage3_run)

    def scripted(*args: Any, **kwargs: Any) -> Any:
        stage = load(*args, **kwargs)

        def answer(batch: Any, embeds: Any, max_new_tokens: int) -> list[str]:
            duration = float(batch["duration"][0])
            return [f"it barks {format_span(1.0, 3.0, duration, fmt)}, again {format_span(6.5, 5.0, duration, fmt)}."]

        stage.generate_text = answer
        return stage

    monkeypatch.setattr(checkpoint, "load_stage", scripted)
    result = predict(compose("predict", [f"ckpt={stage3_run}", f"video={shared_data / 'videos' / 'dog_barking.mp4'}",
                                         "question=when does the dog bark?", "accelerator=cpu"]))
    assert _flat(result["spans"]) == pytest.approx([1.0, 3.0, 5.0, 6.5], abs=0.1)  # relative steps: 1% of 7.1 s
    assert_spans_of_answer(result["spans"], result["answer"], result["duration"], fmt, digits=2)


def test_damo_predict_answers_a_file_of_queries(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """queries=FILE: plain and QVHighlights lines answered in batches, in file order; a missing
    video is a row with its reason, not the end of the run; QVHighlights lines also make an
    official submission (answers scripted, as above)."""
    import damo_lit.cli.checkpoint as checkpoint
    from damo_lit.cli.predict import predict_many
    from damo_lit.data.timestamps import format_span

    load, fmt = checkpoint.load_stage, _timestamps(stage3_run)
    asked: list[int] = []
    ctrl_c_at = 0  # the batch (1-based) at which Ctrl-C comes; 0: never

    def scripted(*args: Any, **kwargs: Any) -> Any:
        stage = load(*args, **kwargs)

        def answer(batch: Any, embeds: Any, max_new_tokens: int) -> list[str]:
            asked.append(len(batch["question"]))
            if ctrl_c_at == len(asked):
                raise KeyboardInterrupt
            return ["no idea." if "nothing" in q else f"{format_span(1.0, 3.0, float(d), fmt)}."
                    for q, d in zip(batch["question"], batch["duration"])]

        stage.generate_text = answer
        return stage

    monkeypatch.setattr(checkpoint, "load_stage", scripted)
    videos = synthetic_root / "videos"
    names = sorted(p.name for p in videos.glob("*.mp4"))[:3]
    lines = [{"video": names[0], "question": "when does the tone sound?", "id": "a"},
             {"video": names[1], "question": "when does the cross appear?"},
             {"video": "gone.mp4", "question": "when?", "id": "missing"},
             {"qid": 9001, "query": "A red circle moves.", "vid": Path(names[2]).stem},
             {"qid": 9002, "query": "nothing happens", "vid": Path(names[0]).stem}]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    out = tmp_path / "answers"
    cfg = compose("predict", [f"ckpt={stage3_run}", "accelerator=cpu", "batch_size=2", "num_workers=0",
                              f"video_dir={videos}", f"out={out}"])
    summary = predict_many(cfg, str(queries))
    assert summary == {"out": str(out), "stage": "stage3", "queries": 5, "answered": 4, "with_spans": 3, "failed": 1,
                       "submission": str(out / "qvhighlights_submission.jsonl")}
    assert asked == [2, 1, 1]  # two per batch, the missing video left out of its batch
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", 2, "missing", 9001, 9002]  # a line without an id: its line number
    assert rows[3]["question"] == "when does this happen: A red circle moves?"  # as training asks QVHighlights
    assert "error" in rows[2] and "answer" not in rows[2]
    for row in (rows[0], rows[1], rows[3]):
        assert _flat(row["spans"]) == pytest.approx([1.0, 3.0], abs=0.25)
        assert_spans_of_answer(row["spans"], row["answer"], row["duration"], fmt, digits=2)
    submission = [json.loads(line) for line in (out / "qvhighlights_submission.jsonl").read_text().splitlines()]
    assert [(s["qid"], s["vid"]) for s in submission] == [(9001, Path(names[2]).stem), (9002, Path(names[0]).stem)]
    assert [w[2] for w in submission[0]["pred_relevant_windows"]] == [1.0]
    assert submission[1]["pred_relevant_windows"] == [[0.0, 0.0, 0.0]]
    assert not (out / "predictions.jsonl.partial").exists()
    assert "no answer for 'missing'" in capsys.readouterr().err
    # Ctrl-C at the second batch: exit 130, the first batch's answers kept in .partial and named
    from damo_lit.cli.predict import main as damo_predict

    asked.clear()
    ctrl_c_at = 2
    with pytest.raises(SystemExit) as stopped:
        damo_predict([f"ckpt={stage3_run}", "accelerator=cpu", "batch_size=2", "num_workers=0",
                      f"video_dir={videos}", f"out={out}", f"queries={queries}"])
    assert stopped.value.code == 130
    said = capsys.readouterr().err
    assert f"the 2 answers given so far are in {out / 'predictions.jsonl.partial'}" in said
    assert "damo-predict: interrupted (Ctrl-C)" in said and "Traceback" not in said
    assert len((out / "predictions.jsonl.partial").read_text().splitlines()) == 2
    assert not (out / "predictions.jsonl").exists(), "the last run's answers are not left as this one's"


def test_damo_predict_names_bad_query_lines_before_building_anything(stage3_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "question": "when?", "id": 1}\nnot json\n{"video": "b.mp4"}\n'
                   '{"video": "c.mp4", "question": "when?", "id": 1}\n{"qid": 3, "query": " ", "vid": "x"}\n')
    with bad.open("ab") as handle:
        handle.write(b'{"video": "d\xff.mp4", "question": "when?"}\n')
    message = _predict_error(f"ckpt={stage3_run}", f"queries={bad}")
    assert "5 bad line(s)" in message
    for number, reason in ((2, "not valid JSON (Expecting value"), (3, "missing 'question'"), (4, "id 1 repeats line 1"),
                           (5, "'query' must be a non-empty string"), (6, "not UTF-8 text")):
        assert f"{bad}:{number}: {reason}" in message
    assert "no such file" in _predict_error(f"ckpt={stage3_run}", f"queries={tmp_path / 'none.jsonl'}")
    both = _predict_error(f"ckpt={stage3_run}", f"queries={bad}", "video=a.mp4", "question=when?")
    assert "give one or the other" in both
    assert "queries=FILE" in _predict_error(f"ckpt={stage3_run}", "video=a.mp4")
    assert "batch_size=0" in _predict_error(f"ckpt={stage3_run}", f"queries={bad}", "batch_size=0")


def test_damo_predict_names_a_missing_video(stage3_run: Path, tmp_path: Path) -> None:
    done = _cli("damo_lit.cli.predict", f"ckpt={stage3_run}", f"video={tmp_path / 'nope.mp4'}", "question=when?")
    assert done.returncode != 0 and "nope.mp4" in done.stderr


@pytest.mark.parametrize("stage", ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"])
def test_damo_eval_scores_the_tasks_the_stage_evaluated_in_training(stage: str) -> None:
    """damo-eval's default tasks are the stage's own (stage 4: grounding queries and dialogues), so that
    its figures are the ones the run logged."""
    from damo_lit.cli.common import compose
    from damo_lit.cli.eval import stage_eval_tasks

    expected = list(compose("train", [f"stage={stage}"]).data.eval_tasks)
    assert stage_eval_tasks(stage.split("_")[0]) == expected
    if stage == "stage4_dialogue":
        assert expected == ["grounding", "dialogue"]


def test_retrieval_rows_rank_each_caption_as_the_metric_does() -> None:
    from damo_lit.cli.eval import retrieval_rows

    queries = [("t0", "a dog", "v0"), ("t1", "a cat", "v1"), ("t2", "a car", "v2")]
    sim = [[0.9, 0.1, 0.5], [0.2, 0.3, 0.3], [0.1, 0.8, 0.7]]  # t1 ties v2 with its own v1: rank 2
    rows = retrieval_rows(queries, sim, top_k=2)
    assert [r["rank"] for r in rows] == [1, 2, 2]
    assert [r["top_videos"] for r in rows] == [["v0", "v2"], ["v1", "v2"], ["v1", "v2"]]
    assert rows[1] == {"id": "t1", "caption": "a cat", "video": "v1", "rank": 2, "top_videos": ["v1", "v2"]}


def test_stage1_test_keeps_every_captions_retrieval_result(tiny_overrides: list[str], tmp_path: Path) -> None:
    """damo-eval's stage 1 rows come from the test run's own embeddings: their ranks give the
    figures the stage logs (16 training captions in 4 batches as the test set, the model untrained)."""
    import lightning as L

    from damo_lit.cli.eval import retrieval_callback
    from damo_lit.cli.train import build_run

    stage, datamodule, _ = build_run(compose_run("train", ["stage=stage1_align", *tiny_overrides], tmp_path))
    datamodule.setup("fit")
    rows = retrieval_callback()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[rows], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    (logged,) = trainer.test(stage, dataloaders=datamodule.train_dataloader(), verbose=False)
    ranks = [row["rank"] for row in rows.rows]
    assert len(ranks) == len({row["id"] for row in rows.rows}) == 16
    assert logged["test/t2v_MnR"] == pytest.approx(sum(ranks) / 16, abs=1e-5)
    assert logged["test/t2v_R@1"] == pytest.approx(sum(r == 1 for r in ranks) / 16, abs=1e-5)
    for row in rows.rows:
        assert len(row["top_videos"]) == 10 and row["caption"]
        assert (row["video"] in row["top_videos"]) or row["rank"] > 10


def test_grounding_figures_split_by_task_as_the_stage_logs_them() -> None:
    from damo_lit.cli.eval import grounding_figures

    rows = [{"task": "grounding", "pred_spans": [[0.0, 2.0]], "gt_spans": [[0.0, 2.0]], "modality": "audio"},
            {"task": "dialogue", "pred_spans": [], "gt_spans": [[1.0, 3.0]], "modality": None}]
    figures = grounding_figures(rows)
    assert figures["R@0.5"] == 0.5 and figures["count"] == 2
    assert grounding_figures(rows[:1])["R@0.5"] == 1.0 and grounding_figures(rows[1:])["R@0.5"] == 0.0
    assert all(v == v for v in figures.values()), "no NaN figures"


def test_damo_eval_names_a_split_without_samples(stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """An empty test split (as `damo-data synth --videos 5` writes) is an error naming the split and
    its file, not a crash on the trainer's empty result; damo-eval's keys are named as typed."""
    from damo_lit.cli.eval import main as damo_eval

    empty = tmp_path / "test.jsonl"
    empty.write_text("")
    common = [f"ckpt={stage3_run}", f"data.root={synthetic_root}", "data.generate=null", "data.num_workers=0",
              f"data.decoded_cache_dir={synthetic_root / 'decoded'}", "accelerator=cpu", f"out={tmp_path / 'eval'}"]
    with pytest.raises(SystemExit) as exit_info:
        damo_eval([*common, f"data.splits.test={empty}"])
    assert str(exit_info.value) == (
        f"damo-eval: data synthetic, split test ({empty}): no sample to evaluate (tasks grounding); pick another "
        "split or data source (split=..., data=..., data.splits.<split>=FILE)\n(DAMO_TRACEBACK=1 shows where)")
    for typed, message in (("tasks=[groundin]", "damo-eval: tasks must be"), ("limit=0", "damo-eval: limit must be")):
        with pytest.raises(SystemExit, match=message):
            damo_eval([*common, typed])


# ---------------------------------------------------------------- a user's mistakes: one line, exit status 1
def _user_error(main: Any, *words: str) -> str:
    """The message a command's `main` ends with for a user's mistake (SystemExit with text: status 1)."""
    with pytest.raises(SystemExit) as info:
        main(list(words))
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code


def _eval_error(*words: str) -> str:
    from damo_lit.cli.eval import main as damo_eval

    return _user_error(damo_eval, *words)


def _predict_error(*words: str) -> str:
    from damo_lit.cli.predict import main as damo_predict

    return _user_error(damo_predict, *words)


def _a_video(synthetic_root: Path) -> str:
    return str(sorted((synthetic_root / "videos").glob("test_*.mp4"))[0])


def test_damo_eval_and_damo_predict_name_a_file_that_is_no_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    text, empty, other = tmp_path / "notes.ckpt", tmp_path / "empty.ckpt", tmp_path / "other.ckpt"
    text.write_text("hello\n")  # torch.load: KeyError
    empty.write_bytes(b"")  # torch.load: EOFError
    torch.save({"a": torch.zeros(2)}, other)  # a torch file, but no damo-lit checkpoint
    unreadable = "not a damo-lit checkpoint: torch cannot read it"
    expected = {text: f"ckpt={text}: {unreadable} (it is no file that torch.save writes)",
                empty: f"ckpt={empty}: {unreadable} (the file is empty)",
                other: f"ckpt={other}: not a damo-lit checkpoint (no 'damo' entry and 'state_dict'"}
    for path, message in expected.items():
        assert _eval_error(f"ckpt={path}", "accelerator=cpu").startswith(f"damo-eval: {message}")
        said = _predict_error(f"ckpt={path}", f"video={_a_video(synthetic_root)}", "question=when?", "accelerator=cpu")
        assert said.startswith(f"damo-predict: {message}") and said.endswith("(DAMO_TRACEBACK=1 shows where)")


def _older_weights(run_dir: Path) -> dict[str, Any]:
    """The run's weights as older code would have saved them: one tensor of another shape."""
    from safetensors.torch import load_file

    state = load_file(str(run_dir / "weights.safetensors"))
    key = next(k for k, v in state.items() if k.startswith("residual.") and v.dim() == 2)
    state[key] = state[key][:, :-1].contiguous()
    return state


def test_weights_that_do_not_fit_name_both_causes_in_damo_eval_and_damo_predict(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """A checkpoint written by older code (its weights of other shapes, no version recorded) stops
    with a message that names another model config and another damo-lit version as the causes,
    from a run folder (damo-eval) and from a Lightning .ckpt (damo-predict: once a RuntimeError)."""
    from safetensors.torch import save_file

    from damo_lit import __version__
    from damo_lit.stages.weights import WEIGHTS_LAYOUT

    meta = json.loads((stage3_run / "stage.json").read_text())
    assert meta["damo_lit_version"] == __version__ and meta["weights_layout"] == WEIGHTS_LAYOUT  # what wrote it
    (ckpt,) = (stage3_run / "checkpoints").glob("last*.ckpt")
    written = torch.load(ckpt, weights_only=True)["damo"]
    assert written["damo_lit_version"] == __version__ and written["weights_layout"] == WEIGHTS_LAYOUT
    old_meta = {k: v for k, v in meta.items() if k not in ("damo_lit_version", "weights_layout")}
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    save_file(_older_weights(stage3_run), str(old_run / "weights.safetensors"))
    (old_run / "stage.json").write_text(json.dumps({**old_meta, "damo_lit_version": "0.0.9"}))
    causes = ("Either it was saved with another model config (model.fuseformer.depth, query counts, LoRA targets, ...), "
              "or by another version of damo-lit whose weights have other shapes")
    said = _eval_error(f"ckpt={old_run}", "accelerator=cpu")
    assert said.startswith(f"damo-eval: {old_run / 'weights.safetensors'}: 1 tensor(s) do not fit this model (residual.")
    this = f"this is damo-lit {__version__}, weights layout {WEIGHTS_LAYOUT}"
    assert f"{causes} (it records damo-lit 0.0.9; {this})" in said
    old_ckpt = tmp_path / "last.ckpt"
    old_state = {f"model.{k}": v for k, v in _older_weights(stage3_run).items()}
    torch.save({"damo": old_meta, "state_dict": old_state}, old_ckpt)
    said = _predict_error(f"ckpt={old_ckpt}", f"video={_a_video(synthetic_root)}", "question=when?", "accelerator=cpu")
    assert said.startswith(f"damo-predict: ckpt={old_ckpt}: 1 tensor(s) do not fit this model (model.residual.")
    assert f"{causes} (it records no damo-lit version, so the code that wrote it is not known;" in said


def test_a_checkpoint_without_the_version_record_still_loads(stage3_run: Path, tmp_path: Path) -> None:
    import shutil

    from damo_lit.cli.checkpoint import load_stage

    old_run = shutil.copytree(stage3_run, tmp_path / "old_run", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    meta = json.loads((old_run / "stage.json").read_text())
    (old_run / "stage.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "damo_lit_version"}))
    assert load_stage(old_run).stage_name == "stage3"


def test_damo_eval_names_ordinary_mistakes(stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """A synthetic set made with other parameters, an output folder that cannot be made and a GPU the
    machine lacks: one line each, naming what was wrong."""
    common = [f"ckpt={stage3_run}", f"data.root={synthetic_root}", "data.num_workers=0",
              f"data.decoded_cache_dir={synthetic_root / 'decoded'}"]
    said = _eval_error(*common, "accelerator=cpu", f"out={tmp_path / 'eval'}")  # data.generate: conf's 1000 videos
    assert said.startswith(f"damo-eval: the synthetic set in {synthetic_root} was generated with other parameters")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    said = _eval_error(*common, "data.generate=null", "accelerator=cpu", f"out={blocker}")
    assert said.startswith(f"damo-eval: out={blocker}: cannot make the output folder ({blocker} is a file, not a folder")
    if not torch.cuda.is_available():
        said = _eval_error(*common, "data.generate=null", "accelerator=gpu", f"out={tmp_path / 'eval'}")
        assert said.startswith("damo-eval: accelerator=gpu: this machine has no CUDA GPU (use accelerator=cpu or auto)")


# ---------------------------------------------------------------- what damo-eval writes, and keeps on a crash
def _eval_words(stage3_run: Path, synthetic_root: Path, *more: str) -> list[str]:
    return [f"ckpt={stage3_run}", f"data.root={synthetic_root}", "data.generate=null", "data.num_workers=0",
            f"data.decoded_cache_dir={synthetic_root / 'decoded'}", "accelerator=cpu", *more]


def test_damo_eval_keeps_the_answers_given_before_a_crash(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluation that stops half way (here an error in its second batch; Ctrl-C goes the same
    way) leaves the first batch's answers in predictions.jsonl.partial and says where; the next
    evaluation into the folder removes them before it starts."""
    from damo_lit.cli.eval import run_eval
    from damo_lit.stages.temporal import TemporalStage

    answer = TemporalStage.predict_step

    def failing(self: Any, batch: Any, batch_idx: int, *args: Any) -> Any:
        if batch_idx == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return answer(self, batch, batch_idx, *args)

    out = tmp_path / "eval"
    (out / "predictions.jsonl").parent.mkdir()
    (out / "predictions.jsonl").write_text('{"id": "an older evaluation"}\n')
    monkeypatch.setattr(TemporalStage, "predict_step", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        run_eval(compose("eval", _eval_words(stage3_run, synthetic_root, "batch_size=2", "limit=4", f"out={out}")))
    kept = [json.loads(line) for line in (out / "predictions.jsonl.partial").read_text().splitlines()]
    assert len(kept) == 2 and all(set(row) >= {"id", "answer", "pred_spans"} for row in kept)
    assert not (out / "predictions.jsonl").exists(), "the older evaluation's file is not left beside this one's"
    monkeypatch.setattr(TemporalStage, "predict_step", answer)
    report = run_eval(compose("eval", _eval_words(stage3_run, synthetic_root, "batch_size=2", "limit=4", f"out={out}")))
    assert report["settings"]["limit"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "predictions.jsonl"]
    assert [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()][:2] == [
        row["id"] for row in kept]


def test_damo_eval_default_folders_keep_other_settings_apart(tmp_path: Path) -> None:
    from damo_lit.cli.eval import default_output

    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "step000600.ckpt"
    run.mkdir()
    assert default_output(run, "synthetic", "test", None, None) == run / "eval" / "synthetic_test"
    assert default_output(ckpt, "synthetic", "test", None, None) == ckpt.parent / "eval" / "step000600_synthetic_test"
    assert default_output(run, "charades_sta", "val", ["grounding", "dialogue"], 8) == (
        run / "eval" / "charades_sta_val_grounding+dialogue_first8")


# ---------------------------------------------------------------- the prompt style the checkpoint was trained with
def _run_copy(stage3_run: Path, tmp_path: Path, **meta: Any) -> Path:
    import shutil

    copy = shutil.copytree(stage3_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    (copy / "stage.json").write_text(json.dumps({**json.loads((copy / "stage.json").read_text()), **meta}))
    return copy


def test_eval_and_predict_ask_in_the_prompt_style_the_checkpoint_was_trained_with(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """stage.json records data.prompt_style; a run trained with chat prompts is asked in chat
    prompts (here the tiny tokenizer has no chat template, which shows that chat was used), and
    prompt_style= (or data.prompt_style= for damo-eval) still chooses."""
    assert json.loads((stage3_run / "stage.json").read_text())["prompt_style"] == "plain"
    chat = _run_copy(stage3_run, tmp_path, prompt_style="chat")
    video = f"video={_a_video(synthetic_root)}"
    no_template = "chat template"
    assert no_template in _predict_error(f"ckpt={chat}", video, "question=when?", "accelerator=cpu")
    assert no_template in _eval_error(*_eval_words(chat, synthetic_root, "limit=2", f"out={tmp_path / 'e1'}"))
    from damo_lit.cli.eval import main as damo_eval
    from damo_lit.cli.predict import predict

    assert predict(compose("predict", [f"ckpt={chat}", video, "question=when?", "accelerator=cpu",
                                       "prompt_style=plain"]))["stage"] == "stage3"
    damo_eval(_eval_words(chat, synthetic_root, "limit=2", "data.prompt_style=plain", f"out={tmp_path / 'e2'}"))
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["settings"]["prompt_style"] == "plain"


def test_damo_predict_checks_the_question_video_and_stage_before_building_the_model(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import damo_lit.cli.checkpoint as checkpoint

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the input was checked")

    monkeypatch.setattr(checkpoint, "load_stage", never)
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("hello")
    video = f"video={_a_video(synthetic_root)}"
    assert "question is empty" in _predict_error(f"ckpt={stage3_run}", video, "question=  ", "accelerator=cpu")
    assert str(not_a_video) in _predict_error(f"ckpt={stage3_run}", f"video={not_a_video}", "question=when?",
                                              "accelerator=cpu")
    stage1 = _run_copy(stage3_run, tmp_path, stage="stage1")
    assert _predict_error(f"ckpt={stage1}", video, "question=when?", "accelerator=cpu").startswith(
        f"damo-predict: ckpt={stage1}: a stage1 checkpoint (video-text alignment) does not answer questions")


# ---------------------------------------------------------------- model.* keys change the checkpoint's model config
def test_model_keys_change_the_checkpoints_model_config(stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """model.KEY=VALUE applies to the config stored in the checkpoint (it was ignored: the eval
    config's own model group was replaced by the checkpoint's); model=NAME is refused, since the
    weights fit the checkpoint's model only."""
    from damo_lit.cli.checkpoint import load_stage
    from damo_lit.cli.common import split_model_overrides

    assert split_model_overrides(["split=val", "model.num_frames=4", "+model.x.y=1"], "damo-eval") == (
        ["num_frames=4", "x.y=1"], ["split=val"])
    stage = load_stage(stage3_run, model_overrides=["num_frames=4"])
    assert stage.model_cfg["num_frames"] == 4 and stage.model_cfg["vision"] == json.loads(
        (stage3_run / "stage.json").read_text())["model_cfg"]["vision"]
    said = _eval_error(*_eval_words(stage3_run, synthetic_root, "model.fuseformer.hidden=64", f"out={tmp_path}"))
    assert "do not fit this model" in said, said  # the narrower Fuseformer was built: the override applied
    for error in (_eval_error(*_eval_words(stage3_run, synthetic_root, "model=damo_paper")),
                  _predict_error(f"ckpt={stage3_run}", f"video={_a_video(synthetic_root)}", "question=when?",
                                 "model=damo_paper")):
        assert "model=damo_paper: the model config is the checkpoint's; change single keys of it" in error


def test_damo_eval_names_a_missing_checkpoint_a_sharded_one_and_unscorable_tasks(
        stage3_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    assert _eval_error(f"ckpt={tmp_path / 'nope'}").startswith(f"damo-eval: ckpt={tmp_path / 'nope'}: no such file")
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    assert _eval_error(f"ckpt={sharded}").startswith(f"damo-eval: ckpt={sharded}: a sharded (FSDP) training checkpoint")
    said = _eval_error(*_eval_words(stage3_run, synthetic_root, "tasks=[grounding,qa]", f"out={tmp_path / 'e'}"))
    assert said.startswith("damo-eval: tasks=qa: a stage3 checkpoint is scored on the time spans of its answers")
