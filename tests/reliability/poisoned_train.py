"""damo-train whose stage-3 loss is NaN on rank 1 only, at the training steps listed in
$DAMO_POISON_CALLS (comma-separated call numbers of that rank). A script file, not `python -c`:
Lightning starts the other DDP ranks by running this same script again."""

from __future__ import annotations

import os
import sys

from damo_lit.cli.train import main
from damo_lit.stages.temporal import TemporalStage

CALLS = {int(c) for c in os.environ.get("DAMO_POISON_CALLS", "").split(",") if c}
lm_loss = TemporalStage.lm_loss
seen = [0]


def poisoned(self, batch, *args, **kwargs):
    loss, embeds = lm_loss(self, batch, *args, **kwargs)
    call, seen[0] = seen[0], seen[0] + 1
    if self.global_rank == 1 and call in CALLS:
        loss = loss * float("nan")
    return loss, embeds


TemporalStage.lm_loss = poisoned

if __name__ == "__main__":
    sys.exit(main())
