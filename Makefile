# Two commands: `make run` (demo appliance on 127.0.0.1:8080) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test venv demo clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Shepherd needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

.demo/iris.shb: packaging/demo_model.py $(STAMP)
	$(BIN)/python packaging/demo_model.py --out .demo

demo: .demo/iris.shb
	@test -s .demo/admin.token || { $(BIN)/shepherd token create --role admin --name demo-admin --config configs/demo.toml > .demo/admin.token; }
	@echo "admin token (also in .demo/admin.token): $$(cat .demo/admin.token)"

run: demo
	@echo "try: curl -H \"Authorization: Bearer $$(cat .demo/admin.token)\" http://127.0.0.1:8080/api/v1/models"
	$(BIN)/shepherd serve --config configs/demo.toml --import .demo/iris.shb

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/asgi.py

clean:
	rm -rf .demo $(VENV) .pytest_cache .hypothesis
