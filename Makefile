# One job per target. Every target installs into its own virtual environment first.
# Newcomers: `make book` builds the website, `make test` runs the whole test suite.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PY       := $(BIN)/python
STAMP    := $(VENV)/.installed
NOTEBOOKS = chapters solutions exercises quizzes
JOBS     ?= 2
SUBMISSIONS ?= submissions
GRADEBOOK   ?= gradebook
PORT     ?= 8000

.PHONY: install vendor book book-class serve linkcheck test unit nbval site colab execute exercises grade grade-demo grade-overhead set-repository matrix clean help

help:
	@echo "make book       build the website into _build/html"
	@echo "make test       unit tests + nbval over every notebook + the book build with warnings as errors"
	@echo "make serve      serve the built site on http://127.0.0.1:$(PORT)"
	@echo "make execute    re-run every notebook in place in a fresh kernel"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make grade SUBMISSIONS=DIR   grade a folder of submitted notebooks"
	@echo "make colab      run every notebook of the book as Colab does (wheel in a new venv, empty dir)"
	@echo "make set-repository URL=https://github.com/OWNER/NAME BRANCH=main   point the course at your copy"
	@echo "make linkcheck  check the book's external links (needs the network)"
	@echo "make grade-demo  build a class of 40 learners over every chapter, grade it, print time and memory"
	@echo "make grade-overhead  the OS sandbox's cost per notebook, measured with and without it side by side"
	@echo "make lock       rewrite requirements.lock (every package, with hashes) from requirements.txt"
	@echo "make matrix     unit tests and nbval under other machines' numeric settings (BLAS kernels, threads)"

# The stamp depends on what decides the environment, so a second `make install` is a no-op.
# requirements.lock holds every package but torch at one version with its hashes (`make lock`
# writes it from requirements.txt); torch comes from requirements.txt's pin (scripts/lock.py says
# why), and `pip check` proves that the two together are consistent.
PIP_VERSION := 26.3
install: $(STAMP)
$(STAMP): requirements.txt requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps "$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip check
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m riverbank.authoring check-env
	touch $(STAMP)

# requirements.lock again after a change to requirements.txt (pip-compile in .venv-lock; ~4 min).
.PHONY: lock
lock:
	$(PYTHON) scripts/lock.py

# The site's third-party scripts (MathJax, require.js, d3, jquery, Font Awesome 4), fetched
# from npm at the versions and sha512 pinned in _ext/vendor.json; a second run does nothing.
VENDORED := _ext/static/npm/manifest.json
vendor: $(VENDORED)
$(VENDORED): _ext/vendor.json _ext/vendor.py
	$(PYTHON) _ext/vendor.py

# EDITION=class builds the book for a graded class, without the solutions pages or any mention
# of them, into _build/class/_build/html (its own table of contents and configuration).
EDITION ?= full
book: install $(VENDORED)
ifeq ($(EDITION),full)
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "Open _build/html/index.html in a browser, or run: make serve"
else ifeq ($(EDITION),class)
	rm -rf _build/class
	$(PY) -m riverbank.authoring class-edition _build/class
	$(BIN)/jupyter-book build . --all -W -n --keep-going --toc _build/class/_toc.yml \
		--config _build/class/_config.yml --path-output _build/class
	@echo
	@echo "The class edition (no solutions) is in _build/class/_build/html: publish that folder"
else
	$(error EDITION must be full or class, not $(EDITION))
endif

serve: book
	@echo "Serving on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# Every external link in the book (papers, documentation, Colab and GitHub buttons), checked by
# Sphinx's linkcheck builder. Needs the network, so CI does not run it; run it now and then.
# `make book` lists them in _build/external-links.txt; the report, with each link's status, is
# _build/linkcheck/_build/html/output.txt.
linkcheck: install $(VENDORED)
	$(BIN)/jupyter-book build . --builder linkcheck --path-output _build/linkcheck

# The whole suite: unit tests, nbval over every notebook, then the book with warnings as errors.
test: unit nbval book book-class site colab

# The class edition too, so that the site tests can check it has no solutions.
book-class:
	$(MAKE) book EDITION=class

# OMP_WAIT_POLICY=PASSIVE: two workers, each with torch's two threads, on two cores; OpenMP's
# default spin-waiting made the grader's tests ten times slower (same threads, same numbers).
unit: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest tests --ignore=tests/site -n $(JOBS)

# --dist loadfile keeps each notebook's cells on one worker; plain -n would split a notebook.
# tests/printed_numbers.py compares printed numbers to their printed precision (README, "Writing
# and changing notebooks"). One notebook: make nbval NOTEBOOKS=chapters/02_x.ipynb
NBVAL = PYTHONPATH=tests $(BIN)/pytest -p printed_numbers --nbval --nbval-current-env \
	--nbval-sanitize-with tests/nbval-sanitize.cfg -n $(JOBS) --dist loadfile
nbval: install
	$(NBVAL) $(NOTEBOOKS)


# Checks the built pages: Colab and download links, alt text, stored feedback.
site: install
	$(BIN)/pytest tests/site

# Every notebook in _toc.yml run as Colab runs it: alone in an empty directory, in a new venv
# holding only the built wheel and what the Colab setup cells install (~2 min to set up).
# VERSIONS=colab (the default): Colab's published versions (scripts/colab/); VERSIONS=pins:
# requirements.txt's. nbval already runs every notebook under the pins, so make test runs this
# once, under Colab's.
VERSIONS ?= colab
colab: install
	$(PY) scripts/colab_runs.py --jobs $(JOBS) --versions $(VERSIONS)

execute: install
	$(PY) -m riverbank.authoring execute $(NOTEBOOKS)

exercises: install
	$(PY) -m riverbank.authoring exercises
	$(PY) tests/make_submissions.py  # the grader's example submissions are built from exercises/

grade: install
	$(PY) -m riverbank.grading $(SUBMISSIONS) --out $(GRADEBOOK) --jobs $(JOBS)

# Chapter 6's benchmarks: time and peak memory of naive, tiled and SDPA attention against N (and
# the compiled Triton kernel when there is a GPU); prints the table and checks the chapter's
# targets. About two minutes on 2 cores, so not part of `make test`.
.PHONY: bench
bench: install
	$(PY) -m riverbank.bench

# A class of 40 learners x every chapter with exercises, graded once; minutes, so not in `make test`.
grade-demo: install
	rm -rf _build/grade-demo
	$(PY) -m riverbank.grading.demo --learners 40 --out _build/grade-demo --jobs $(JOBS)

# The sandbox's cost per notebook: the demo class (LEARNERS per chapter) graded with and without
# it, alternating, twice each; prints the ratio. About 8 minutes on 2 cores with LEARNERS=2.
LEARNERS ?= 2
grade-overhead: install
	rm -rf _build/grade-overhead
	$(PY) -m riverbank.grading.demo --learners $(LEARNERS) --out _build/grade-overhead --jobs $(JOBS) \
		--sandbox compare --rounds 2

# Publishing a copy of the course: one command points _config.yml and every notebook's Colab
# setup cell at your repository, then the agreement test checks them.
set-repository: install
	@test -n "$(URL)" -a -n "$(BRANCH)" || { echo "usage: make set-repository URL=https://github.com/OWNER/NAME BRANCH=main"; exit 2; }
	$(PY) scripts/set_repository.py "$(URL)" "$(BRANCH)"
	$(BIN)/pytest -q tests/test_repository.py -k colab_setup

# The unit tests and nbval as other machines run them (README, "Right on every machine"): numpy's
# OpenBLAS kernels (Triton's CPU interpreter computes tl.dot with numpy), torch's CPU kernels, and
# one thread. Settings that need AVX-512 are skipped on CPUs without it. About 25 minutes.
MATRIX ?= OPENBLAS_CORETYPE=Haswell OPENBLAS_CORETYPE=SkylakeX OPENBLAS_CORETYPE=Zen \
          ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=avx512 OMP_NUM_THREADS=1
matrix: install
	@for setting in $(MATRIX); do \
	  case $$setting in *SkylakeX|*avx512) grep -qw avx512f /proc/cpuinfo || { echo "== $$setting: skipped (no AVX-512)"; continue; } ;; esac; \
	  echo "== $$setting"; env $$setting $(MAKE) --no-print-directory unit nbval || { echo "== FAILED under $$setting"; exit 1; }; \
	done; echo "== every setting passed"

clean:
	rm -rf _build
