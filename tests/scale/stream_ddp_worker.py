"""One rank of the streaming DDP test (run as a script by test_streaming.py, two at once, gloo).

Iterates a whole epoch of the train loader, then a second loader for `--stop` batches, saves the
datamodule's state_dict (what a checkpoint holds), restores it into a new datamodule (a resumed
process) and iterates the rest of the epoch from that one's loader; writes what it saw as JSON.
Further arguments are config overrides (e.g. the tasks and data.num_workers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop", type=int, default=2)
    args, overrides = parser.parse_known_args()

    import torch.distributed as dist
    from hydra.utils import instantiate

    from damo_lit.cli.common import compose
    from damo_lit.cli.model import read_tiny_vocab
    from damo_lit.models.tokenizer import build_word_tokenizer

    dist.init_process_group("gloo")
    cfg = compose("train", ["data=streaming", f"data.streaming_dir={args.stream}", "data.num_workers=0",
                            "data.batch_size=4", "seed=5", *overrides])  # fmt: skip

    def datamodule():
        made = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
        made.set_tokenizer(build_word_tokenizer(read_tiny_vocab()))
        return made

    stopped_data = datamodule()
    full_loader = stopped_data.train_dataloader()
    full = [batch["sample_id"] for batch in full_loader]
    iterator = iter(stopped_data.train_dataloader())
    first = [next(iterator)["sample_id"] for _ in range(args.stop)]
    state = stopped_data.state_dict()
    del iterator  # its worker process ends here
    resumed_data = datamodule()
    resumed_data.load_state_dict(state)
    rest = [batch["sample_id"] for batch in resumed_data.train_dataloader()]
    result = {"rank": dist.get_rank(), "len": len(full_loader), "full": full, "first": first, "rest": rest}
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w") as handle:
        json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
