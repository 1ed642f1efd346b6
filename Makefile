# likeness: `make demo` runs the embedded companion, `make test` runs the whole suite.
# Both set up everything first (system packages, .venv) and are fast the second time.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := espeak-ng ffmpeg sox chromium postgresql g++ coturn iptables haproxy
# llama-cpp-python builds from source (the registry has no wheel). Skip the parts we
# don't use (~4 min instead of ~10 on two cores) and build for a portable AVX2 CPU:
# a native build turns on AMX kernels that crash (SIGSEGV) on these virtual machines.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
PYTEST_ARGS ?=

.PHONY: setup system-packages models demo test lint bench doctor clean

setup: system-packages $(VENV)/.installed models

# Checked every time (a few ms with dpkg); apt-get runs only when something is missing.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The stamp lives inside .venv: deleting .venv reinstalls; editing pyproject.toml too.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools<81' wheel
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@touch $@

# The MediaPipe face models (Apache-2.0), taken out of the pinned mediapipe wheel (downloaded
# with --no-deps, never installed) and checked by sha256, into the data dir's models folder
# (LIKENESS_DATA_DIR, default ~/.local/share/likeness). Checked every time (well under a
# second); downloads only when a file is missing or differs.
models: $(VENV)/.installed
	$(BIN)/python -m avatar.face.mediapipe_models

demo: setup
	$(BIN)/likeness serve

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check runtime voice avatar consent web tests

bench: setup
	$(BIN)/likeness bench voice --json out/bench-voice.json

doctor: setup
	$(BIN)/likeness doctor

clean:
	rm -rf $(VENV) .pytest_cache
