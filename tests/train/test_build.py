"""What :mod:`pclab.train.build` makes of a config: here, the memory layout of conv models."""

from __future__ import annotations

import copy

import torch

from pclab import SGD, Inference, PCLearning
from pclab.models import conv_channels_last, mlp, vgg
from pclab.train import apply_overrides, preset, validate
from pclab.train.build import build_model


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


def test_conv_models_are_built_channels_last_on_the_cpu():
    for kind in ("vgg", "vgg_bn", "deconv_generator"):
        config = validate(apply_overrides(preset("tiny"), [f"model.kind={kind}", "model.depth=3", "model.width=4", "model.latent=8"]))
        weights = _conv_weights(build_model(config, (1, 8, 8), 10))
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights), kind
        assert any(not w.is_contiguous() for w in weights), kind  # (one input channel: both layouts at once)
    dense = build_model(validate(preset("tiny")), (1, 8, 8), 10)
    assert all(p.is_contiguous() for p in dense.parameters())


def test_a_channels_last_conv_pcn_learns_what_the_default_layout_learns():
    torch.manual_seed(0)
    model = vgg(3, (1, 12, 12), width=4)
    same = conv_channels_last(copy.deepcopy(model))
    assert conv_channels_last(mlp([4, 3, 2])) is not None  # no convolutions: nothing to do
    x, y = torch.rand(6, 1, 12, 12), torch.eye(10)[torch.arange(6)]
    energies = []
    for m in (model, same):
        rule = PCLearning(m, Inference(steps=5, optimizer=SGD(0.1)), torch.optim.Adam(m.parameters(), 1e-2))
        energies.append([rule.step({"x": x, "y": y})["energy"] for _ in range(3)])
    torch.testing.assert_close(energies[0], energies[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), same.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(same))


def test_frozen_layers_keeps_the_bottom_weights_and_trains_the_rest():
    import pytest

    from pclab.train import ConfigError, load_data, make_batch, prepare

    config = validate({"model": {"kind": "mlp", "widths": [64, 16, 16, 16, 10], "output": "ce"},
                       "learning": {"rule": "bp", "optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.1, "frozen_layers": 2},
                       "data": {"dataset": "digits", "batch_size": 32, "train_subset": 64, "test_subset": 32}})
    data = load_data(config)
    run = prepare(config, data)
    before = [copy.deepcopy(run.model.edge_modules[e.key].state_dict()) for e in run.model.edges]
    for _ in range(3):
        run.rule.step(make_batch(config, data[0].images[:32], data[0].labels[:32], 10))
    after = [run.model.edge_modules[e.key].state_dict() for e in run.model.edges]
    moved = [any(not torch.equal(b[k], a[k]) for k in b) for b, a in zip(before, after)]
    assert moved == [False, False, True, True]  # input side first; weight decay does not touch the frozen ones either
    with pytest.raises(ConfigError, match="frozen_layers: expected fewer than the model's 4 weight layers, got 4"):
        prepare(validate({**config.model_dump(), "learning": {**config.learning.model_dump(), "frozen_layers": 4}}), data)
