"""sweep_before_forward: a training forward computes every compressed weight first, each layer then takes its own.
The same values and gradients as computing each when its layer runs; nothing kept past the forward."""
import copy

import pytest
import torch
import torch.nn as nn

import dnncompress
from dnncompress import surgery
from dnncompress.surgery import compression_of, sweep_before_forward


def _model(scheme: dict) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 40), nn.ReLU(), nn.Linear(40, 10))
    dnncompress.prune_model(model, sparsity=0.3)
    dnncompress.quantize(model, **scheme)
    return model.train()


def _unswept(model: nn.Module) -> nn.Module:
    """A copy that computes each weight when its layer runs (the hooks removed)."""
    other = copy.deepcopy(model)
    other._forward_pre_hooks.clear()
    other._forward_hooks.clear()
    return other


def _steps(model: nn.Module, n: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    outs = []
    for _ in range(n):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("scheme", [{"scheme": "fourval"}, {"scheme": "codebook", "bits": 3, "mode": "dynamic"},
                                    {"scheme": "pq", "bits": 4, "reassign_every": 3}], ids=lambda s: s["scheme"] + s.get("mode", ""))
def test_swept_training_gives_the_same_outputs_and_weights(scheme):
    swept = _model(scheme)
    plain = _unswept(swept)
    assert swept._forward_pre_hooks and not plain._forward_pre_hooks
    for a, b in zip(_steps(swept), _steps(plain)):
        assert torch.equal(a, b)
    for (name, a), (_, b) in zip(swept.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_each_weight_is_computed_once_per_training_forward_and_taken_by_its_layer(monkeypatch):
    model = _model({"scheme": "fourval"})
    computed, swept = [], []
    compute, sweep = surgery.CompressedWeight.compute, surgery.CompressedWeight.sweep
    monkeypatch.setattr(surgery.CompressedWeight, "compute", lambda self, w: computed.append(self) or compute(self, w))
    monkeypatch.setattr(surgery.CompressedWeight, "sweep", lambda self, w: swept.append(self) or sweep(self, w))
    layers = [compression_of(model[i]) for i in (0, 3, 5)]
    model(torch.randn(2, 1, 8, 8))
    assert swept == layers and computed == layers  # all three before the first layer ran, none again after
    assert not any("_swept" in c.__dict__ for c in layers)
    computed.clear(), swept.clear()
    with torch.no_grad():  # inference: one weight at a time, when its layer runs
        model(torch.randn(2, 1, 8, 8))
    model.eval()
    model(torch.randn(2, 1, 8, 8))
    assert swept == [] and computed == layers + layers


def test_a_weight_moved_after_the_sweep_is_computed_again():
    model = _model({"scheme": "fourval"})
    layer = model[3]
    surgery._sweep_in(model, ())
    shadow = layer.parametrizations["weight"].original
    stale = compression_of(layer).__dict__["_swept"][2].detach().clone()
    with torch.no_grad():
        shadow.mul_(3)  # an optimizer step between the sweep and the use: its version counter moved
    model.eval()  # (a training forward also moves a four-value table: compare where it stays)
    used = layer.weight
    assert torch.equal(used, compression_of(layer).compute(shadow))
    assert not torch.equal(used, stale)


def test_a_forward_that_raises_keeps_nothing_and_the_model_still_copies():
    model = _model({"scheme": "codebook", "bits": 3, "mode": "dynamic"})
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 8, 8))  # wrong channels: the first conv raises after the sweep
    assert not any("_swept" in m.__dict__ for m in model.modules())
    copy.deepcopy(model)
    surgery._sweep_in(model, ())  # even if left (an interrupt inside the forward): deepcopy skips it
    assert any("_swept" in m.__dict__ for m in model.modules())
    again = copy.deepcopy(model)
    assert not any("_swept" in m.__dict__ for m in again.modules())
    model.eval(), again.eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(again(x), model(x))  # the eval forward dropped the leftovers first
    assert not any("_swept" in m.__dict__ for m in model.modules())


def test_a_copy_sweeps_its_own_layers_and_install_is_once():
    model = _model({"scheme": "fourval"})
    twin = copy.deepcopy(model)
    surgery._sweep_in(twin, ())
    assert all("_swept" in compression_of(twin[i]).__dict__ for i in (0, 3, 5))
    assert not any("_swept" in compression_of(model[i]).__dict__ for i in (0, 3, 5))
    surgery._sweep_out(twin, (), None)
    hooks = len(model._forward_pre_hooks), len(model._forward_hooks)
    assert sweep_before_forward(model) is model and (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks


def test_a_quantized_model_inside_another_is_swept_once(monkeypatch):
    """quantize() on a model and again on a part of it (another scheme for the head): both have the hooks, and
    each weight is still computed once per training forward (a second time would step a table's refit twice)."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 10))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), head).train()
    dnncompress.quantize(model, scheme="fourval")
    dnncompress.quantize(head, scheme="codebook", bits=3)
    assert head._forward_pre_hooks and model._forward_pre_hooks
    computed = []
    compute = surgery.CompressedWeight.compute
    monkeypatch.setattr(surgery.CompressedWeight, "compute", lambda self, w: computed.append(self) or compute(self, w))
    model(torch.randn(2, 1, 8, 8))
    assert sorted(map(id, computed)) == sorted(id(compression_of(m)) for m in (model[1], head[0], head[2]))
    computed.clear()
    head(torch.randn(2, 40))  # the head alone sweeps its own
    assert sorted(map(id, computed)) == sorted(id(compression_of(m)) for m in (head[0], head[2]))
    assert not any("_swept" in m.__dict__ for m in model.modules())


def test_a_layer_whose_compression_was_taken_off_is_skipped():
    """parametrize.remove_parametrizations on one layer after the list of layers was made: training goes on, the
    others are still swept."""
    from torch.nn.utils import parametrize

    model = _model({"scheme": "fourval"})
    model(torch.randn(2, 1, 8, 8))  # the list of layers is made
    parametrize.remove_parametrizations(model[3], "weight", leave_parametrized=True)
    surgery._sweep_in(model, ())
    assert "_swept" in compression_of(model[0]).__dict__ and "_swept" in compression_of(model[5]).__dict__
    surgery._sweep_out(model, (), None)
    _steps(model, 2)


def test_a_replica_sharing_the_models_dict_keeps_its_own_sweeps():
    """DataParallel's replicas copy the module's __dict__ and run in threads of their own: a replica's forward must
    not end the original's sweep (nor the other way round)."""
    model = _model({"scheme": "fourval"})
    model(torch.randn(2, 1, 8, 8))  # the model's own records exist before the copy, as in a training run
    replica = model.__new__(type(model))
    replica.__dict__ = model.__dict__.copy()
    surgery._sweep_in(model, ())
    surgery._sweep_out(replica, (), None)  # nothing of the replica's to end
    assert "_swept" in compression_of(model[0]).__dict__
    surgery._sweep_out(model, (), None)
    assert "_swept" not in compression_of(model[0]).__dict__
