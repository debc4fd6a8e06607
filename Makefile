# One command each: `make lab` (the lessons, in JupyterLab), `make demo` (headless: kill a run,
# resume it, compare), `make test` (every test, notebooks included).
# Both create .venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
export JUPYTER_PLATFORM_DIRS = 1

.PHONY: setup lab demo lint test test-no-browser bench notebooks site clean

# PIP_ARGS: extra pip options for the first setup, e.g. on a machine without an NVIDIA GPU
#   make lab PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# (torch 2.13.0's CPU build, about 200 MB, instead of its CUDA build and nvidia-* packages).
PIP_ARGS ?=

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

# JupyterLab's own settings for `make lab` live in .venv/lab (ignored, removed by `make clean`):
# no news or update pop-up (it covers the quiz feedback), and kernels talk to the server over
# local IPC sockets instead of TCP - which is also what silences ipykernel's repeated
# "Kernel is running over TCP without encryption" warning (harmless on a laptop: the ports
# only listen on 127.0.0.1). Rooted at the repository so the start page's picture (docs/)
# shows; it opens on notebooks/00_start_here.ipynb. A lesson only read keeps its bytes even on
# another Python than the tested one (ckptlab/lab/jupyter_hooks.py): git status stays clean.
LAB_DIR = $(VENV)/lab
LAB_NOTIFICATIONS = $(LAB_DIR)/settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings

lab: setup  ## open the lessons in JupyterLab
	@mkdir -p $(dir $(LAB_NOTIFICATIONS)) $(LAB_DIR)/workspaces
	@echo '{"fetchNews": "false", "checkForUpdates": false}' > $(LAB_NOTIFICATIONS)
	JUPYTERLAB_SETTINGS_DIR=$(LAB_DIR)/settings JUPYTERLAB_WORKSPACES_DIR=$(LAB_DIR)/workspaces \
	$(PY) -m jupyter lab --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb \
		--ContentsManager.pre_save_hook=ckptlab.lab.jupyter_hooks.keep_tracked_language_info \
		--KernelManager.transport=ipc $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# tools/present.py: Voila on a curated copy of the lessons (never the solutions), each lesson
# pre-run in a waiting kernel so that it is usable within seconds of opening, in the
# presentation style. PRESENT_ARGS for more: --preheat 04 05 (pre-run only these), --no-preheat.
.PHONY: present
present: setup  ## serve the lessons as live pages, code hidden, for projecting (LESSON=04_....ipynb for one)
	$(PY) tools/present.py $(LESSON) --port $(or $(PORT),8866) $(PRESENT_ARGS)

demo: setup  ## kill a training run with SIGKILL, resume it, compare with an uninterrupted run
	$(PY) -m ckptlab demo

# Three workers, each taking whole files (a lesson's cells, and the items conftest.py adds after
# them, run in order in one kernel): one file's waiting - a browser, a killed subprocess, a
# disk flush, a lease that must lapse - overlaps another's work. Most files wait as much as
# they compute, so on 2 cores a third worker still shortens the run.
PYTEST_WORKERS = -n 3 --dist loadfile --durations=25

lint: setup  ## ruff: import order, unused names, lines within 100 (pyproject.toml)
	$(PY) -m ruff check .

test: setup lint  ## lint, then every test: unit, fault, exact-resume, notebooks, real browser
	bash tools/ensure_chromium.sh
	CKPTLAB_REQUIRE_BROWSER=1 $(PY) -m pytest -q $(PYTEST_WORKERS)

test-no-browser: setup lint  ## lint, then every test except the real-browser ones (they skip, saying so)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

notebooks: setup  ## re-execute the lessons in place (refreshes their committed outputs)
	$(PY) tools/refresh_notebooks.py

site: setup  ## execute every lesson and export the rendered suite to site/ (open site/index.html)
	$(PY) tools/build_site.py --out site

bench: setup  ## measured figures for benchmarks/README.md
	$(PY) benchmarks/time_to_solve.py
	$(PY) benchmarks/checkpoint_cost.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
