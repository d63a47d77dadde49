"""Errors raised by the towers package at its boundaries."""

from __future__ import annotations


class TowerError(ValueError):
    """Bad arguments or inputs for a tower: the message says what was expected and what arrived."""


class EmptySessionError(TowerError):
    """A session with no usable event: the user tower cannot embed it; the caller falls back
    (popularity, or the engine's own policy)."""
