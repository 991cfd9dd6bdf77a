"""Interventions: running a model with some nodes set to other values.

- :mod:`.rows` — the shared engine: patched rows next to their unpatched
  copies in one forward pass, grouped writes, prefix-cache starts;
- :mod:`.clean_corrupt` — clean/corrupt prompt pairs (their checks) and
  ``PatchingResult``;
- :mod:`.patching` — ``patch``: classic activation patching;
- :mod:`.attribution` — attribution patching (a gradient approximation);
- :mod:`.gradients` — node values and the outcome's gradients, per prompt;
- :mod:`.resample` — ``resample``: the resample (interventional) AIE,
  exactly or to first order;
- :mod:`.confirm` — ``confirm``: a fast AIE's top nodes run exactly, and
  the agreement;
- :mod:`.ablation` — ``ablate`` and ``ablation_curve``.
"""
