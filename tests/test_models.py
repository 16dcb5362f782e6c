import sys

import pytest
import torch

from dnncompress.errors import UserError
from dnncompress.models import ARCHS, build_model, default_input_shape

from .optional import needs_torchvision

EXPECTED = {"lenet300": 266_610, "lenet5": 431_080, "resnet20": 269_722, "resnet56": 853_018}


@pytest.mark.parametrize("name", [n for n in ARCHS.names() if not n.startswith("test-")])
def test_zoo_model_builds_runs_and_has_its_param_count(name):
    model = build_model(name).eval()
    spec = ARCHS.get(name)
    assert sum(p.numel() for p in model.parameters()) == spec.params
    with torch.no_grad():
        out = model(torch.randn(2, *default_input_shape(name)))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name,count", EXPECTED.items())
def test_issue_parameter_counts(name, count):
    assert sum(p.numel() for p in build_model(name).parameters()) == count


def test_resnet20_and_56_are_the_expected_size():
    assert abs(ARCHS.get("resnet20").params - 0.27e6) < 0.01e6
    assert abs(ARCHS.get("resnet56").params - 0.85e6) < 0.01e6


@needs_torchvision
def test_torchvision_and_user_factory():
    m = build_model("torchvision:resnet18", {"num_classes": 7})
    assert m.fc.out_features == 7
    m = build_model("torch.nn:Linear", {"in_features": 3, "out_features": 2, "num_classes": 10})
    assert isinstance(m, torch.nn.Linear)


@needs_torchvision
def test_unknown_torchvision_model_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        build_model("torchvision:resnet19")


def test_torchvision_models_without_torchvision_say_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what `import torchvision` meets where it is not installed
    with pytest.raises(UserError, match=r"torchvision:resnet18 needs torchvision built for torch .*dnncompress\[vision\]") as e:
        build_model("torchvision:resnet18")
    assert "\n" not in str(e.value)


def test_unknown_architecture_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'lenet5'"):
        build_model("lenet6")
    with pytest.raises(UserError, match="cannot import"):
        build_model("no_such_pkg.mod:make")


def _layout(model):
    return [(k, tuple(t.shape), t.dtype, t.device.type, getattr(t, "requires_grad", None))
            for k, t in [*model.named_parameters(), *model.named_buffers()]]


@pytest.mark.parametrize("name", [n for n in ARCHS.names() if not n.startswith("test-")])
def test_the_skeleton_skips_initialization_but_not_one_shape(name):
    """validate.meta_device builds what torch.device('meta') builds (names, shapes, dtypes, grads), without the
    initialization calls that only write values no meta tensor holds."""
    from dnncompress.validate import meta_device

    with torch.device("meta"):
        plain = build_model(name)
    with meta_device():
        fast = build_model(name)
    assert _layout(fast) == _layout(plain)


class _InitHeavy(torch.nn.Module):
    """A user's factory in the styles real ones use: nn.init by position and by keyword, Tensor fills, a tensor made on
    an explicit device (which keeps its values), and a look at the default device."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        torch.nn.init.trunc_normal_(self.proj.weight, std=0.02)
        torch.nn.init.zeros_(tensor=self.proj.bias)
        self.pos = torch.nn.Parameter(torch.empty(1, 3, 8).normal_(0, 0.02))
        self.register_buffer("table", torch.arange(6, dtype=torch.float32, device="cpu").uniform_(5, 6))
        self.made_on = torch.get_default_device().type


def test_the_skeleton_of_a_users_module_keeps_its_shapes_and_real_tensors_keep_their_values():
    from dnncompress.validate import meta_device

    with meta_device():
        m = _InitHeavy()
    assert m.made_on == "meta"
    assert [(k, tuple(t.shape), t.device.type) for k, t in m.state_dict().items()] == [
        ("pos", (1, 3, 8), "meta"), ("table", (6,), "cpu"), ("proj.weight", (4, 8), "meta"), ("proj.bias", (4,), "meta")]
    assert bool(((m.table >= 5) & (m.table < 6)).all())  # an explicit CPU tensor was still filled
    assert torch.get_default_device().type == "cpu"  # the context is gone afterwards


def test_only_value_writes_into_meta_tensors_are_skipped():
    from dnncompress.validate import _init_target

    meta, cpu = torch.empty(3, 3, device="meta"), torch.empty(3, 3)
    assert _init_target(torch.nn.init.kaiming_normal_, (meta,), {}) is meta
    assert _init_target(torch.nn.init.uniform_, (), {"tensor": meta, "a": 0, "b": 1}) is meta
    assert _init_target(torch.Tensor.normal_, (meta, 0, 1), {}) is meta
    assert _init_target(torch.nn.init.kaiming_normal_, (cpu,), {}) is None  # a real tensor gets its values
    assert _init_target(torch.Tensor.add_, (meta, 1), {}) is None  # not a pure value write: it runs
    assert _init_target(torch.empty, ((3, 3),), {}) is None


def test_torch_layers_skip_their_reset_only_on_meta_and_only_during_a_meta_build():
    """Inside meta_device torch's own layers skip reset_parameters when all their tensors are meta; a real layer made
    there on the CPU (as another thread's would be) is initialized as anywhere else, and afterwards the classes hold
    torch's own methods again, also after a build that raised and inside nested builds."""
    from dnncompress.validate import meta_device

    originals = {c: c.reset_parameters for c in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.BatchNorm2d)}
    torch.manual_seed(0)
    want = torch.nn.Linear(3, 4).weight.detach().clone()
    with meta_device():
        with meta_device():
            assert torch.nn.Linear(3, 4).weight.is_meta
        torch.manual_seed(0)
        real = torch.nn.Linear(3, 4, device="cpu")
    assert torch.equal(real.weight.detach(), want)
    with pytest.raises(RuntimeError):
        with meta_device():
            raise RuntimeError("a factory that fails")
    assert all(c.reset_parameters is f for c, f in originals.items())
