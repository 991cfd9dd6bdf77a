"""Shared set-up for benchmarks: quiet threads, timing, prompts."""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting threads distort timings on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

SUBJECTS = ["nurse", "pilot", "teacher", "engineer", "farmer", "painter", "doctor", "plumber", "singer", "judge",
            "baker", "lawyer", "chef", "dancer", "carpenter", "writer"]
FRAMES = ["In the morning meeting at the office, the {} said that",
          "Yesterday, during the long dinner, the {} told everyone that",
          "After a long day at work, the {} decided that",
          "Everyone at the party agreed that the {} was right when",
          "The {} from the small town across the river said that"]


def prompts(n: int) -> list[str]:
    """n prompts of varied length (ragged batches)."""
    return [FRAMES[i % len(FRAMES)].format(SUBJECTS[(i * 7) % len(SUBJECTS)]) for i in range(n)]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def setup_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
