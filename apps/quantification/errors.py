"""Errors of quantification (a module of their own: light to import, e.g. for the viewer)."""
from __future__ import annotations


class QuantificationError(ValueError):
    """An exam that cannot be quantified (named, with the reason)."""


class RegistrationRefused(QuantificationError):
    """Quantification needs the exam's registration, which is marked failed or flagged poor."""
