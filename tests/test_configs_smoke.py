"""Every shipped config runs end to end (one short epoch, tiny model, synthetic data) and ends in a loadable .dnc."""
import dataclasses
from pathlib import Path

import pytest

from dnncompress.config import load_config
from dnncompress.pack import load_packed
from dnncompress.pipeline import run_config
from dnncompress.stages import Context

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
SHRINK = {"epochs": 1, "prune_epochs": 1, "qat_epochs": 1, "sparsities": [0.0, 0.9], "bits": [2, 4], "output": None, "plot": None}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_smoke_run(path, in_tmp):
    structured = any(getattr(params, "structured", None) for _, params in load_config(path).stages)
    arch = "lenet5" if structured else "lenet300"  # structured channel pruning needs convs; lenet300 is the fast one
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
    assert params < 431_080 if structured else params == 266_610  # structured pruning leaves a smaller LeNet-5
