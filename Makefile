# The README's commands: `make serve`, `make test` and `make bench`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml setup.py inference/_clipped_box.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(BIN)/dfnode serve --config config.yaml

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.inference
	$(BIN)/python -m bench.inference --design forensic --images 8
	$(BIN)/python -m bench.receive
	$(BIN)/python -m bench.end_to_end
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.synth
	$(BIN)/python -m bench.training_data
	$(BIN)/python -m bench.scale

lint: $(STAMP)
	$(BIN)/ruff check core scp inference sr node tests bench
	$(BIN)/mypy

clean:
	rm -rf var build *.egg-info
