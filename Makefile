# CV Cookbook: `make course` runs the whole course, `make test` runs the tests.
# Both create what they need first (venv, Jupyter kernel, data). Name a subset with NB="00 01".

PYTHON3 ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
NB ?=
BUILD ?= build
PIP_FLAGS ?=
# A venv stamp per project folder: a venv cached outside the clone gets cvhelpers re-pointed here.
ROOT_KEY := $(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
# The venv is keyed on the pins: change requirements.txt/constraints.txt and it is rebuilt.
REQ_KEY := $(shell cat requirements.txt constraints.txt | sha256sum | cut -c1-16)
# Detectron2 (v0.6 from PyPI's pb1-detectron2 sdist, pure Python) has its own pins and stamp.
D2_KEY := $(shell cat constraints-detectron2.txt tools/install_detectron2.py | sha256sum | cut -c1-16)
# The edge converters (LiteRT, ExecuTorch, Core ML) cannot live beside the course pins: their own
# venv, keyed on its own pins; notebooks and tests find it through $CVC_EDGE_PYTHON. EDGE=0 skips it.
EDGE ?= 1
EDGE_VENV ?= .venv-edge
EDGE_KEY := $(shell cat requirements-edge.txt constraints-edge.txt | sha256sum | cut -c1-16)
export CVC_EDGE_PYTHON := $(abspath $(EDGE_VENV))/bin/python
# Debian packages with offline data: Fashion-MNIST, real photos with VOC/COCO labels, and
# OpenCV's sample photos (more real photos with known ImageNet classes); Chromium tests the website.
APT_PACKAGES ?= dataset-fashion-mnist labelme-examples opencv-doc chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: help venv detectron2 edge system-data data course test unit notebooks lab clean site student student-smoke site-check record time-lines

help:
	@echo "make course   run every notebook in its full profile -> $(BUILD)/results.{json,md}"
	@echo "make test     unit tests + every notebook in its smoke profile"
	@echo "make lab      open JupyterLab on the course"
	@echo "make site     the course website from make course's outputs -> $(BUILD)/site"
	@echo "make student  student copies of the notebooks (solutions removed) -> $(BUILD)/student"
	@echo "make detectron2  install Detectron2 v0.6 (pure Python, pinned) into the venv (make data does)"
	@echo "make edge     the edge tool venv (LiteRT, ExecuTorch, Core ML converters; EDGE=0 skips it)"
	@echo "make record   commit make course's results as docs/results/ and render the Time lines"
	@echo "options: NB=\"00 01\" (subset)  VENV=path (default .venv)  EDGE_VENV=path (default .venv-edge)"

$(VENV)/.installed-$(REQ_KEY):
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -q -r requirements.txt -c constraints.txt
	rm -f $(VENV)/.installed-*
	touch $@

$(VENV)/.cvhelpers-$(ROOT_KEY): $(VENV)/.installed-$(REQ_KEY) pyproject.toml
	$(PIP) install $(PIP_FLAGS) -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --user --name cv-cookbook --display-name "CV Cookbook (Python 3.11)" >/dev/null
	rm -f $(VENV)/.cvhelpers-*
	touch $@

venv: $(VENV)/.cvhelpers-$(ROOT_KEY)

$(VENV)/.detectron2-$(D2_KEY): $(VENV)/.installed-$(REQ_KEY)
	$(PY) tools/install_detectron2.py
	rm -f $(VENV)/.detectron2-*
	touch $@

detectron2: $(VENV)/.detectron2-$(D2_KEY)

$(EDGE_VENV)/.installed-$(EDGE_KEY):
	test -x $(EDGE_VENV)/bin/python || $(PYTHON3) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip --disable-pip-version-check install $(PIP_FLAGS) -q -r requirements-edge.txt -c constraints-edge.txt
	rm -f $(EDGE_VENV)/.installed-*
	touch $@

edge: $(if $(filter 1,$(EDGE)),$(EDGE_VENV)/.installed-$(EDGE_KEY))

system-data:
	@if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing \
	      || echo "warning: could not install $$missing; the loaders will look elsewhere"; \
	  fi; \
	fi

data: venv detectron2 edge system-data
	$(PY) -m cvhelpers.data.prepare --root datasets

unit: data
	$(PY) -m pytest tests

notebooks: data
	$(PY) -m cvhelpers.course.runner --profile smoke --out $(BUILD)/smoke $(NB)

# Student copies of every lesson (each holds exercises) must still run (checks skip, not fail).
STUDENT_NB ?=

site: venv
	$(PY) -m cvhelpers.course.site --notebooks $(BUILD)/notebooks --results $(BUILD)/results.json --out $(BUILD)/site

student: venv
	$(PY) -m cvhelpers.course.workshop student notebooks $(BUILD)/student $(NB)

student-smoke: venv data
	$(PY) -m cvhelpers.course.workshop student notebooks $(BUILD)/smoke-student/src $(STUDENT_NB)
	$(PY) -m cvhelpers.course.runner --profile smoke --notebooks-dir $(BUILD)/smoke-student/src --out $(BUILD)/smoke-student $(STUDENT_NB)

site-check: notebooks
	$(PY) -m cvhelpers.course.site --notebooks $(BUILD)/smoke/notebooks --results $(BUILD)/smoke/results.json --out $(BUILD)/smoke/site
	$(PY) tools/browser_check.py $(BUILD)/smoke/site --screenshot $(BUILD)/smoke/site-index.png

test: unit student-smoke site-check
	@$(PY) -m cvhelpers.course.runner --summary $(BUILD)/smoke/results.json

course: data
	$(PY) -m cvhelpers.course.runner --profile full --out $(BUILD) $(NB)

# After a quiet `make course` and `make notebooks`: commit their results as the course's record,
# and render every notebook's Time line from it (tests/test_prose.py checks they agree).
record: venv
	mkdir -p docs/results
	cp $(BUILD)/results.json docs/results/full.json
	cp $(BUILD)/smoke/results.json docs/results/smoke.json
	$(MAKE) time-lines

time-lines: venv
	$(PY) -m cvhelpers.course.timeline --notebooks notebooks

lab: data
	cd notebooks && $(abspath $(PY)) -m cvhelpers.course.lab

clean:
	rm -rf $(BUILD)
