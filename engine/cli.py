"""Argument helpers shared by the command lines (``query.py``, ``python -m serve``, the
benchmarks): standard library only, so checking arguments never imports torch."""

from __future__ import annotations

import argparse

DEFAULT_ARTIFACTS = "artifacts/demo"
# intra-op threads (torch and FAISS) per engine call when serving: one request is a handful of
# small matrix products, which a second thread only slows (its start-up and wake-ups cost more
# than it saves, and under load the threads of concurrent requests fight over the cores);
# concurrency comes from serving requests side by side (`python -m serve --engine-threads`)
DEFAULT_SERVE_THREADS = 1
RERANK_MODES = ("auto", "always", "never")  # rerank.policy.MODES, without importing torch


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port 1..65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1..65535, got {value}")
    return value
