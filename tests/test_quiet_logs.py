"""Upstream noise that the command-line entry points keep out of every stage's log."""

from __future__ import annotations

import logging
import warnings

import damo_lit.cli.common  # noqa: F401  (installs the filters)


def test_lightning_start_logs_keep_facts_and_drop_the_advertisement(caplog) -> None:
    import lightning as L

    with caplog.at_level(logging.INFO):
        L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("GPU available" in m for m in messages)
    assert not any("litlogger" in m for m in messages)


def test_torch_leafspec_deprecation_from_lightning_is_silenced() -> None:
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from damo_lit.cli.common import quiet_upstream_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1)
        quiet_upstream_warnings()  # what importing damo_lit.cli does
        _tree_flatten(2)
    assert ["LeafSpec" in str(w.message) for w in caught] == [True]  # the first call only


def test_litdata_cache_size_chatter_is_dropped_but_its_warnings_are_kept(caplog) -> None:
    from litdata.utilities import format as litdata_format

    with caplog.at_level(logging.INFO):
        litdata_format._resolve_max_cache_size(None, ".")  # what every optimize and StreamingDataset does
        litdata_format.logger.warning("a litdata warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a litdata warning"]
