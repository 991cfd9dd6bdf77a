"""Activations: many nodes read in one forward pass per batch, in memory or on disk.

- :mod:`.capturing` — ``collect`` (padded batches, optional on-disk store)
  and ``capture`` (inside a user's own nnsight trace), and the read plans
  they run;
- :mod:`.captured` — their result types, ``Activations`` and ``Captured``;
- :mod:`.store` — ``ActivationStore``, the on-disk shards of a large capture.
"""

from .captured import Activations as Activations
from .captured import Captured as Captured
from .capturing import capture as capture
from .capturing import check_nodes as check_nodes
from .capturing import check_prompts as check_prompts
from .capturing import collect as collect
from .capturing import read_plan as read_plan
from .capturing import split_reads as split_reads
from .store import ActivationStore as ActivationStore

__all__ = ["Activations", "Captured", "collect", "capture", "read_plan", "split_reads", "check_nodes",
           "check_prompts", "ActivationStore"]
