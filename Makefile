# The two commands: `make demo` and `make test`. Each installs the Debian packages it needs
# (idempotently), then builds. `make build` builds release binaries into build/bin.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
DEB_PACKAGES := build-essential cmake pkg-config libomp-dev nlohmann-json3-dev libcpp-httplib-dev \
  libpcre2-dev libutf8proc-dev libcli11-dev libopenblas-dev libgtest-dev libgmock-dev \
  libbenchmark-dev python3 python3-venv curl
DEB_DATA := r-cran-janeaustenr bible-kjv-text jargon-text

.PHONY: deps build test demo bench fuzz clean pyenv

# Install only what is missing; apt-get update only when something is.
deps:
	@missing=""; for p in $(DEB_PACKAGES) $(DEB_DATA); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

# The venv the OpenAI-client test of the server runs in (tests/serve/test_openai_client.py):
# pip's `openai`, installed once. If pip cannot reach the index, that test FAILS (never skips).
PYENV := $(BUILD)/pyenv
$(PYENV)/.openai-installed:
	@/usr/bin/python3 -m venv $(PYENV) && $(PYENV)/bin/pip install -q openai && touch $@ \
	  || echo "WARNING: could not pip install openai into $(PYENV): the serve_openai_client test will fail"
pyenv: $(PYENV)/.openai-installed

test: build pyenv
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	bash scripts/demo.sh

bench: build
	bash scripts/bench.sh

# Fuzz the parsers with libFuzzer under ASan/UBSan (needs clang); FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 120
fuzz:
	bash tests/fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD)
