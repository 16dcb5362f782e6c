"""The built-in names `dnncompress list` shows, without importing torch (so that it is instant).
tests/test_cli_truth.py keeps this equal to the real registries."""
from __future__ import annotations

ARCHITECTURES = ["vgg16", "mobilenet", "alexnet", "lenet300", "lenet5", "lenet5-classic", "resnet20", "resnet32", "resnet44", "resnet56"]
DATASETS = ["mnist", "cifar10", "cifar100", "digits", "synthetic", "imagefolder"]
STAGES = ["train", "finetune", "joint", "pack", "prune", "quantize", "shrink"]
SCHEMES = ["asym-ternary", "asym-quaternary", "codebook", "fourval", "pq", "ternary"]


def builtin() -> dict[str, list[str]]:
    from .config import shipped_configs

    return {"architectures": ARCHITECTURES + ["torchvision:NAME", "package.module:factory"], "datasets": list(DATASETS),
            "stages": list(STAGES), "schemes": list(SCHEMES), "configs": shipped_configs()}
