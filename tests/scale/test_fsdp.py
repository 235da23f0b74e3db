"""The FSDP recipe on CPU: the strategy instantiates from the composed config, its auto-wrap policy
selects exactly the LLM decoder layers and the Fuseformer blocks, activation checkpointing targets
the same classes, precision is bf16-mixed. (A real FSDP run needs GPUs: experiments/throughput/
fsdp_paper.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.mistral.modeling_mistral import MistralDecoderLayer

from damo_lit.cli.common import compose
from damo_lit.models.damo import build_damo
from damo_lit.models.fuseformer import FuseformerBlock
from damo_lit.stages.fsdp import fsdp_units

FUSE = "damo_lit.models.fuseformer.FuseformerBlock"
WRAP = {
    "damo_tiny": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer", FUSE],
    "damo_paper": ["transformers.models.mistral.modeling_mistral.MistralDecoderLayer", FUSE],
}
LAYER = {"damo_tiny": LlamaDecoderLayer, "damo_paper": MistralDecoderLayer}


def _fsdp_config(model: str, extra: list[str] | None = None):
    """`train` with trainer=fsdp and the model config as shipped: its fsdp_wrap_classes are the
    decoder layer of its LM family and the Fuseformer block."""
    cfg = compose("train", [f"model={model}", "trainer=fsdp", "logger=csv", *(extra or [])])
    assert list(cfg.model.fsdp_wrap_classes) == WRAP[model] == list(cfg.trainer.strategy.wrap_classes)
    return cfg


def _model_cfg(cfg) -> dict:
    """The model mapping build_damo takes (fsdp_wrap_classes is the recipe's, not the model's)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("fsdp_wrap_classes", None)
    return model


def _wrapped(policy, model: nn.Module) -> list[nn.Module]:
    """The modules an FSDP auto-wrap policy makes units of (the root aside)."""
    return [m for m in policy._run_policy(model, set(), {}) if m is not model]


def _checkpointed(policy, model: nn.Module) -> list[nn.Module]:
    """The modules Lightning's activation-checkpointing policy (a ModuleWrapPolicy) selects."""
    return [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]


@pytest.mark.parametrize("model", ["damo_tiny", "damo_paper"])
def test_the_strategy_wraps_the_decoder_layers_fuseformer_blocks_and_lora_weights(model: str) -> None:
    """Units: every decoder layer and Fuseformer block, each encoder tower, and each LoRA A and B
    inside a decoder layer (stage 3: the base LM frozen), so that no unit mixes frozen and trainable
    parameters except the root; activation checkpointing on the layers and blocks only."""
    from lightning.pytorch.strategies import FSDPStrategy

    from damo_lit.cli.model import ensure_model_parts

    frozen = ["model.llm.trainable=false", "model.vision.trainable=false", "model.audio.trainable=false"]
    cfg = _fsdp_config(model, frozen)  # as the paper: damo_tiny trains its small towers and LM whole
    assert cfg.trainer.precision == "bf16-mixed"
    assert list(cfg.trainer.strategy.wrap_classes) == WRAP[model]
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True, "frozen and trainable parameters share the root unit"

    model_cfg = _model_cfg(cfg)
    if model == "damo_tiny":
        ensure_model_parts(model_cfg)
        damo = build_damo(model_cfg)  # the real tiny model, with LoRA
    else:
        damo = build_damo(model_cfg, meta=True)  # 7B on the meta device: no weights
    damo.set_trainable(damo.trainable_groups("stage3"))
    layers = [m for m in damo.modules() if isinstance(m, LAYER[model])]
    blocks = [m for m in damo.modules() if isinstance(m, FuseformerBlock)]
    assert len(layers) == cfg.model.llm.arch.num_hidden_layers
    assert len(blocks) == cfg.model.fuseformer.depth
    lora = [m for layer in layers for name, m in layer.named_modules() if ".lora_A." in f".{name}." or
            ".lora_B." in f".{name}."]  # fmt: skip
    lora = [m for m in lora if not list(m.children())]
    targets = len(cfg.model.llm.lora.target_modules)
    assert len(lora) == 2 * targets * len(layers)

    towers = [m for m in (damo.vision, damo.audio, damo.text_encoder) if m is not None]
    assert len(towers) == 3 and all(not p.requires_grad for t in towers for p in t.parameters())

    wrap_policy = strategy.kwargs["auto_wrap_policy"]
    wrapped = _wrapped(wrap_policy, damo)
    assert {id(m) for m in wrapped} == {id(m) for m in layers + blocks + lora + towers}
    assert len(wrapped) == len(layers) + len(blocks) + len(lora) + len(towers)
    units = fsdp_units(damo, wrap_policy.wraps)
    mixed = [unit for unit, params in units.items() if len({p.requires_grad for p in params}) > 1]
    assert mixed == [damo], "only the root unit mixes frozen and trainable parameters"
    assert all(not p.requires_grad for layer in layers for p in units[layer]), "a layer's own weights are frozen"

    checkpointed = _checkpointed(strategy._activation_checkpointing_kwargs["auto_wrap_policy"], damo)
    assert {id(m) for m in checkpointed} == {id(m) for m in layers + blocks}


@pytest.mark.parametrize("activation_checkpointing", [True, False])
def test_fsdp_checkpointing_replaces_the_llm_own_gradient_checkpointing(activation_checkpointing: bool) -> None:
    """damo_paper turns the LM's gradient checkpointing on for DDP; under FSDP's activation
    checkpointing of the same decoder layers, both would recompute each layer twice."""
    from damo_lit.cli.model import ensure_model_parts

    cfg = _fsdp_config("damo_tiny", ["model.llm.gradient_checkpointing=true",
                                      f"trainer.strategy.activation_checkpointing={activation_checkpointing}"])
    model_cfg = _model_cfg(cfg)
    ensure_model_parts(model_cfg)
    damo = build_damo(model_cfg)
    assert damo.llm.model.is_activation_checkpointing
    strategy = instantiate(cfg.trainer.strategy)
    turned_off = strategy.checkpoint_once(damo)
    assert bool(turned_off) == activation_checkpointing
    assert damo.llm.model.is_activation_checkpointing != activation_checkpointing


def test_a_model_config_without_wrap_classes_is_a_clear_error() -> None:
    cfg = compose("train", ["trainer=fsdp", "logger=csv", "++model.fsdp_wrap_classes=[]"])
    with pytest.raises(Exception, match="wrap_classes is empty"):
        instantiate(cfg.trainer.strategy)


def test_a_bad_class_path_names_it() -> None:
    cfg = compose("train", ["trainer=fsdp", "logger=csv", "++model.fsdp_wrap_classes=[damo_lit.models.nope.Block]"])
    with pytest.raises(Exception, match=r"cannot import 'damo_lit\.models\.nope\.Block'"):
        instantiate(cfg.trainer.strategy)


@pytest.mark.slow
def test_the_paper_fsdp_script_composes_its_recipe_on_cpu(tmp_path) -> None:
    """experiments/throughput/fsdp_paper.py needs GPUs to measure; check=true composes and builds the
    strategy, and without a GPU a measuring run says so (exit 2)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "experiments" / "throughput" / "fsdp_paper.py"
    done = subprocess.run([sys.executable, str(script), "check=true", f"out={tmp_path}"], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FSDPStrategy, precision bf16-mixed, model mistral x32 layers" in done.stdout


def test_stage_weights_and_adapter_gathered_from_fsdp_shards_on_two_cpu_ranks(tmp_path) -> None:
    """Under FULL_SHARD a plain state_dict gives the root unit's parameters as flat shards; the
    stage's weights and LoRA adapter (its A and B split into units of their own) must be the full
    values, equal to the unwrapped model's
    (two gloo ranks on the CPU, wrapped as Lightning's FSDPStrategy wraps with conf/trainer/fsdp.yaml)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from damo_lit.cli.model import ensure_model_parts
    from tests.scale.conftest import run_gloo_ranks

    ensure_model_parts(OmegaConf.to_container(compose("train", ["model=damo_tiny"]).model, resolve=True))
    worker = Path(__file__).with_name("fsdp_state_worker.py")
    run_gloo_ranks(worker, ["--out", str(tmp_path)], timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert rank["units"] > 1, "decoder layers and Fuseformer blocks are units of their own"
        assert rank["lora_units"] == 2 * 2 * 3, "LoRA A and B of q_proj and v_proj in 3 layers: units of their own"
        assert rank["names_equal"], "the names a stage saves do not change under FSDP wrappers"
        assert rank["misshapen_plain"], "a plain state_dict is shards under FULL_SHARD: this test would catch it"
        assert rank["equal"] == rank["reference"] == len(rank["gathered"]), rank
    plain, fsdp = load_file(str(tmp_path / "plain" / "weights.safetensors")), load_file(
        str(tmp_path / "fsdp" / "weights.safetensors"))  # fmt: skip
    assert plain.keys() == fsdp.keys() and all(torch.equal(plain[k], fsdp[k]) for k in plain)
    adapter_plain = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    adapter_fsdp = load_file(str(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors"))
    assert adapter_plain and adapter_plain.keys() == adapter_fsdp.keys()
    assert all(torch.equal(adapter_plain[k], adapter_fsdp[k]) for k in adapter_plain)
    configs = [json.loads((tmp_path / kind / "adapter" / "adapter_config.json").read_text()) for kind in ("plain", "fsdp")]
    assert configs[0] == configs[1], "the same adapter_config.json as peft's own save_pretrained"


def test_stage3_under_lightning_fsdp_on_two_cpu_processes(train_overrides: list[str], tmp_path) -> None:
    """conf/trainer/fsdp.yaml's strategy end to end through damo-train, on two gloo processes
    (tests/scale/cpu_fsdp.py lets Lightning run it without a GPU): training with activation
    checkpointing and clipping, validation, the stage weights and adapter, the test after fit,
    then a resume from the sharded checkpoint. The base LM is frozen, so that LoRA's A and B train
    as units of their own inside the checkpointed decoder layers."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    common = [sys.executable, "-m", "damo_lit.cli.train", "stage=stage3_temporal", "trainer=fsdp",
              "trainer.strategy._target_=tests.scale.cpu_fsdp.cpu_fsdp_strategy", "trainer.accelerator=cpu",
              "trainer.devices=2", "trainer.precision=32-true", *train_overrides, "data.max_samples_per_split=16",
              "model.llm.trainable=false",  # the paper's stage 3: LoRA's A and B become units of their own
              "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.max_epochs=-1"]  # fmt: skip
    first = subprocess.run([*common, "trainer.max_steps=2", f"hydra.run.dir={run1}"], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
    log = first.stdout + first.stderr
    assert "FSDP: testing a fresh build from" in log
    assert "layers.0 has both parameters with requires_grad=True and False" not in log, "LoRA split off"
    metrics = json.loads((run1 / "metrics.json").read_text())
    assert "val/R@0.5" in metrics and "test/R@0.5" in metrics and metrics["test/count"] > 0
    weights = load_file(str(run1 / "weights.safetensors"))
    assert any(k.startswith("fuseformer.blocks.0.") for k in weights), "Fuseformer blocks are FSDP units"
    assert all(v.dim() > 0 and "_fsdp_wrapped_module" not in k for k, v in weights.items())
    assert (run1 / "adapter" / "adapter_model.safetensors").is_file()
    assert (run1 / "checkpoints" / "last.ckpt").is_dir(), "a sharded checkpoint (a folder)"

    second = subprocess.run([*common, "trainer.max_steps=4", f"resume_from={run1 / 'checkpoints' / 'last.ckpt'}",
                             "test_after_fit=false", f"hydra.run.dir={run2}"], capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
    assert "Restored all states from the checkpoint" in second.stdout + second.stderr
    assert json.loads((run2 / "metrics.json").read_text())["train/loss"] > 0


class _Layer(nn.Module):
    """A decoder layer in miniature: a frozen bf16 base weight and a trainable float32 LoRA pair."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4).to(torch.bfloat16).requires_grad_(False)
        self.lora_A, self.lora_B = nn.Linear(4, 2, bias=False), nn.Linear(2, 4, bias=False)


@pytest.mark.parametrize(("precision", "tower"), [("bf16-mixed", torch.float32), ("32-true", torch.bfloat16)])
def test_a_unit_that_mixes_dtypes_is_stored_in_float32(precision: str, tower: torch.dtype) -> None:
    """FSDP flattens a unit's parameters into one tensor of one dtype ('Must flatten tensors with
    uniform dtype' otherwise). The root unit holds a bf16 tower beside float32 trainable weights and
    is stored in float32 under a mixed precision; a layer, once its LoRA pair is split off into
    units of their own, keeps its frozen weights in bf16 (half the memory)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision

    from damo_lit.stages.fsdp import DaMOFSDPStrategy

    cfg = compose("train", ["model=damo_tiny", "trainer=fsdp", "logger=csv",
                            f"trainer.strategy.wrap_classes=[{__name__}._Layer]"])  # fmt: skip
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DaMOFSDPStrategy)
    strategy.precision_plugin = FSDPPrecision(precision)
    model = nn.ModuleDict({"tower": nn.Linear(4, 4).to(torch.bfloat16).requires_grad_(False),
                           "projector": nn.Linear(4, 4), "layer": _Layer()})  # fmt: skip
    strategy.uniform_storage_dtype(model)
    assert model["tower"].weight.dtype == tower, "the root unit mixes dtypes"
    assert model["projector"].weight.dtype == torch.float32
    assert model["layer"].base.weight.dtype == torch.bfloat16, "the layer's own unit holds bf16 alone"
    assert model["layer"].lora_A.weight.dtype == model["layer"].lora_B.weight.dtype == torch.float32


@pytest.mark.slow
def test_paper_widths_under_fsdp_on_two_cpu_processes(train_overrides: list[str], tmp_path) -> None:
    """damo_paper at the paper's widths and input shapes (one layer per tower and LM, as in
    test_paper_shapes.py) through damo-train under the FSDP recipe on two gloo CPU processes:
    Mistral decoder layers and Fuseformer blocks as units, CLIP and Whisper in the root unit.
    Fuseformer depth 1 (the paper's widths, not its 4 blocks): at depth 4 the two ranks and the
    fresh build for the test after fit peak at 21 of the machine's 23 GiB, and the slow suite's
    pytest process beside them tipped it into the OOM killer. About 2.5 minutes on 2 cores."""
    import subprocess
    import sys

    from experiments.throughput.fsdp_paper import RANDOM_WEIGHTS, word_tokenizer
    from tests.scale.test_paper_shapes import SHALLOW

    tokenizer = word_tokenizer(tmp_path / "tokenizer", 32064)
    run = tmp_path / "run"
    done = subprocess.run([
        sys.executable, "-m", "damo_lit.cli.train", "model=damo_paper", "stage=stage3_temporal", "trainer=fsdp",
        "trainer.strategy._target_=tests.scale.cpu_fsdp.cpu_fsdp_strategy", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", *RANDOM_WEIGHTS, *SHALLOW, f"model.llm.tokenizer={tokenizer}",
        "model.llm.offline=true", "model.llm.gradient_checkpointing=false", "model.fuseformer.depth=1",
        *train_overrides, "data.batch_size=1",
        "data.max_samples_per_split=4", "trainer.max_steps=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "stage.generation.max_new_tokens=4", f"hydra.run.dir={run}",
    ], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/count"] > 0 and "val/R@0.5" in metrics
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_device_check_script_says_how_to_use_it() -> None:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "experiments" / "throughput" / "device_check.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "wheels" in done.stderr and "run" in done.stderr


@pytest.mark.slow
def test_the_paper_fsdp_resume_check_restores_the_trainable_weights_bit_for_bit(tmp_path) -> None:
    """fsdp_paper.py resume=true (the device check's first half) on two gloo CPU processes, FULL_SHARD:
    the sharded checkpoint saved at the last step, a fresh process resumes from it, and the
    trainable weights it gathers before its first step equal the saved weights.safetensors.
    Shallow paper widths, Fuseformer depth 1; about 3 minutes on 2 cores."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.scale.test_paper_shapes import SHALLOW

    root = Path(__file__).resolve().parents[2]
    extra = ["trainer.strategy._target_=tests.scale.cpu_fsdp.cpu_fsdp_strategy", "trainer.accelerator=cpu",
             "trainer.precision=32-true", "model.fuseformer.depth=1", *SHALLOW]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(root / "experiments" / "throughput" / "fsdp_paper.py"), "resume=true",
                           "devices=2", "resume_batch=1", "steps=1", "warmup=0", "text_tokens=48", "build_on=cpu",
                           f"out={tmp_path}", f"extra=[{','.join(extra)}]"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp_resume.json").read_text())
    save, resume = report["phases"]
    assert save["checkpoint_kind"] == "folder" and save["checkpoint_saves"] == 1 and save["global_step"] == 1
    assert save["changed_by_training"] > 100, "the saved weights differ from the initial ones"
    assert resume["global_step"] == 3, "two steps after the restored one"
    assert resume["restored_equal"] and resume["restored_max_abs_diff"] == 0.0
    assert resume["compared_tensors"] == resume["saved_tensors"] > 100
    assert not (tmp_path / "fsdp_resume_checkpoints").exists(), "the checkpoint is deleted afterwards"
