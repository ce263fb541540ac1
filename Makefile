# Every target installs what it needs first, so any of them works as the first command on a clone.
PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PROFILE     ?= smoke
RESULTS     ?= results
SWEEP_ARGS  ?=
SWEEP       := RAY_AUTH_MODE=disabled RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 $(PY) -m harness.sweep

.PHONY: install test test-slow mlflow-ui mlflow-server report report-screenshot clean gpu-check

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
	RAY_AUTH_MODE=disabled RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 $(PY) -m pytest -q -m slow tests

# The shipped specs, one line each: `make ablation-NAME` runs ablations/SPEC.yaml (NAME=SPEC).
ABLATIONS := \
  table1=table1_bninception_branch \
  table2=table2_bninception_shift_ratio \
  table3=table3_resnet50_placement \
  table4=table4_resnet50_shift_ratio \
  table5=table5_components \
  table6=table6_bninception_num_gsf \
  table7=table7_resnet50_num_gsf \
  table8-released=table8_released \
  table12=table12_latency \
  shift-ratio=shift_ratio \
  timm=timm_backbones
# What a target always passes: Table 8 evaluates the authors' released checkpoints on
# Something-Something-V1, so it is always the paper profile (docs/release.md: paths to set);
# Table 12 only measures, with all of this machine's CPUs per trial.
ABLATION_PROFILE_table8-released := paper
ABLATION_ARGS_table12 = --measure-only --cpus-per-trial $(shell nproc)

ABLATION_TARGETS := $(foreach a,$(ABLATIONS),ablation-$(firstword $(subst =, ,$(a))))
ablation_spec     = $(word 2,$(subst =, ,$(filter $(1)=%,$(ABLATIONS))))
ablation_args     = $(if $(ABLATION_ARGS_$(1)),$(ABLATION_ARGS_$(1))$(space))
.PHONY: $(ABLATION_TARGETS)

$(ABLATION_TARGETS): ablation-%: $(STAMP)
	$(SWEEP) ablations/$(call ablation_spec,$*).yaml --profile $(or $(ABLATION_PROFILE_$*),$(PROFILE)) --results-dir $(RESULTS) $(call ablation_args,$*)$(SWEEP_ARGS)

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
# docs/cluster.md), bound to MLFLOW_HOST:MLFLOW_PORT. MLflow refuses requests whose
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
