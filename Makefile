# damo-lit: every target creates .venv on first use (torch==2.13.0 CPU first, so that no
# dependency can pull a CUDA build), then runs. Hydra overrides are forwarded as key=value
# words:  make stage3 trainer.devices=8 data=charades_sta
# Overrides that are not key=value words (~key, Hydra's -m) go in ARGS:  make stage3 ARGS="~logger"
# A sweep:  make stage3 ARGS=-m model.fuseformer.depth=1,2,4   (make would take a bare -m itself)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make hands key=value words over in MAKEOVERRIDES (reversed, spaces escaped);
# damo_lit.cli.makeargs turns them back into Hydra overrides in the order typed.
export DAMO_MAKE_OVERRIDES = $(MAKEOVERRIDES)
FORWARD := $(PY) -m damo_lit.cli.makeargs --
PYTEST_ARGS ?=
# Where torch comes from. Empty: pip's own configuration (on the project's machines, a local CPU
# wheel). Where pip reaches PyPI, its Linux torch wheel pulls multi-GB CUDA libraries; for a CPU
# build there:  make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow stage1 stage2 stage3 stage4 eval predict bench \
        exp-fusion-depth exp-ablations exp-data-efficiency exp-priors clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml Makefile  # the Makefile pins torch and litdata
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps litdata==0.2.76
	@touch $@

venv: $(STAMP) ## create .venv and install the project into it

demo: $(STAMP) ## generate the synthetic set, run stages 1-4 on damo_tiny (CPU), print a summary
	$(FORWARD) $(PY) -m damo_lit.cli.demo

test: $(STAMP) ## run the test suite (fast tests; slow end-to-end runs are in test-slow)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; exit $$rc

test-slow: $(STAMP) ## run the slow end-to-end tests only
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

stage1: $(STAMP) ## stage 1, video-text alignment (VTC + VTM + VTG)
	$(FORWARD) $(VENV)/bin/damo-train stage=stage1_align

stage2: $(STAMP) ## stage 2, representation bridging (projector + Fuseformer through the frozen LLM)
	$(FORWARD) $(VENV)/bin/damo-train stage=stage2_bridge

stage3: $(STAMP) ## stage 3, temporal perception learning (timestamped answers, LoRA on)
	$(FORWARD) $(VENV)/bin/damo-train stage=stage3_temporal

stage4: $(STAMP) ## stage 4, dialogue tuning
	$(FORWARD) $(VENV)/bin/damo-train stage=stage4_dialogue

eval: $(STAMP) ## evaluate a checkpoint: make eval ckpt=PATH data=NAME
	$(FORWARD) $(VENV)/bin/damo-eval

predict: $(STAMP) ## answer one question about one video: make predict ckpt=PATH video=F.mp4 question="..."
	$(FORWARD) $(VENV)/bin/damo-predict

bench: $(STAMP) ## throughput study (experiments/throughput) -> outputs/bench/throughput.json
	$(FORWARD) $(PY) experiments/throughput/run.py

exp-fusion-depth: $(STAMP) ## sweep model.fuseformer.depth (1, 2, 4): table + plot
	$(FORWARD) $(PY) experiments/fusion_depth/run.py

exp-ablations: $(STAMP) ## no audio / no global residual / concat fusion / skip stage 1 / skip stage 3
	$(FORWARD) $(PY) experiments/ablations/run.py

exp-data-efficiency: $(STAMP) ## test R@0.5 against the number of training videos
	$(FORWARD) $(PY) experiments/data_efficiency/run.py

exp-priors: $(STAMP) ## what media-blind span priors reach on the test split (no model, seconds)
	@test -f outputs/data/synthetic/synth.json || $(PY) -m damo_lit.cli.data synth --out outputs/data/synthetic
	$(PY) experiments/priors/run.py $(ARGS)

clean: ## remove runs, sweeps and caches under outputs/ and multirun/ (keeps outputs/data, where datasets live, and .venv)
	@if [ -d outputs ]; then find outputs -mindepth 1 -maxdepth 1 ! -name data -exec rm -rf {} +; fi
	rm -rf multirun
