"""byzshield.compute.params: a model's parameters as one flat vector and back."""

import torch

from byzshield.compute.networks import build_network
from byzshield.compute.params import flat_params, load_flat, num_params


def test_flat_params_concatenates_the_parameters_in_order_and_load_flat_inverts_it():
    model = build_network("lenet", num_classes=10, in_channels=1, image_size=8)
    flat = flat_params(model)
    assert flat.shape == (num_params(model),) and flat.dtype == torch.float32
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    other = torch.arange(num_params(model), dtype=torch.float32)
    load_flat(model, other)
    assert torch.equal(flat_params(model), other)
    first = next(model.parameters())
    assert torch.equal(first.detach().reshape(-1), other[: first.numel()])
