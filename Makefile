# firstclick — `make demo` runs the main job on the embedded synthetic data, `make test` the tests.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# faiss flavour: cpu (faiss-cpu) or gpu (faiss-gpu-cu12); e.g. `make demo FAISS=gpu`
FAISS  ?= cpu
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# on a machine where a plain `pip install torch==2.13.0` would fetch a CUDA build.
PIP_ARGS ?=
STAMP  := $(VENV)/.installed-$(FAISS)
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
ARTIFACTS ?= artifacts/demo
PORT   ?= 8000
DATA   ?= amazon_scientific
# HMAC key that pseudonymises user ids in the event log; created on first use, never in artifacts
USER_KEY_FILE ?= .secrets/user.key

.PHONY: install test test-slow test-all lint demo bench serve refresh clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build
	$(BIN)/python -m pip install -q $(PIP_ARGS) torch==2.13.0
	$(BIN)/python -m pip install -q $(PIP_ARGS) -e '.[$(FAISS),dev,serve]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)  ## fast tier: offline, no GPU, a few minutes on 2 cores
	$(OFFLINE) $(BIN)/python -m pytest -m "not slow" || [ $$? -eq 5 ]

test-slow: $(STAMP)  ## slow tier: real MiniLM, shared datasets
	$(OFFLINE) $(BIN)/python -m pytest -m slow || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -m "" || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

demo: $(STAMP)  ## the main job on the embedded synthetic data
	$(OFFLINE) $(BIN)/python -m recdata.stats data=synthetic
	$(OFFLINE) $(BIN)/python train.py experiment=demo stage=all
	$(OFFLINE) $(BIN)/python build_index.py run_name=demo
	for f in examples/*.json; do echo "== $$f"; \
	  $(OFFLINE) $(BIN)/python query.py --session $$f --artifacts $(ARTIFACTS) --pretty || exit 1; done

bench: $(STAMP)  ## make bench [DATA=amazon_scientific|movielens|synthetic] [BENCH_ARGS=--train]
	$(OFFLINE) $(BIN)/python -m benchmarks.run --data $(DATA) $(BENCH_ARGS)

serve: $(STAMP)  ## the service and its page (http://127.0.0.1:$(PORT)/ui/); loopback; without FIRSTCLICK_API_KEYS set it serves with --no-auth; events log to $(ARTIFACTS)/events
	$(OFFLINE) $(BIN)/python -m serve --artifacts $(ARTIFACTS) --port $(PORT) \
	  $(if $(FIRSTCLICK_API_KEYS),,--no-auth) --user-key-file $(USER_KEY_FILE) $(SERVE_ARGS)

refresh: $(STAMP)  ## fine-tune the served run on its event log since the last refresh; the service swaps it in
	$(OFFLINE) $(BIN)/python -m pipeline.refresh --artifacts $(ARTIFACTS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache test-artifacts
