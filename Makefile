# Two commands: `make run` (demo appliance on 127.0.0.1:8080) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test venv demo clean bench installer exe

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Shepherd needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Compile the Numba drift kernels and detectors into their cache now (about 30 s), as the
	@# installer does: otherwise the first start compiles them in the background while it serves.
	$(BIN)/python -c 'from shepherd.monitoring import kernels; print("drift kernels compiled in %.1f s" % kernels.warm_up())'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

.demo/iris.shb: packaging/demo_model.py $(STAMP)
	$(BIN)/python packaging/demo_model.py --out .demo

demo: .demo/iris.shb
	@test -s .demo/admin.token || { $(BIN)/shepherd token create --role admin --name demo-admin --config configs/demo.toml > .demo/admin.token; }
	@echo "admin token (also in .demo/admin.token): $$(cat .demo/admin.token)"

# Serve in the background, deploy the demo once (deployments survive restarts), then wait on the server.
run: demo
	@$(BIN)/shepherd serve --config configs/demo.toml --import .demo/iris.shb & pid=$$!; \
	trap 'kill $$pid; wait $$pid' INT TERM; \
	export SHEPHERD_TOKEN=$$(cat .demo/admin.token); \
	$(BIN)/shepherd wait-ready && \
	{ $(BIN)/shepherd deployments iris >/dev/null 2>&1 || { $(BIN)/shepherd deploy iris iris 1 && $(BIN)/shepherd promote iris; }; } && \
	echo "ready: export SHEPHERD_TOKEN=$$SHEPHERD_TOKEN; try: .venv/bin/shepherd deployments" && \
	echo "       curl -H \"Authorization: Bearer $$SHEPHERD_TOKEN\" -d '{\"inputs\":[{\"name\":\"X\",\"datatype\":\"FP32\",\"shape\":[1,4],\"data\":[5.1,3.5,1.4,0.2]}]}' http://127.0.0.1:8080/v2/models/iris/infer"; \
	wait $$pid

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

# The offline installer artifact (README: "Installing on a server"); INSTALLER_ARGS=--gpu etc.
installer: $(STAMP)
	$(BIN)/python packaging/build_installer.py $(INSTALLER_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/asgi.py

# Single-file executable dist/shepherd (PyInstaller one-file, CPU dependencies): packaging/freeze/.
# Built in its own venv, build/freeze/venv, with the dev venv's exact versions but none of its
# dev-only packages (scipy, pandas, scikit-learn, mlflow...), so no optional import pulls them in.
exe: $(STAMP)
	$(BIN)/python packaging/freeze/build.py

clean:
	rm -rf .demo $(VENV) .pytest_cache .hypothesis
