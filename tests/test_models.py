"""Model access: adapters for every accepted model type, the architecture table."""

import pytest
import torch

import confounded_patching as cp


def test_unknown_model_type():
    with pytest.raises(cp.InputError, match="model must be an nnsight model .* received .*dict"):
        cp.collect({"not": "a model"}, ["w1"], [cp.MLP(0)])


def test_unknown_architecture_names_paths_and_registration():
    class Weird(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird"})()
            self.body = torch.nn.Linear(2, 2)

    with pytest.raises(cp.ArchitectureError) as err:
        cp.collect(Weird(), [[1, 2]], [cp.MLP(0)])
    assert "model.layers[i].{self_attn.o_proj, mlp}" in str(err.value)
    assert "register_architecture" in str(err.value)
