"""Every shipped config runs end to end (one short epoch, tiny model, synthetic data) and ends in a loadable .dnc."""
import dataclasses

import pytest

from dnncompress.config import SHIPPED, load_config
from dnncompress.models import build_model
from dnncompress.pack import load_packed
from dnncompress.pipeline import run_config
from dnncompress.stages import Context

CONFIGS = sorted(SHIPPED.glob("*.yaml"))  # the configs installed with the package
SHRINK = {"epochs": 1, "prune_epochs": 1, "qat_epochs": 1, "sparsities": [0.0, 0.9], "bits": [2, 4], "output": None, "plot": None}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_smoke_run(path, in_tmp):
    original = load_config(path)
    structured = any(getattr(params, "structured", None) or name == "shrink" for name, params in original.stages)
    # A config that names layers (overrides, exclude, blocks) keeps its own model: the names must match (a typo is
    # an error). Otherwise lenet300 is the fast one; structured channel pruning needs convs.
    names_layers = any(getattr(params, k, None) not in (None, [], {}, ()) and not isinstance(getattr(params, k), int)
                       for _, params in original.stages for k in ("overrides", "exclude", "block"))
    arch = original.model.arch if names_layers else "lenet5" if structured else "lenet300"
    cfg = load_config(path, [f"model.arch={arch}", f"output_dir={in_tmp / 'out'}"])
    def shrink(params):
        keep = {k: v for k, v in SHRINK.items() if hasattr(params, k) and isinstance(getattr(params, k), list) == isinstance(v, list)}
        return dataclasses.replace(params, **keep)

    cfg.stages = [(name, shrink(params)) for name, params in cfg.stages]
    outputs = run_config(cfg, Context(data_name="synthetic", run_dir=str(in_tmp)))
    assert all(p.exists() for p in outputs)
    assert outputs[-1].suffix == ".dnc"
    model = load_packed(outputs[-1])
    params = sum(p.numel() for p in model.parameters())
    full = sum(p.numel() for p in build_model(arch).parameters())
    assert params < full if structured else params == full  # structured pruning leaves a smaller model
