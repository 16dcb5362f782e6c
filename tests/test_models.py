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
