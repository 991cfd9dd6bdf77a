"""Nodes: constructors check their fields; nodes are hashable, printable and ordered."""

import pytest

import confounded_patching as cp


def test_node_constructor_validates():
    with pytest.raises(cp.InputError, match="layer must be >= 0; received -1"):
        cp.MLP(-1)
    with pytest.raises(cp.InputError, match="head must be an int; received"):
        cp.Head(0, "3")
    with pytest.raises(cp.InputError, match="kinds must be a non-empty subset"):
        cp.nodes(n_layers=2, n_heads=2, kinds=("mlps",))


def test_nodes_are_hashable_printable_and_ordered():
    ns = cp.nodes(n_layers=2, n_heads=3, positions=(-1, -2))
    assert len(ns) == 2 * 2 * (1 + 3 + 1) == len(set(ns))
    assert repr(cp.Head(1, 2, pos=-1)) == "Head(1, 2, pos=-1)" and cp.Head(1, 2).label == "L1H2@-1"
    assert ns[0].layer == 0 and ns[-1].layer == 1
    assert cp.MLP(1) != cp.Resid(1)
