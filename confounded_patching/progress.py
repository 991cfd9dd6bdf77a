"""Progress bars (tqdm) that can be switched off."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(iterable, enabled: bool = True, **kwargs):
    """``tqdm(iterable)`` when enabled (auto notebook/terminal), else the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
