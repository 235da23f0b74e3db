"""One rank of the FSDP stage-state test (run as a script by test_fsdp.py, two at once, gloo, CPU).

Builds damo_tiny with fixed values in every tensor a stage saves, keeps the unwrapped stage state
as the reference, then wraps the model as Lightning's FSDPStrategy does with conf/trainer/fsdp.yaml
(FULL_SHARD, use_orig_params, its wrap policy: the model's wrap classes as units and, with the base
LM frozen as in the paper, each LoRA A and B as a unit of its own; activation checkpointing on the
wrap classes) and gathers the state again. Writes what it found as JSON; rank 0 also saves the
stage weights and the LoRA adapter from the gathered state beside the reference ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)

    import torch
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from torch import nn
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing, checkpoint_wrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy

    from damo_lit.cli.common import compose
    from damo_lit.models.damo import build_damo
    from damo_lit.stages.callbacks import save_adapter
    from damo_lit.stages.fsdp import DaMOWrapPolicy, resolve_classes
    from damo_lit.stages.weights import persistent_names, save_stage_weights, stage_state

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = compose("train", ["model=damo_tiny", "stage=stage3_temporal", "trainer=fsdp"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    wrap = model_cfg.pop("fsdp_wrap_classes")
    model = build_damo(model_cfg)
    model.set_trainable(["residual", "fuseformer", "projector", "lora"])  # the paper's stage 3: base LM frozen
    groups = ["residual", "fuseformer", "projector", "lora", "llm"]
    names = persistent_names(model, groups)
    gen = torch.Generator().manual_seed(0)  # the same values on both ranks, none of them zero
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    reference = stage_state(model, names)
    if rank == 0:  # the unwrapped model's own artifacts, before FSDP takes it over
        save_stage_weights(out / "plain", reference, {"stage": "stage3"})
        model.llm.save_lora(str(out / "plain" / "adapter"))

    class Holder(nn.Module):  # the LightningModule that Lightning's FSDP root wraps
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner

    classes = resolve_classes(wrap)
    root = FSDP(Holder(model), auto_wrap_policy=DaMOWrapPolicy(classes), use_orig_params=True,
                sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device("cpu"))  # fmt: skip
    apply_activation_checkpointing(root, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper),
                                   check_fn=lambda m: isinstance(m, tuple(classes)))  # fmt: skip
    wrapped = root.module.model
    wrapped_names = persistent_names(wrapped, groups)
    gathered = stage_state(wrapped, wrapped_names, root)
    plain = wrapped.state_dict()  # what a plain state_dict gives under FSDP: flat shards for the root unit
    misshapen = sorted(k for k, v in plain.items() if k in reference and tuple(v.shape) != tuple(reference[k].shape))
    equal = sorted(k for k in reference if k in gathered and torch.equal(gathered[k], reference[k]))
    units = FSDP.fsdp_modules(root)
    lora_units = [u for u in units if isinstance(u.module, nn.Linear) and u.module.weight.requires_grad]
    result = {"rank": rank, "units": len(units), "lora_units": len(lora_units), "names_equal": wrapped_names == names,
              "reference": len(reference), "gathered": sorted(gathered), "equal": len(equal),
              "misshapen_plain": misshapen}  # fmt: skip
    if rank == 0:
        save_stage_weights(out / "fsdp", gathered, {"stage": "stage3"})
        save_adapter(wrapped, gathered, str(out / "fsdp" / "adapter"))
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
