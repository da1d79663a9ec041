# The switchboard. Logic lives in ci/ and data_scripts/ (Python); these recipes only call it.
#   make run                  set up, prepare data, execute every notebook (smoke), build the site
#   make test                 set up, then all tests: labkit, topic modules, checker, nbval, browser
#   make run NB=02 PROFILE=full DEVICE=cuda GPU=1    one notebook, GPU-scale, CUDA builds (requirements/lock-gpu.txt)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NB ?=
PROFILE ?= smoke
DEVICE ?= auto
JOBS ?= 1
GPU ?=
export LABKIT_DATA_ROOT ?= $(CURDIR)/data
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: setup data run test html lab lock clean

setup:
	$(PYTHON) ci/bootstrap.py $(if $(GPU),--gpu,)

data: setup
	$(PY) -m data_scripts.prepare $(if $(filter full,$(PROFILE)),--profile full,)

run: data
	$(PY) ci/run_notebooks.py --nb "$(NB)" --profile $(PROFILE) --device $(DEVICE) --jobs $(JOBS); \
	status=$$?; $(PY) ci/build_site.py --from build/executed; exit $$status

test: data
	$(PY) ci/run_tests.py

html: setup
	$(PY) ci/build_site.py --from build/executed

lab: data
	$(PY) ci/lab.py

lock:
	$(PY) -m pip install -q -r requirements/requirements.in && $(PY) ci/freeze_lock.py

clean:
	rm -rf build
