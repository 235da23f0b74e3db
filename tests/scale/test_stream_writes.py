"""Writing and capping streams: Ctrl-C during a write exits 130 with one line and cleans up
(litdata's own handler would exit 0 in silence); a rerun with fewer tasks keeps the other
complete sub-streams listed; data.max_samples_per_split caps a streamed split."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import FROZEN
from .test_streaming import _datamodule, _write

litdata = pytest.importorskip("litdata", reason="litdata is not installed (pip install --no-deps litdata)")

INTERRUPTING = Path(__file__).with_name("stream_interrupt_worker.py")


@pytest.fixture(scope="module")
def features_stream(feature_cache: Path, data_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features stream of the train split's caption (12) and qa (16) samples: cheap to write and read."""
    out = tmp_path_factory.mktemp("stream") / "features"
    report = _write([*data_overrides, *FROZEN, f"data.features={feature_cache}", f"out={out}", "tasks=[caption,qa]",
                     "splits=[train]", "num_workers=1", "data.max_samples_per_split=16"])  # fmt: skip
    assert report["samples"] == {"train": {"caption": 12, "qa": 16}}
    return out


def test_ctrl_c_during_a_write_exits_130_with_one_line(data_overrides: list[str], tmp_path: Path) -> None:
    out, work = tmp_path / "stream", tmp_path / "tmp"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(INTERRUPTING.parent), "OMP_NUM_THREADS": "1"}
    for name in ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(INTERRUPTING), "kind=stream", *data_overrides, f"out={out}", "tasks=[grounding]",
         "splits=[train]", "num_workers=1"],
        capture_output=True, text=True, timeout=180, env=env, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    said = done.stderr
    assert done.returncode == 130, said[-3000:]
    line = f"damo-cache: interrupted (Ctrl-C); the sub-streams written in full stay in {out}, and the same command"
    assert line in said and "Traceback" not in said, said[-3000:]
    assert not list(work.glob("damo-litdata-*")), "litdata's work folders are removed"
    assert not (out / "train" / "grounding" / "damo_written.json").exists()


def test_interrupts_raise_puts_the_handlers_back_and_raises() -> None:
    from litdata.processing.data_processor import DataProcessor

    from damo_lit.data.streaming import _stop_and_interrupt, interrupts_raise

    def ours(signum, frame) -> None:
        pass

    original, previous = DataProcessor._signal_handler, signal.signal(signal.SIGINT, ours)
    try:
        with interrupts_raise():
            assert DataProcessor._signal_handler is not original
            signal.signal(signal.SIGINT, lambda *_: os._exit(0))  # what litdata's run leaves installed
        assert signal.getsignal(signal.SIGINT) is ours and DataProcessor._signal_handler is original
    finally:
        signal.signal(signal.SIGINT, previous)

    stopped = []

    def exit_on_error(error: str) -> None:  # litdata's stop: terminates its processes, then raises
        stopped.append(error)
        raise RuntimeError(error)

    with pytest.raises(KeyboardInterrupt):
        # (the children alive now are not the write's: a fixture's workers must not be stopped)
        _stop_and_interrupt(SimpleNamespace(_exit_on_error=exit_on_error), frozenset(multiprocessing.active_children()),
                            signal.SIGINT, None)  # fmt: skip
    assert stopped == ["interrupted (Ctrl-C)"]


def test_a_rerun_with_fewer_tasks_keeps_the_others_listed(
    features_stream: Path, feature_cache: Path, data_overrides: list[str], tmp_path: Path
) -> None:
    stream = shutil.copytree(features_stream, tmp_path / "stream")
    words = [*data_overrides, *FROZEN, f"data.features={feature_cache}", f"out={stream}", "splits=[train]",
             "num_workers=1", "data.max_samples_per_split=16"]  # fmt: skip
    report = _write([*words, "tasks=[qa]"])
    assert report["samples"] == {"train": {"caption": 12, "qa": 16}}
    assert sorted(report["reused"]) == ["train/caption", "train/qa"] and report["rewritten"] == {}
    meta = json.loads((stream / "damo_stream.json").read_text())
    assert meta["samples"] == {"train": {"caption": 12, "qa": 16}}
    assert len(list(_datamodule([f"data.streaming_dir={stream}", *FROZEN, "data.train_tasks=[caption]"])
                    .train_dataloader())) == 3  # fmt: skip

    (stream / "train" / "caption" / "damo_written.json").unlink()  # no longer complete: not listed
    with pytest.warns(RuntimeWarning, match=r"train/caption: an earlier write's sub-stream, left out of "
                                            r"damo_stream\.json \(no damo_written\.json"):  # fmt: skip
        report = _write([*words, "tasks=[qa]"])
    assert report["samples"] == {"train": {"qa": 16}}
    assert json.loads((stream / "damo_stream.json").read_text())["samples"] == {"train": {"qa": 16}}


def _sample_ids(stream: Path, *overrides: str) -> list[str]:
    loader = _datamodule([f"data.streaming_dir={stream}", *FROZEN, "data.train_tasks=[caption,qa]", *overrides])
    return [i for batch in loader.train_dataloader() for i in batch["sample_id"]]


def test_max_samples_per_split_caps_a_streamed_split(features_stream: Path) -> None:
    from damo_lit.data.streaming import capped_counts

    everything = _sample_ids(features_stream)
    assert len(everything) == len(set(everything)) == 28
    capped = _sample_ids(features_stream, "data.max_samples_per_split=7")
    assert len(capped) == len(set(capped)) == 7 and set(capped) <= set(everything)
    assert sum("-caption" in i for i in capped) == 3, capped  # the tasks keep their shares: 3 + 4
    assert capped_counts({"caption": 12, "qa": 16}, 7) == {"caption": 3, "qa": 4}
    assert capped_counts({"caption": 1, "qa": 100}, 5) == {"qa": 5}, "a share of nothing is left out"
    assert capped_counts({"caption": 12, "qa": 16}, None) == {"caption": 12, "qa": 16}
