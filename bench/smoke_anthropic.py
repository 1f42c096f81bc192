"""Smoke run with a real anthropic model; skipped unless its API key is set (see smoke_models)."""

import sys

from bench.smoke_models import main

if __name__ == "__main__":
    sys.exit(main("anthropic"))
