"""Deprecated: ``resolve_device`` moved to :mod:`confounded_patching.validation`."""

from ._deprecated import warn_moved
from .validation import resolve_device

__all__ = ["resolve_device"]

warn_moved(__name__, "confounded_patching.validation")
