# The two commands: `make run` (set up, then run the whole pipeline) and `make test`.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-fast retrain ui

setup:
	bash scripts/setup.sh

run: setup
	dvc repro

test: setup
	pytest -q

test-fast: setup
	pytest -q -m "not slow and not services" --ignore=tests/test_retrain_flow.py

retrain: setup
	python flows/retrain.py

ui:
	mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000
