"""Estimation: the deconfounded AIE of every node (Fotouhi et al., arXiv 2412.02893).

From the bottom up:

- :mod:`.linalg` — standardization, PCA, randomized SVD, escalating
  Cholesky, row blocks;
- :mod:`.confounders` — k-means topics, one-hot labels, the confounder's
  features;
- :mod:`.features` — the balance features ``g(q, z)``: layout, builder,
  dense and factored operators;
- :mod:`.solvers` — working-set Newton and FISTA on the dual, certificates;
- :mod:`.balancer` — ``EntropyBalancer`` (scikit-learn style), float64
  re-check of solves off the CPU;
- :mod:`.ratio_models` — the density-ratio models of the cross-world
  weights (entropy balancing, or the paper's Gaussian models);
- :mod:`.gamma_rule` — ``gamma="auto"``;
- :mod:`.node_coords` — node coordinates from memory or streamed from a
  store;
- :mod:`.partners` — each prompt's ``K`` partners, the HT and Hajek
  statistics over the pairs, calibration;
- :mod:`.outcome_model` — the ridge outcome model of the augmented AIE;
- :mod:`.options` — the estimator's settings, checked once;
- :mod:`.engine` — the pass over chunks of nodes;
- :mod:`.aie_table` — their results, ``AIEResult`` and ``AIETable``;
- :mod:`.aie` — ``aie`` and ``aie_many``;
- :mod:`.mediate` — ``mediate``: capture, topics and the AIE of every node
  of a model;
- :mod:`.simulate` — planted-truth designs for validation.
"""
