"""damo-score end to end through a subprocess: grounding, qvhighlights, retrieval, help and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .helpers import assert_same_tree


def damo_score(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "damo_lit.cli.score", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def ok_json(*args: str | Path) -> dict:
    proc = damo_score(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # exactly one JSON object on stdout


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def record(rid: str, spans, modality=None, task="grounding") -> dict:
    answer = "At " + " and ".join(f"{{span:{i}}}" for i in range(len(spans))) + "."  # every span
    row = {"id": rid, "video": f"videos/{rid}.mp4", "duration": 20.0, "task": task, "spans": spans,
           "turns": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": answer}]}
    if modality:
        row["modality"] = modality
    return row


@pytest.fixture()
def grounding_files(tmp_path):
    gt = write_jsonl(tmp_path / "test.jsonl", [
        record("q1", [[2.0, 6.0]], "audio"),
        record("q2", [[0.0, 4.0], [10.0, 14.0]], "visual"),  # scored against the best of both
        record("q3", [[5.0, 9.0]], "audio-visual"),
        record("q4", [[1.0, 3.0]], "audio"),  # no prediction: a miss
        {"id": "c1", "video": "videos/c1.mp4", "duration": 20.0, "task": "caption", "caption": "a red square"},  # skipped
    ])
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": "q1", "pred_spans": [[6.0, 2.0], [0.0, 1.0]], "answer": "From 6 to 2 s."},  # reversed: IoU 1
        {"id": "q2", "pred_spans": [[11.0, 14.0]], "question": "When?"},  # IoU 0.75 with the second window
        {"id": "q3", "pred_spans": []},  # nothing parsed
        {"id": "zz", "pred_spans": [[0.0, 1.0]]},  # not in the ground truth
    ])
    return pred, gt


def test_dialogue_records_are_scored_as_damo_eval_scores_them(tmp_path):
    """Against the spans the final answer refers to; a caption is skipped (damo-eval's count once
    held 2 dialogues that damo-score called ids not in the ground truth)."""
    dialogue = record("d1", [[2.0, 6.0], [10.0, 14.0]], "visual", task="dialogue")
    dialogue["turns"] = [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "At {span:0}."},
                         {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "At {span:1}."}]
    gt = write_jsonl(tmp_path / "gt.jsonl", [record("g1", [[0.0, 4.0]]), dialogue,
                                              {"id": "c1", "video": "v.mp4", "duration": 9.0, "task": "caption",
                                               "caption": "a dog."}])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"id": "g1", "pred_spans": [[0.0, 4.0]]},
                                                 {"id": "d1", "pred_spans": [[10.0, 14.0]]}])
    out = ok_json("grounding", "--pred", pred, "--gt", gt)
    assert out["count"] == 2 and out["extra"] == 0 and out["skipped_unscored"] == 1 and out["R@0.7"] == 1.0
    pred.write_text(json.dumps({"id": "d1", "pred_spans": [[2.0, 6.0]]}) + "\n")  # the first turn's span: not the answer
    assert ok_json("grounding", "--pred", pred, "--gt", gt)["mIoU_visual"] == 0.0


def test_grounding_end_to_end(grounding_files, tmp_path):
    pred, gt = grounding_files
    out_file = tmp_path / "scores" / "grounding.json"
    out = ok_json("grounding", "--pred", pred, "--gt", gt, "--out", out_file)
    assert out["count"] == 4 and out["missing"] == 1 and out["missing_ids"] == ["q4"] and out["extra"] == 1
    assert out["skipped_unscored"] == 1
    assert out["R@0.5"] == 0.5 and out["R@0.7"] == 0.5 and out["mIoU"] == pytest.approx(1.75 / 4, abs=1e-6)
    assert out["parse_rate"] == 0.5  # q3 parsed nothing, q4 has no prediction
    assert out["R@0.5_audio"] == 0.5 and out["count_audio"] == 2
    assert out["mIoU_visual"] == 0.75 and out["R@0.5_audio-visual"] == 0.0
    assert json.loads(out_file.read_text()) == out


def test_grounding_from_eval_output_and_damo_predictions(tmp_path):
    eval_out = write_jsonl(tmp_path / "eval.jsonl", [
        {"id": "a", "pred_spans": [[0, 5]], "gt_spans": [[0, 10]], "modality": "visual", "duration": 12},
        {"id": "b", "pred_spans": [[float("nan"), 3]], "gt_spans": [[1, 3]], "duration": 12},
    ])
    out = ok_json("grounding", "--pred", eval_out, "--gt", eval_out, "--thresholds", "0.5")
    assert out["R@0.5"] == 0.5 and out["mIoU"] == 0.25 and out["count_visual"] == 1
    assert "R@0.3" not in out and out["missing"] == 0
    # predictions written as DaMO records: their spans are the predictions
    preds = write_jsonl(tmp_path / "pred_records.jsonl", [record("a", [[0.0, 10.0]]), record("b", [[2.0, 3.0]])])
    out = ok_json("grounding", "--pred", preds, "--gt", eval_out)
    assert out["mIoU"] == 0.75 and out["R@0.5"] == 1.0


def test_grounding_truth_records_may_give_a_window_end_first(grounding_files, tmp_path):
    pred, gt = grounding_files
    rows = [json.loads(line) for line in gt.read_text().splitlines()]
    for row in rows:
        if "spans" in row:
            row["spans"] = [span[::-1] for span in row["spans"]]
    reversed_gt = write_jsonl(tmp_path / "reversed.jsonl", rows)
    assert ok_json("grounding", "--pred", pred, "--gt", reversed_gt) == ok_json("grounding", "--pred", pred, "--gt", gt)


@pytest.mark.parametrize(
    "which, line, message",
    [
        ("pred", '{"id": "q1", "pred_spans": "3 to 5"}', "'pred_spans' must be a list of [start, end] pairs"),
        ("pred", '{"id": "q1"', "not valid JSON"),
        ("pred", '{"id": "q1", "answer": "x"}', "needs 'pred_spans'"),
        ("pred", '{"id": "q2", "pred_spans": [[1, 2]]}\n{"id": "q2", "pred_spans": [[1, 2]]}', "appears again"),
        ("gt", '{"id": "q9", "video": "v.mp4", "duration": 5, "task": "grounding", "spans": [[4, 9]], '
               '"turns": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "{span:0}"}]}',
         "lies outside the video"),
        ("gt", '{"id": "q9", "gt_spans": [[3, 3]]}', "'gt_spans' must hold"),
        ("gt", '{"id": "q9", "gt_spans": [[20, 30]], "duration": 10}', "'gt_spans' [[20.0, 30.0]] lie outside the video"),
        ("gt", '{"id": "q9", "video": "v.mp4", "duration": 5, "task": "grounding", "spans": [[3, 3]], '
               '"turns": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "{span:0}"}]}',
         "spans[0] is empty"),
        ("gt", '{"id": "q9", "gt_spans": [[1, 3]], "modality": "smell"}', "unknown modality 'smell'"),
    ],
)
def test_grounding_errors_name_file_and_line(grounding_files, which, line, message):
    pred, gt = grounding_files
    target = pred if which == "pred" else gt
    lines = target.read_text().splitlines()
    target.write_text("\n".join(lines[:1] + [line] + lines[1:]) + "\n")
    proc = damo_score("grounding", "--pred", pred, "--gt", gt)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{target}:2" in proc.stderr and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("rows, example", [
    ([], "the file holds none"),  # an empty predictions file
    ([{"id": "val-1", "pred_spans": [[2.0, 6.0]]}, {"id": "val-2", "pred_spans": []}], "e.g. 'val-1'"),  # another split
])
def test_grounding_without_one_shared_id_is_an_error(grounding_files, tmp_path, rows, example):
    """All-zero figures from files that share no id are a mix-up of files, not a model's score;
    a single missing id stays a miss (test_grounding_end_to_end)."""
    _, gt = grounding_files
    pred = write_jsonl(tmp_path / "other.jsonl", rows)
    proc = damo_score("grounding", "--pred", pred, "--gt", gt)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (f"{pred}: no prediction id matches any ground-truth id of {gt} (predictions: {example}; "
            "ground truth: e.g. 'q1')") in proc.stderr, proc.stderr


def test_qvhighlights_reproduces_every_official_number(shared_data, tmp_path):
    root = shared_data / "qvhighlights"
    out_file = tmp_path / "qvh.json"
    out = ok_json("qvhighlights", "--pred", root / "sample_val_preds.jsonl", "--gt",
                  root / "highlight_val_release.jsonl", "--out", out_file)
    official = json.loads((root / "sample_val_preds_metrics_raw.json").read_text())
    assert_same_tree(out, official, tol=0.01)
    for key in ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75",
                "MR-short-mAP", "MR-middle-mAP", "MR-long-mAP", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1"):
        assert key in out["brief"]
    assert json.loads(out_file.read_text()) == out


def test_qvhighlights_partial_sets(tmp_path):
    gt = write_jsonl(tmp_path / "gt.jsonl", [
        {"qid": 1, "duration": 20, "relevant_windows": [[0, 4]], "relevant_clip_ids": [0, 1], "saliency_scores": [[4, 4, 4], [1, 1, 1]]},
        {"qid": 2, "duration": 20, "relevant_windows": [[4, 8]], "relevant_clip_ids": [2], "saliency_scores": [[3, 3, 3]]},
    ])
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"qid": 1, "pred_relevant_windows": [[0, 4, 0.9]], "pred_saliency_scores": [1.0, 0.0]},
    ])
    proc = damo_score("qvhighlights", "--pred", pred, "--gt", gt)
    assert proc.returncode == 2 and "different queries" in proc.stderr and "--allow-partial" not in proc.stdout
    out = ok_json("qvhighlights", "--pred", pred, "--gt", gt, "--allow-partial")
    assert out["brief"]["MR-full-R1@0.5"] == 100.0 and out["HL-min-VeryGood"]["HL-Hit1"] == 100.0
    assert out["long"]["MR-R1"]["0.5"] is None  # no long window: NaN is written as null


def test_qvhighlights_refuses_a_reversed_prediction_window(shared_data, tmp_path):
    """[[68, 0]] once scored MR-full-mAP 100: its undefined IoU counted as a hit at every threshold."""
    pred = write_jsonl(tmp_path / "rev.jsonl", [{"qid": 2579, "pred_relevant_windows": [[68, 0, 1.0]]}])
    gt = shared_data / "qvhighlights" / "highlight_val_release.jsonl"
    proc = damo_score("qvhighlights", "--pred", pred, "--gt", gt, "--allow-partial")
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{pred}:1: qid 2579: 'pred_relevant_windows'[0] is [68, 0, 1.0]: it ends before it starts" in proc.stderr


SIM = [[0.9, 0.1, 0.5], [0.2, 0.3, 0.3], [0.1, 0.8, 0.7]]  # text x video; t2v ranks 1, 2, 2


def test_retrieval_matrix_both_directions(tmp_path):
    npz = tmp_path / "sim.npz"
    np.savez(npz, sim=np.array(SIM))
    out = ok_json("retrieval", "--pred", npz)
    assert out["t2v_R@1"] == pytest.approx(1 / 3, abs=1e-6) and out["t2v_MdR"] == 2.0 and out["t2v_count"] == 3
    # video -> text: col 0 (0.9 best) rank 1, col 1 (0.3 below 0.8) rank 2, col 2 (0.7 best) rank 1
    assert out["v2t_R@1"] == pytest.approx(2 / 3, abs=1e-6) and out["v2t_MnR"] == pytest.approx(4 / 3, abs=1e-6)
    npy = tmp_path / "sim.npy"
    np.save(npy, np.array(SIM))
    assert ok_json("retrieval", "--pred", npy, "--ks", "1", "2")["t2v_R@2"] == 1.0


def test_retrieval_with_ids_gold_and_ranked_lists(tmp_path):
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps({"sim": SIM, "query_ids": ["t0", "t1", "t2"], "candidate_ids": ["v0", "v1", "v2"]}))
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"query": "t2", "gold": ["v0", "v2"]}, {"query": "t1", "gold": "v0"}])
    out = ok_json("retrieval", "--pred", sim, "--gt", gold)
    # t2: best gold v2 at 0.7, below v1 0.8 -> rank 2; t1: v0 0.2 is last -> rank 3
    assert out["count"] == 2 and out["MnR"] == 2.5 and out["R@1"] == 0.0 and out["unscored"] == 1
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [
        {"query": "t1", "ranked": ["v1", "v2", "v0"]},
        {"query": "t2", "ranked": ["v2", "v1"]},
    ])
    out = ok_json("retrieval", "--pred", ranked, "--gt", gold)
    assert out["R@1"] == 0.5 and out["MnR"] == 2.0 and out["gold_not_ranked"] == 0
    proc = damo_score("retrieval", "--pred", ranked)
    assert proc.returncode == 2 and "need --gt" in proc.stderr
    bad_gold = write_jsonl(tmp_path / "bad.jsonl", [{"query": "t9", "gold": "v0"}])
    proc = damo_score("retrieval", "--pred", sim, "--gt", bad_gold)
    assert proc.returncode == 2 and "'t9' is not a row" in proc.stderr


def test_retrieval_ranked_lists_without_the_gold_are_misses(tmp_path):
    """A gold candidate missing from a query's list (or an empty list) is no hit at any k: its rank
    is unknown, so the median and mean ranks come as lower bounds."""
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"query": f"t{i}", "gold": f"v{i}"} for i in range(20)])
    top5_wrong = write_jsonl(tmp_path / "top5.jsonl", [
        {"query": f"t{i}", "ranked": [f"v{(i + j) % 20}" for j in range(1, 6)]} for i in range(20)])
    out = ok_json("retrieval", "--pred", top5_wrong, "--gt", gold)
    assert out["R@1"] == out["R@5"] == out["R@10"] == 0.0 and out["gold_not_ranked"] == 20
    assert out["MdR_lower_bound"] == out["MnR_lower_bound"] == 6.0 and "MdR" not in out and "MnR" not in out
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"query": f"t{i}", "ranked": []} for i in range(20)])
    out = ok_json("retrieval", "--pred", empty, "--gt", gold, "--ks", "1", "50")
    assert out["R@1"] == out["R@50"] == 0.0 and out["MdR_lower_bound"] == 1.0


@pytest.mark.parametrize("sub, words", [
    (None, ["grounding", "qvhighlights", "retrieval", "JSON"]),
    ("grounding", ["--pred", "--gt", "--out", "pred_spans", "gt_spans", "missing", "--thresholds"]),
    ("qvhighlights", ["pred_relevant_windows", "highlight_val_release", "--allow-partial", "brief"]),
    ("retrieval", [".npz", "ranked", "gold", "t2v", "--ks", "gold_not_ranked", "MdR_lower_bound"]),
])
def test_help_is_useful(sub, words):
    proc = damo_score(*([sub] if sub else []), "--help")
    assert proc.returncode == 0
    for word in words:
        assert word in proc.stdout, word


# ---------------------------------------------------------------- the command line's own edges (in process)
def _qvh_unequal_sets(tmp_path):
    gt = write_jsonl(tmp_path / "gt.jsonl", [
        {"qid": 1, "duration": 20, "relevant_windows": [[0, 4]], "relevant_clip_ids": [0],
         "saliency_scores": [[4, 4, 4]]},
        {"qid": 2, "duration": 20, "relevant_windows": [[4, 8]], "relevant_clip_ids": [2],
         "saliency_scores": [[3, 3, 3]]},
    ])
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"qid": 1, "pred_relevant_windows": [[0, 4, 0.9]]}])
    return pred, gt


def test_qvhighlights_unequal_sets_name_the_flag_on_the_command_line(tmp_path, capsys):
    from damo_lit.cli.score import main
    from damo_lit.metrics.qvhighlights import QVHighlightsError, QVHPrediction, QVHTarget, evaluate_qvhighlights

    pred, gt = _qvh_unequal_sets(tmp_path)
    assert main(["qvhighlights", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "different queries" in err and "score the shared ones with --allow-partial" in err
    assert "match_number" not in err  # an argument of the Python API, not a flag of damo-score
    # the API still names its own argument
    preds = [QVHPrediction.from_dict(json.loads(line), "p") for line in pred.read_text().splitlines()]
    targets = [QVHTarget.from_dict(json.loads(line), "g") for line in gt.read_text().splitlines()]
    with pytest.raises(QVHighlightsError, match="score the shared ones with match_number=False"):
        evaluate_qvhighlights(preds, targets)


def test_help_examples_use_the_paths_the_project_writes():
    from damo_lit.cli.common import PROJECT_ROOT, compose
    from damo_lit.cli.score import EPILOG

    eval_cfg = compose("eval", ["ckpt=outputs/demo/stage3"])
    # damo-eval writes <ckpt folder>/eval/<data name>_<split>/predictions.jsonl (cli/eval.py)
    assert f"--pred outputs/demo/stage3/eval/{eval_cfg.data.name}_{eval_cfg.split}/predictions.jsonl" in EPILOG
    annotations = Path(eval_cfg.data.annotations).relative_to(PROJECT_ROOT)  # the synthetic set's own folder
    assert f"--gt {annotations}/test.jsonl" in EPILOG
    assert "outputs/eval/test_predictions.jsonl" not in EPILOG  # a path nothing writes


def test_a_closed_stdout_ends_quietly(grounding_files, tmp_path):
    """`damo-score ... | head`: the reader has gone; no BrokenPipeError traceback, --out still written."""
    import os

    pred, gt = grounding_files
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "damo_lit.cli.score", "grounding", "--pred", str(pred), "--gt",
                               str(gt), "--out", str(tmp_path / "m.json")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 128 + 13  # as the shell reports a Unix tool stopped by SIGPIPE
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 4


def test_an_unwritable_out_is_named(grounding_files, tmp_path, capsys):
    from damo_lit.cli.score import main

    pred, gt = grounding_files
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out, reason in ((tmp_path, "is a folder"), (blocker / "m.json", f"{blocker} is a file, not a folder")):
        assert main(["grounding", "--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"damo-score grounding: --out {out}: cannot write it ({reason})" in captured.err, captured.err


@pytest.mark.parametrize("ks", [["0"], ["1", "-5"]])
def test_retrieval_cut_offs_below_one_are_refused(tmp_path, capsys, ks):
    from damo_lit.cli.score import main

    npy = tmp_path / "sim.npy"
    np.save(npy, np.array(SIM))
    with pytest.raises(SystemExit) as info:
        main(["retrieval", "--pred", str(npy), "--ks", *ks])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ks" in err and "must be at least 1" in err and "Traceback" not in err


def test_a_folder_given_as_a_file_is_named_a_folder(grounding_files, tmp_path):
    pred, _gt = grounding_files
    proc = damo_score("grounding", "--pred", pred, "--gt", tmp_path)
    assert proc.returncode == 2 and f"{tmp_path}: is a folder; expected a file" in proc.stderr
