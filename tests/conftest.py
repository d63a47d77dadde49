"""Shared pytest fixtures. Each block belongs to one package's tests; add yours as a new block."""

from __future__ import annotations

import os

import pytest

# ---- towers: tiny random BERT (owner: towers/ + tests/test_towers.py) -------------------------
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT sentence-transformers model dir (towers.testing.build_tiny_bert)."""
    from towers.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


# ---- end towers ---------------------------------------------------------------------------------
