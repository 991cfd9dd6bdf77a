"""Progress bars (tqdm) that can be switched off."""

from __future__ import annotations

__all__ = ["progress_bar", "progress_counter"]


def progress_bar(iterable, enabled: bool = True, **kwargs):
    """``tqdm(iterable)`` when enabled (auto notebook/terminal), else the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_counter(total: int, enabled: bool = True, **kwargs):
    """A bar advanced by hand (``.update(n)``, ``.close()``); a silent one when disabled."""
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, **kwargs)
