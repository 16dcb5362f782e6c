# The two commands: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu: the CPU-only wheels, without the CUDA libraries
TORCH_INDEX ?=
RUN_DIR ?= runs/demo

.PHONY: setup demo test bench bench-quick lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first (an installed torch >= 2.4 is kept; the CPU-only wheel on this disk when the CUDA build does not fit:
# see tools/install_torch.sh), then the package.
$(VENV)/.installed: $(PY) pyproject.toml
	bash tools/install_torch.sh $(PY) "$(TORCH_PIN)" $(TORCH_INDEX)
	$(PY) -m pip install -q --no-cache-dir -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dnncompress run configs/demo.yaml output_dir=$(RUN_DIR) stages.1.prune.plot=$(RUN_DIR)/sensitivity.png stages.5.pack.output=$(RUN_DIR)/model.dnc
	$(VENV)/bin/dnncompress report $(RUN_DIR)/model.dnc --plot $(RUN_DIR)/sizes.png --html $(RUN_DIR)/report.html --history $(RUN_DIR)/04-finetune.pt

test: setup
	$(PY) -m pytest tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

# issue 14's guard (a few minutes, not part of `make test`): QAT and packing speed against their baselines
bench-quick: setup
	$(PY) benchmarks/quick_bench.py

lint: setup
	$(VENV)/bin/ruff check dnncompress tests benchmarks

clean:
	rm -rf runs .pytest_cache build *.egg-info
