# LAA-Net: make targets per dataset stage. Everything runs inside the project virtual environment (.venv),
# which `make install` creates from requirements.txt (pinned versions tested together).
#
#   make install                               create .venv, install pinned dependencies and the project
#                                              (editable: .venv/bin/python imports pipeline/model from any folder)
#   make test                                  the fast tests (CPU, under 3 minutes; not the slow ones)
#   make test-all                              every test: slow end-to-end ones too (gpu ones skip without CUDA)
#   make lint                                  ruff (rules and settings in pyproject.toml)
#   make frames    DATASET=ffpp SPLIT=train    sample frames, detect faces, write HDF5 shards
#   make landmarks DATASET=ffpp SPLIT=train    add dlib 68-point landmarks to those shards
#   make prep      DATASET=ffpp SPLIT=train    both stages
#   make verify    DATASET=ffpp SPLIT=train    check the shards (make inspect: summary + contact sheet)
#   (stage targets take WORKERS=N, SCHEDULER=tcp://host:port or SCHEDULER_FILE=scheduler.json)
#   make train     CONFIG=configs/laanet_sbi.yaml [NPROC=4] [OVERRIDES="train.epochs=10 ..."]
#   make evaluate  CKPT=runs/x/best.pt DATASET=cdf2 SPLIT=test
#   make demo                                  the whole path on the embedded sample, on CPU
#   make bench                                 benchmarks (slow; print measured figures and baselines)
#   make realworld OUT=out/realworld [QUICK=1] [DEVICE=cuda]
#                                              train on real talking heads, score real deepfakes (FF++ c40, DFD,
#                                              DFDC clips of ../shared/data/videos): report.md + summary.json

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

DATASET    ?= sample
SPLIT      ?= train
DEMO_OUT   ?= out/demo
# The embedded sample is prepared by `make demo` under $(DEMO_OUT)/shards; every other dataset under shards/.
SHARDS     ?= $(if $(filter sample,$(DATASET)),$(DEMO_OUT)/shards,shards)
WORKERS    ?=
SCHEDULER  ?=
SCHEDULER_FILE ?=
CONFIG     ?= configs/laanet_sbi.yaml
CKPT       ?=

DASK_OPTS  := $(if $(WORKERS),--dask-workers $(WORKERS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
              $(if $(SCHEDULER_FILE),--scheduler-file $(SCHEDULER_FILE))


OUT        ?= out/realworld
QUICK      ?=
DEVICE     ?= cpu

.PHONY: install lint test test-all frames landmarks prep verify inspect train evaluate demo bench realworld gpu-check clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	# retinaface-pytorch pins torch 1.9 in its metadata; its code runs on current torch.
	$(PY) -m pip install --quiet --no-deps retinaface-pytorch==0.0.8
	# The project itself, editable: laanet-* commands, and Dask workers started from .venv (any folder) import it;
	# with its cluster extra (dask-jobqueue, pinned in pyproject.toml); everything else is already pinned above.
	$(PY) -m pip install --quiet -e ".[cluster]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

frames: $(STAMP)
	$(PY) -m pipeline extract-frames --dataset $(DATASET) --split $(SPLIT) --shards-root $(SHARDS) $(DASK_OPTS)

landmarks: $(STAMP)
	$(PY) -m pipeline cache-landmarks --dataset $(DATASET) --split $(SPLIT) --shards-root $(SHARDS) $(DASK_OPTS)

prep: frames landmarks

verify: $(STAMP)
	$(PY) -m pipeline verify $(SHARDS)/$(DATASET)/$(SPLIT)

inspect: $(STAMP)
	$(PY) -m pipeline inspect $(SHARDS)/$(DATASET)/$(SPLIT) --png out/inspect/$(DATASET)_$(SPLIT).png

train: $(STAMP)
	$(if $(NPROC),$(PY) -m torch.distributed.run --standalone --nproc_per_node $(NPROC),$(PY)) train.py \
		--config $(CONFIG) $(OVERRIDES)

evaluate: $(STAMP)
	@test -n "$(CKPT)" || { echo "make evaluate: set CKPT=path/to/checkpoint.pt"; exit 2; }
	$(PY) evaluate.py --checkpoint $(CKPT) --dataset $(DATASET) --split $(SPLIT) --shards-root $(SHARDS) \
		--out $(or $(EVAL_OUT),out/eval/$(DATASET)_$(SPLIT))

demo: $(STAMP)
	@mkdir -p $(DEMO_OUT) && date +%s > $(DEMO_OUT)/.started
	$(PY) -m pipeline extract-frames --dataset sample --split train --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline cache-landmarks --dataset sample --split train --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline extract-frames --dataset sample --split val --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline cache-landmarks --dataset sample --split val --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline extract-frames --dataset sample --split test --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline cache-landmarks --dataset sample --split test --shards-root $(DEMO_OUT)/shards
	$(PY) -m pipeline inspect $(DEMO_OUT)/shards/sample/train --png $(DEMO_OUT)/sample_train.png
	rm -rf $(DEMO_OUT)/runs/demo_cpu
	$(PY) train.py --config configs/demo_cpu.yaml train.out_dir=$(DEMO_OUT)/runs \
		data.shards=[$(DEMO_OUT)/shards/sample/train] val.shards=[$(DEMO_OUT)/shards/sample/val]
	$(PY) -m model.data preview --shards $(DEMO_OUT)/shards/sample/train --config configs/demo_cpu.yaml \
		--out $(DEMO_OUT)/eval/training_pairs.png
	$(PY) evaluate.py --checkpoint $(DEMO_OUT)/runs/demo_cpu/best.pt --shards $(DEMO_OUT)/shards/sample/test \
		--synthetic-fakes sbi --frames 8 --loader-workers 1 --training-preview $(DEMO_OUT)/eval/training_pairs.png \
		--out $(DEMO_OUT)/eval
	$(PY) -m model.predict data/sample/videos --checkpoint $(DEMO_OUT)/runs/demo_cpu/best.pt \
		--frames 8 --out $(DEMO_OUT)/predict
	@s=$$(( $$(date +%s) - $$(cat $(DEMO_OUT)/.started) )); echo; \
	echo "make demo: done in $$((s / 60)) min $$((s % 60)) s. What it showed, on the two embedded real clips:"; \
	echo "  - preprocessing: frames -> RetinaFace crops -> dlib landmarks -> HDF5 shards (contact sheet: $(DEMO_OUT)/sample_train.png)"; \
	echo "  - training: SBI pseudo-fakes and their heatmap/consistency targets ($(DEMO_OUT)/eval/training_pairs.png), SAM,"; \
	echo "    LR schedule, backbone freezing, validation and best.pt selection ($(DEMO_OUT)/runs/demo_cpu/)"; \
	echo "  - evaluation and prediction: report $(DEMO_OUT)/eval/report.md, scores $(DEMO_OUT)/predict/predictions.csv"; \
	echo "What it is not: the demo model is a small EfficientNet-B0 trained from random weights for a few CPU minutes"; \
	echo "on two real clips. It does NOT detect deepfakes, and its AUC (on synthetic SBI fakes) says nothing about"; \
	echo "LAA-Net. A real detector: configs/laanet_sbi.yaml on FF++ with ImageNet weights, on GPUs (docs/training.md)."

bench: $(STAMP)
	@for b in bench/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; PYTHONPATH=. $(PY) -m bench.$$m || exit 1; done

realworld: $(STAMP)
	$(PY) -m bench.realworld --out $(OUT) --device $(DEVICE) $(if $(QUICK),--quick)

# Every CUDA path measured in one go (under 8 min on a GPU); DEVICE=cpu QUICK=1 runs the same code in under 2 min.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check --out $(if $(filter out/realworld,$(OUT)),out/gpu_check,$(OUT)) \
		--device $(if $(filter command line environment,$(origin DEVICE)),$(DEVICE),cuda) $(if $(QUICK),--quick)

clean:
	rm -rf out runs .pytest_cache
