# Every target installs what it needs first, so any of them works as the first command on a clone.
PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PROFILE     ?= smoke
RESULTS     ?= results
SWEEP_ARGS  ?=
SWEEP       := RAY_AUTH_MODE=disabled RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 $(PY) -m harness.sweep

.PHONY: install test test-slow mlflow-ui mlflow-server report report-screenshot clean gpu-check \
        ablation-table1 ablation-table2 ablation-table3 ablation-table4 ablation-table5 \
        ablation-table6 ablation-table7 ablation-shift-ratio ablation-table12 ablation-table8-released ablation-timm

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	RAY_AUTH_MODE=disabled RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 $(PY) -m pytest -q tests

# The full-paper size checks for every row of Tables 1-4, 6, 7 (minutes on 2 cores).
test-slow: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m slow tests

ablation-table1: $(STAMP)
	$(SWEEP) ablations/table1_bninception_branch.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table2: $(STAMP)
	$(SWEEP) ablations/table2_bninception_shift_ratio.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table3: $(STAMP)
	$(SWEEP) ablations/table3_resnet50_placement.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table4: $(STAMP)
	$(SWEEP) ablations/table4_resnet50_shift_ratio.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-timm: $(STAMP)
	$(SWEEP) ablations/timm_backbones.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table5: $(STAMP)
	$(SWEEP) ablations/table5_components.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table6: $(STAMP)
	$(SWEEP) ablations/table6_bninception_num_gsf.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table7: $(STAMP)
	$(SWEEP) ablations/table7_resnet50_num_gsf.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-shift-ratio: $(STAMP)
	$(SWEEP) ablations/shift_ratio.yaml --profile $(PROFILE) --results-dir $(RESULTS) $(SWEEP_ARGS)
# The authors' released checkpoints on Something-Something-V1, evaluation only (README: paths to set).
ablation-table8-released: $(STAMP)
	$(SWEEP) ablations/table8_released.yaml --profile paper --results-dir $(RESULTS) $(SWEEP_ARGS)
ablation-table12: $(STAMP)
	$(SWEEP) ablations/table12_latency.yaml --profile $(PROFILE) --results-dir $(RESULTS) --measure-only --cpus-per-trial $(shell nproc) $(SWEEP_ARGS)

# The first thing to run on a GPU machine (benchmarks/gpu_check.py; a bare one needs only the wheels of
# benchmarks/gpu_check_requirements.txt): RESULTS/gpu_check/gpu_check.{md,json}. GPU_CHECK_ARGS adds flags,
# e.g. GPU_CHECK_ARGS="--device cpu --tiny" or "--budget-s 600".
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out $(RESULTS)/gpu_check $(GPU_CHECK_ARGS)

# RESULTS/index.html: every sweep's verdicts, tables (rows linked to their MLflow runs) and figures.
# MLFLOW_UI_URL sets the address the links point at (default http://127.0.0.1:5000, `make mlflow-ui`).
report: $(STAMP)
	$(PY) -m reports $(RESULTS)

# The documented browser check of the index page: RESULTS/index.png from Debian's headless chromium.
report-screenshot: report
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
	  --disable-sync --no-first-run --user-data-dir=$$(mktemp -d) --window-size=1400,3000 \
	  --screenshot=$(abspath $(RESULTS))/index.png file://$(abspath $(RESULTS))/index.html

# The MLflow UI over the sweeps' store (sqlite under $(RESULTS) unless MLFLOW_TRACKING_URI is set).
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(abspath $(RESULTS))/mlflow.db}

# The tracking server every node of a Ray cluster logs to (a sweep with --address needs one; see
# README, "Running on a cluster"), bound to MLFLOW_HOST:MLFLOW_PORT. MLflow refuses requests whose
# Host header is not in MLFLOW_ALLOWED_HOSTS (HOST:PORT patterns, * a wildcard): by default this
# machine's names and addresses and the private ranges. Its sqlite store and artifacts live under
# $(RESULTS)/mlflow-server/. Then, for the driver:
#   MLFLOW_TRACKING_URI=http://THIS_HOST:$(MLFLOW_PORT) make ablation-table5 SWEEP_ARGS="--address HEAD:6379 --storage /nfs/..."
MLFLOW_HOST          ?= 0.0.0.0
MLFLOW_PORT          ?= 5000
comma                := ,
empty                :=
space                := $(empty) $(empty)
MLFLOW_ALLOWED_HOSTS ?= $(subst $(space),$(comma),$(strip localhost:* 127.0.0.1:* $(foreach h,$(sort $(shell hostname) \
                          $(shell hostname -f 2>/dev/null) $(shell hostname -I 2>/dev/null)),$(if $(findstring :,$(h)),,$(h):*)) 10.* 172.* 192.168.*))
mlflow-server: $(STAMP)
	mkdir -p $(abspath $(RESULTS))/mlflow-server
	$(VENV)/bin/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --allowed-hosts '$(MLFLOW_ALLOWED_HOSTS)' \
	  --backend-store-uri sqlite:///$(abspath $(RESULTS))/mlflow-server/mlflow.db \
	  --artifacts-destination $(abspath $(RESULTS))/mlflow-server/artifacts

clean:
	rm -rf $(RESULTS) .pytest_cache
