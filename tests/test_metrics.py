"""Metrics whose tokens differ from prompt to prompt: each row is scored with its own tokens."""

from __future__ import annotations

import pytest
import torch

from confounded_patching.datasets import RowMetric, capitals
from confounded_patching.errors import InputError
from confounded_patching.metrics import answer_logit_diff


def test_answer_metric_scores_each_row_with_its_own_tokens():
    metric = answer_logit_diff([3, 1], [0, 2])
    logits = torch.arange(12.0).reshape(2, 6)  # row r, token t -> 6r + t
    assert torch.equal(metric(logits), torch.tensor([3.0 - 0.0, 7.0 - 8.0]))
    repeated = metric.take([1, 1, 0])
    assert torch.equal(repeated(torch.arange(18.0).reshape(3, 6)), torch.tensor([-1.0, -1.0, 15.0 - 12.0]))
    with pytest.raises(InputError, match=r"scores 2 rows .* shape \(3, 6\).*\.take"):
        metric(torch.zeros(3, 6))


def test_answer_metric_binds_then_takes_rows(smol_tok):
    data = capitals(n=None)
    bound = data.metric.bind(smol_tok)
    rows = [5, 0, 5]
    taken = bound.take(rows)
    expected = [smol_tok.encode(data.answers[r], add_special_tokens=False)[0] for r in rows]
    assert list(taken.ids[:3]) == expected
    assert isinstance(taken, RowMetric) and taken.per_row
