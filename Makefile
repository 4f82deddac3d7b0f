# The two set-up commands of the README: `make demo` and `make test`.
# Both create or refresh .venv; the install re-runs only when setup.py / setup.cfg change.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Test processes: one per core of the 2-core CI machine; a test file stays in one process, so
# its module fixtures (trained runs, exports) are built once.
WORKERS ?= 2

.PHONY: demo test test-fast test-demo test-node services bench clean-demo

$(STAMP): setup.py setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/keras-ptx demo --workdir demo-run

test: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --durations=10

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile -m "not slow and not demo"

test-demo: $(STAMP)
	$(PY) -m pytest -q -m demo

# The DICOM node against Orthanc and dcmtk (installed by `make services` as root).
services: $(STAMP)
	$(PY) tests/dicom_services.py

test-node: services
	KERAS_PTX_NODE_TESTS=1 $(PY) -m pytest -q --durations=10 tests/test_node_orthanc.py

clean-demo:
	rm -rf demo-run
