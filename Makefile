# Two commands on a fresh machine:  make demo   |   make test
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PYTEST_ARGS ?=
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv sysdeps demo-sysdeps smoke test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

# Debian packages the apps need: espeak-ng (the Speech tab and `omniar tts` turn text into phonemes with it)
demo-sysdeps:
	@if ! command -v espeak-ng >/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; fi

# ... and those the tests add: chromium (browser tests), fortunes (text corpus of assets/text-fortunes-bpe)
sysdeps:
	@if ! command -v chromium >/dev/null || ! command -v espeak-ng >/dev/null || \
	    ! [ -f /usr/share/games/fortunes/fortunes ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium espeak-ng fortunes >/dev/null; fi

# Import every pinned package and touch the compiled ops: a torch/torchvision/torchaudio
# mismatch imports fine under `pip check` but fails here.
smoke: venv
	$(PY) .ci/smoke.py

test: venv sysdeps smoke
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv demo-sysdeps
	$(PY) -m apps.cli demo

bench: venv
	$(PY) benchmarks/text_decode.py
	$(PY) benchmarks/text_quality.py
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) .pytest_cache
