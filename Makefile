# selfsup_pcd: `make install` then `make test`. Everything runs on CPU; see README.md.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-full lint demo demo-mvr demo-byol demo-supervised clean help render-libs blas-libs minkowski

help:
	@echo "make install    create .venv (Python 3.11) and install pinned requirements + the package"
	@echo "make test       fast test suite (skips @pytest.mark.slow)"
	@echo "make test-full  every test, slow ones included"
	@echo "make lint       ruff"
	@echo "make demo [METHOD=mvr|byol|supervised]  pretrain on procedural shapes, then linear SVMs: pretrained vs random"
	@echo "make render-libs  check (as root: install) the Debian libraries of offscreen rendering"
	@echo "make minkowski  (re)install MinkowskiEngine 0.5.4: patched, built CPU-only with OpenBLAS, wheel cached"

install: $(STAMP)

# Re-runs only when requirements.txt or pyproject.toml change, so a second `make install` is instant.
$(STAMP): requirements.txt pyproject.toml
	@$(MAKE) --no-print-directory render-libs
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@$(MAKE) --no-print-directory minkowski
	touch $(STAMP)

# MinkowskiEngine (SR-UNet) has no wheel: selfsup_pcd/install/minkowski.py builds one against the installed torch
# (about 6-7 min on 2 cores), caches it in ~/.cache/selfsup_pcd/minkowskiengine and reuses it while torch, Python and
# the patch are unchanged. A failed build stops `make install` with one message.
minkowski: blas-libs
	$(PY) selfsup_pcd/install/minkowski.py

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-full: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check selfsup_pcd tests benchmarks

# `make demo` (METHOD=mvr): render procedural shapes, train a small 2D teacher, MVR-pretrain PointNet, then score
# the exported backbone and a random one with linear SVMs (1 and 2 labels per class) and print both.
# METHOD=byol: the same with STRL/BYOL pretraining; METHOD=supervised: a supervised PointNet.
METHOD ?= mvr
SVM_EVAL := $(PY) -m selfsup_pcd.eval data=procedural data.train_per_class=30 data.test_per_class=15 \
	task.shots=[1,2] task.draws=100
COMPARE := $(PY) -m selfsup_pcd.compare --metric shot_macc --metric test/oa --metric test/macc

demo: $(STAMP)
	@case "$(METHOD)" in mvr|byol|supervised) ;; *) echo "METHOD must be mvr, byol or supervised (got '$(METHOD)')"; exit 2;; esac
	@$(MAKE) --no-print-directory demo-$(METHOD)

demo-mvr: $(STAMP)
	$(PY) -m selfsup_pcd.train experiment=mvr_teacher_demo
	$(PY) -m selfsup_pcd.train experiment=mvr_demo
	$(SVM_EVAL) data.num_points=512 run_name=mvr_demo_svm_pretrained ckpt_path=logs/train/runs/mvr_demo/backbone.pt
	$(SVM_EVAL) data.num_points=512 run_name=mvr_demo_svm_random
	$(COMPARE) logs/eval/runs/mvr_demo_svm_pretrained logs/eval/runs/mvr_demo_svm_random

demo-byol: $(STAMP)
	$(PY) -m selfsup_pcd.train experiment=byol_demo
	$(SVM_EVAL) data.num_points=1024 model=pointnet_strl run_name=byol_demo_svm_pretrained \
		ckpt_path=logs/train/runs/byol_demo/backbone.pt
	$(SVM_EVAL) data.num_points=1024 model=pointnet_strl run_name=byol_demo_svm_random
	$(COMPARE) logs/eval/runs/byol_demo_svm_pretrained logs/eval/runs/byol_demo_svm_random

demo-supervised: $(STAMP)
	$(PY) -m selfsup_pcd.train experiment=demo
	$(SVM_EVAL) data.num_points=512 run_name=demo_svm_pretrained ckpt_path=logs/train/runs/demo/backbone.pt
	$(SVM_EVAL) data.num_points=512 run_name=demo_svm_random
	$(COMPARE) logs/eval/runs/demo_svm_pretrained logs/eval/runs/demo_svm_random

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Shared libraries of the offscreen rendering back ends (selfsup_pcd/render/backend.py): OSMesa
# (libosmesa6) and Mesa EGL (libegl1 libegl-mesa0 libgl1-mesa-dri). As root with apt-get, missing ones are
# installed; otherwise one message names them. Never fatal: EGL alone is enough to render.
RENDER_LIBS_CHECK = \
	ldconfig=$$(command -v ldconfig || echo /sbin/ldconfig); libs=$$($$ldconfig -p 2>/dev/null); missing=""; \
	echo "$$libs" | grep -q 'libOSMesa\.so' || missing="$$missing libosmesa6"; \
	echo "$$libs" | grep -q 'libEGL\.so\.1' || missing="$$missing libegl1"; \
	echo "$$libs" | grep -q 'libEGL_mesa\.so' || missing="$$missing libegl-mesa0"; \
	[ -n "$$(ls /usr/lib/*/dri/swrast_dri.so /usr/lib/dri/swrast_dri.so 2>/dev/null)" ] || \
		missing="$$missing libgl1-mesa-dri"

# OpenBLAS, MinkowskiEngine's BLAS: libopenblas-dev to build (libopenblas0 to run). As root with apt-get it is
# installed; otherwise the MinkowskiEngine build names the package when it is missing.
blas-libs:
	@ldconfig=$$(command -v ldconfig || echo /sbin/ldconfig); \
	if $$ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so '; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "MinkowskiEngine: installing Debian's libopenblas-dev"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends libopenblas-dev >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends libopenblas-dev >/dev/null; } || \
		echo "WARNING: apt-get could not install libopenblas-dev"; \
	fi

render-libs:
	@$(RENDER_LIBS_CHECK); \
	if [ -z "$$missing" ]; then \
		echo "rendering: OSMesa and Mesa EGL libraries found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "rendering: installing Debian packages$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
		echo "WARNING: apt-get could not install$$missing; rendering falls back to whatever back end loads"; \
	else \
		echo "NOTE: offscreen rendering wants the Debian packages$$missing (run: sudo apt-get install$$missing);" \
			"without libosmesa6 it renders through Mesa EGL (PYOPENGL_PLATFORM=egl)"; \
	fi
