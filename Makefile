# Safety alignment of text-to-image diffusion models with Diffusion-DPO.
# `make demo` runs the whole pipeline on the synthetic world; `make test` runs the fast test tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= configs/demo.yaml
GPUS ?= 1
PORT ?= 8765
SET ?= runs/$(basename $(notdir $(CONFIG)))/preference_set
ARGS ?=
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# With GPUS>1 the stage entry points run under `accelerate launch` (DDP, configs/accelerate/).
# On a machine without an NVIDIA GPU, train and eval run as CPU_PROCS data-parallel processes (gloo) that
# share the cores: the small kernels of the synthetic model do not scale over threads. Measured on the
# 2-core CPU machine (make demo): train 20.3 vs 19.0 pairs/s, eval 311 vs 385 s. Curation on a CPU gives
# each process whole risks (curate.process_split: auto -> tasks): split by batch, its many small collective
# generate/score calls had made 2 processes slower than one (375-411 s vs 340-348 s). Every stage splits its
# work so that the result does not depend on the count.
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
NPROC := $(shell nproc 2>/dev/null || echo 1)
CPU_PROCS ?= $(if $(HAVE_GPU),1,$(if $(filter 1,$(NPROC)),1,2))
CPU_THREADS := $(shell echo $$(( $(NPROC) / $(CPU_PROCS) > 0 ? $(NPROC) / $(CPU_PROCS) : 1 )))
ACCELERATE := $(VENV)/bin/accelerate launch --config_file configs/accelerate/ddp.yaml
ifneq ($(GPUS),1)
LAUNCH := $(ACCELERATE) --num_processes $(GPUS) -m
else ifneq ($(CPU_PROCS),1)
LAUNCH := OMP_NUM_THREADS=$(CPU_THREADS) ACCELERATE_USE_CPU=1 $(ACCELERATE) --num_processes $(CPU_PROCS) -m
else
LAUNCH := $(PY) -m
endif

.PHONY: setup setup-browser test test-slow test-all base world-report curate train eval erase redteam redteam-finetune redteam-round demo compare annotate serve bench clean help

help:
	@echo "make setup | test | test-slow | demo | compare | curate | train | eval | erase | redteam | redteam-finetune | redteam-round | annotate | serve | base | world-report | bench"

# Idempotent: reinstalls only when pyproject.toml changes.
setup: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

# Debian's chromium for the browser tests (nothing is downloaded by the test tools themselves).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "warning: chromium missing and not root; browser tests will be skipped"; fi; }

test: setup setup-browser
	$(PY) -m pytest -q -x --timeout=900

test-slow: setup
	$(PY) -m pytest -q -m slow --timeout=3600

test-all: setup setup-browser
	$(PY) -m pytest -q -m "slow or not slow" --timeout=3600

base: setup
	$(PY) -m synthetic_world.train_base --config configs/base.yaml $(ARGS)

world-report: setup
	$(PY) -m synthetic_world.report --config configs/base.yaml $(ARGS)

curate: setup
	$(LAUNCH) data_curation.curate --config $(CONFIG) $(ARGS)

train: setup
	$(LAUNCH) training.train --config $(CONFIG) $(ARGS)

eval: setup
	$(LAUNCH) evals.evaluate --config $(CONFIG) $(ARGS)

# Concept erasure (ESD-x and ESD-u LoRAs; docs/mitigations.md): each iteration is a short chain of small UNet calls
# that would not gain from data-parallel processes. Without a GPU, CPU_PROCS erasures train at once, each in its own
# process with ERASE_THREADS torch threads: the synthetic model's small kernels do not scale over threads (on the
# shared 2-core machine two threads took 3.5-4.1 s per ESD-u iteration where one took 0.87 s).
ERASE_THREADS ?= 1
ERASE_PROCESSES := $(if $(HAVE_GPU),,processes=$(CPU_PROCS))
erase: setup
	$(if $(HAVE_GPU),,OMP_NUM_THREADS=$(ERASE_THREADS) )$(PY) -m erasure.erase --config $(CONFIG) $(ERASE_PROCESSES) $(ARGS)

# Red-teaming (redteam/, docs/redteam.md): prompt attacks on the base, aligned and erased models (REDTEAM_CONFIG), in
# one process with REDTEAM_THREADS torch threads without a GPU (one: on the shared, loaded 2-core machine two threads
# generated about 3x slower).
REDTEAM_CONFIG ?= configs/redteam.yaml
REDTEAM_THREADS ?= 1
redteam: setup
	$(if $(HAVE_GPU),,OMP_NUM_THREADS=$(REDTEAM_THREADS) )$(PY) -m redteam.attack --config $(REDTEAM_CONFIG) $(ARGS)

# Benign downstream fine-tuning of the aligned LoRA (redteam.finetune), then make redteam on it and its copy.
FINETUNE_CONFIG ?= configs/redteam_finetune.yaml
redteam-finetune: setup
	$(if $(HAVE_GPU),,OMP_NUM_THREADS=$(REDTEAM_THREADS) )$(PY) -m redteam.finetune --config $(FINETUNE_CONFIG) $(ARGS)
	$(MAKE) redteam REDTEAM_CONFIG=$(FINETUNE_CONFIG)

# One adversarial round (configs/redteam_round.yaml; docs/redteam.md): attack the base and aligned models, curate pairs
# on the prompts found, train on the aligned run's pairs (ROUND_BASE_SET) plus those, attack the retrained model
# (only it: the search is deterministic, so base and aligned would score as before); ASR before and after in
# runs/redteam_round/round.md.
ROUND_CONFIG ?= configs/redteam_round.yaml
ROUND_BASE_SET ?= runs/redteam_aligned/preference_set
redteam-round: setup
	$(MAKE) redteam REDTEAM_CONFIG=$(ROUND_CONFIG) ARGS="output_dir=runs/redteam_round/before $(ARGS)"
	$(MAKE) curate CONFIG=$(ROUND_CONFIG)
	$(PY) -m preference_sets.cli merge $(ROUND_BASE_SET) runs/redteam_round/preference_set --out runs/redteam_round/merged_set
	$(MAKE) train CONFIG=$(ROUND_CONFIG)
	$(MAKE) redteam REDTEAM_CONFIG=$(ROUND_CONFIG) ARGS="output_dir=runs/redteam_round/after only_models=[round] $(ARGS)"
	$(PY) -m redteam.compare runs/redteam_round/before runs/redteam_round/after --out runs/redteam_round/round.md

# DEMO_CONFIG: the slow-tier test runs the same target on a reduced copy of configs/demo.yaml.
DEMO_CONFIG ?= configs/demo.yaml
demo: setup
	$(MAKE) curate CONFIG=$(DEMO_CONFIG)
	$(MAKE) train CONFIG=$(DEMO_CONFIG)
	$(MAKE) eval CONFIG=$(DEMO_CONFIG)

# DPO against the rest of the mitigation stack (configs/compare.yaml; docs/mitigations.md): the demo's curate and
# train first when runs/demo/lora is missing, the two erasures when their LoRAs are missing, then one eval of every
# configuration (runs/compare/eval/report.html).
COMPARE_CONFIG ?= configs/compare.yaml
compare: setup
	@test -f runs/demo/lora/pytorch_lora_weights.safetensors || { $(MAKE) curate CONFIG=configs/demo.yaml && $(MAKE) train CONFIG=configs/demo.yaml; }
	@test -f runs/compare/esd_x/pytorch_lora_weights.safetensors -a -f runs/compare/esd_u/pytorch_lora_weights.safetensors || $(MAKE) erase CONFIG=$(COMPARE_CONFIG)
	$(LAUNCH) evals.evaluate --config $(COMPARE_CONFIG) $(ARGS)

annotate: setup
	$(PY) -m annotation.cli serve --config $(CONFIG) --set $(SET) --port $(PORT) $(ARGS)

# The guarded generation service (serving/, docs/mitigations.md): the aligned LoRA behind the guard stack, on
# loopback; client tokens from serve.tokens_file or the SAFE_DIFFUSION_DPO_SERVE_TOKENS environment variable.
serve: setup
	$(PY) -m serving.serve --config $(CONFIG) $(ARGS)

bench: setup
	$(PY) -m benchmarks.bench $(ARGS)

clean:
	rm -rf runs
