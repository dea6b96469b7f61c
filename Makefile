# recsys: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NPROC ?= 1
ARGS ?=
PORT ?= 5000
EXPERIMENT ?= recsys
# make serve: the registered model (tracking.register_as, by default data.name) and its port.
MODEL ?= movielens
SERVE_PORT ?= 5001
# pip's configured find-links (where a local CPU build of torch may lie); uv does not read it.
FIND_LINKS := $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p")
# One run folder for all torchrun processes (each would stamp its own time otherwise).
RUN_DIR ?= outputs/$(shell date +%Y-%m-%d/%H-%M-%S)
MOVIELENS := data/movielens/train.parquet
SYNTH_ROWS ?= 1000000
SYNTH_EVAL_ROWS ?= 200000
# make tune: Optuna trials, and the search space conf/tune/$(TUNE).yaml (or --config-dir's).
TRIALS ?= 20
# make bench-quality: trainer seeds per (data set, model).
SEEDS ?= 0,1,2
TUNE ?= default
# make notebook: which one of notebooks/ to run.
NB ?= quickstart
# Fetch MovieLens unless ARGS picks another data set or points at other files.
OTHER_DATA := $(findstring data.train_path=,$(ARGS))$(if $(findstring data=,$(ARGS)),$(if $(findstring data=movielens,$(ARGS)),,other))
NEEDS_MOVIELENS := $(if $(OTHER_DATA),,yes)

.DEFAULT_GOAL := help
.PHONY: help setup data data-synth train train-days sweep tune test test-full bench bench-data bench-quality bench-hashing lint fmt ui serve notebook clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: NPROC=n (torchrun processes), ARGS='hydra overrides', RUN_DIR (NPROC>1), TRIALS=20 TUNE=default (tune), PORT=5000 (ui), MODEL=movielens SERVE_PORT=5001 (serve)"

setup: $(VENV)/.installed ## create .venv with the pinned stack (idempotent)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as here), every process would
	# otherwise compile torch from source on import (~10 s per torchrun rank or loader worker).
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e '.[dev]' $(if $(FIND_LINKS),--find-links $(FIND_LINKS))
	$(BIN)/python -c "import torch, fbgemm_gpu, torchrec, mlflow; print('stack ok: torch', torch.__version__, 'torchrec', torchrec.__version__)"
	touch $@

data: setup ## fetch MovieLens-100K and build the click log under data/movielens
	$(BIN)/recsys-data movielens

data-synth: setup ## synthetic Criteo-layout TSV in data/criteo/{train,eval} for data=criteo (SYNTH_ROWS=1000000)
	$(BIN)/recsys-data synth --format tsv --rows $(SYNTH_ROWS) --out data/criteo/train
	$(BIN)/recsys-data synth --format tsv --rows $(SYNTH_EVAL_ROWS) --seed 1 --out data/criteo/eval

$(MOVIELENS): | setup
	$(BIN)/recsys-data movielens

train: setup $(if $(NEEDS_MOVIELENS),$(MOVIELENS)) ## train + evaluate + track + export (NPROC=n, ARGS='overrides')
ifeq ($(NPROC),1)
	$(BIN)/recsys-train $(ARGS)
else
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m recsys.cli.train hydra.run.dir=$(RUN_DIR) $(ARGS)
endif

train-days: setup ## day after day: ARGS='data.days=PATH/day=*'; warm start, next-day AUC, drift, delta exports (one process)
	$(BIN)/python -m recsys.cli.days $(ARGS)

sweep: setup $(if $(NEEDS_MOVIELENS),$(MOVIELENS)) ## Hydra multirun, e.g. ARGS='model.embedding_dim=8,16,32'; best by valid/auc
	$(BIN)/recsys-train --multirun $(ARGS)

tune: setup $(if $(NEEDS_MOVIELENS),$(MOVIELENS)) ## Optuna (TPE, pruning) on valid/auc, TRIALS=20; writes the best config
	$(BIN)/recsys-train --multirun +tune=$(TUNE) hydra.sweeper.n_trials=$(TRIALS) $(ARGS)

test: setup ## fast test suite (what CI runs)
	$(BIN)/python -m pytest -m "not slow" -q

test-full: setup ## every test, slow ones included
	$(BIN)/python -m pytest -q

bench: setup ## benchmarks: recsys vs plain TorchRec / PyTorch loops, machine limits, 1 vs 2 processes, loader, RSS (ARGS=--quick: smoke run)
	$(BIN)/python -m recsys.bench $(ARGS)

bench-data: setup ## data benchmarks only: hashing ids/s and loader rows/s (Parquet, TSV)
	$(BIN)/python -m recsys.bench --only data

bench-quality: setup ## defaults vs hashed LR vs FM on MovieLens, adult, 3 synthetic worlds; mean +- sd over SEEDS
	$(BIN)/python -m recsys.bench.quality --seeds $(SEEDS) $(ARGS)

bench-hashing: setup ## collision study: eval AUC as id tables shrink to 1/100 of the ids, plain/double/qr/managed (ARGS=--quick: smoke run)
	$(BIN)/python -m recsys.bench.collisions $(if $(findstring --quick,$(ARGS)),,--seeds $(SEEDS)) $(ARGS)

lint: setup ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup ## ruff fix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: setup ## MLflow UI on 127.0.0.1:$(PORT) over ./mlruns
	mkdir -p mlruns/artifacts
	@echo "MLflow UI (model-training view): open $$($(BIN)/python -c 'import sys; from recsys.tracking.urls import local_ui_url; print(local_ui_url(*sys.argv[1:3], int(sys.argv[3])))' $(CURDIR)/mlruns/mlflow.db $(EXPERIMENT) $(PORT))"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --workers 1 --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port $(PORT)

serve: setup ## REST scoring of models:/$(MODEL)@champion on 127.0.0.1:$(SERVE_PORT) (POST /invocations)
	@# PATH: the server execs `uvicorn` by name, from the venv.
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns/mlflow.db $(BIN)/mlflow models serve \
		-m models:/$(MODEL)@champion --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

notebook: setup ## run notebooks/NB.ipynb (NB=quickstart|comparing_runs|embeddings|inspect_run); executed copy in outputs/notebooks/
	mkdir -p outputs/notebooks
	cd notebooks && ../$(BIN)/jupyter execute --timeout=1200 --output=../outputs/notebooks/$(NB) $(NB).ipynb
	@echo "executed: outputs/notebooks/$(NB).ipynb (open it in VS Code, or any Jupyter front end)"

clean: ## remove outputs, multirun and caches (keeps data/ and mlruns/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
