# selfsup_pcd: `make install` then `make test`. Everything runs on CPU; see README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-full lint demo clean help

help:
	@echo "make install    create .venv (Python 3.11) and install pinned requirements + the package"
	@echo "make test       fast test suite (skips @pytest.mark.slow)"
	@echo "make test-full  every test, slow ones included"
	@echo "make lint       ruff"
	@echo "make demo       short training + linear-SVM evaluation on procedural shapes"

install: $(STAMP)

# Re-runs only when requirements.txt or pyproject.toml change, so a second `make install` is instant.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-full: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check selfsup_pcd tests benchmarks

demo: $(STAMP)
	$(PY) -m selfsup_pcd.train experiment=demo
	$(PY) -m selfsup_pcd.eval data=procedural data.train_per_class=30 data.test_per_class=15 \
		data.num_points=512 run_name=demo_svm_pretrained ckpt_path=logs/train/runs/demo/backbone.pt \
		task.shots=[1,2] task.draws=20
	$(PY) -m selfsup_pcd.eval data=procedural data.train_per_class=30 data.test_per_class=15 \
		data.num_points=512 run_name=demo_svm_random task.shots=[1,2] task.draws=20

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
