"""How SPEC_DICT (dnncompress/pack/spec_dict.py) was made: the compact specs of packed zoo models under
every scheme, pruned and not, Huffman and plain, joined with the most common ones last (deflate reaches
the end of its dictionary most cheaply). The dictionary is frozen with format version 4: a change makes
every version-4 file unreadable, so it needs a new version. Run: python tools/make_spec_dict.py
"""
from __future__ import annotations

import base64
import collections
import hashlib
import re
import zlib
from pathlib import Path

import torch

from dnncompress import prune_model, quantize
from dnncompress.models import build_model
from dnncompress.pack.container import build_packed, canonical_json, compact_spec
from dnncompress.surgery import masks_of, plain_state_dict, quant_state_of

VARIANTS = [dict(scheme="fourval"), dict(scheme="fourval", per_channel=True), dict(scheme="ternary"),
            dict(scheme="asym-ternary", per_channel=True), dict(scheme="asym-quaternary"),
            dict(scheme="codebook", bits=2), dict(scheme="codebook", bits=4, mode="dynamic", zero=True),
            dict(scheme="codebook", bits=4, per_channel=True), dict(scheme="fourval", rotate=True),
            dict(scheme="pq", d=4, bits=8)]


def specs(archs=("lenet5", "resnet20"), seed=0):
    from dnncompress.prune.structured import structured_prune

    shapes = {"lenet5": (2, 1, 28, 28), "resnet20": (2, 3, 32, 32), "lenet300": (2, 1, 28, 28)}
    for arch, kwargs in ((a, {}) for a in archs):
        cases = [(v, s, False) for v in [None, *VARIANTS] for s in (0.0, 0.9)]
        cases += [(dict(scheme="fourval"), 0.9, True), (dict(scheme="codebook", bits=2), 0.99, True)]  # structured first
        for variant, sparsity, structured in cases:
            if variant and (variant.get("rotate") and sparsity or variant["scheme"] == "pq" and arch == "resnet20"):
                continue
            torch.manual_seed(seed)
            model = build_model(arch, kwargs)
            if structured:
                structured_prune(model, torch.randn(*shapes[arch]), amount=0.3)
            if sparsity:
                prune_model(model, sparsity)
            elif variant is None:
                continue
            if variant:
                quantize(model, **variant)
            ckpt = {"arch": arch, "arch_kwargs": kwargs, "state_dict": plain_state_dict(model), "masks": masks_of(model),
                    "quant": quant_state_of(model), "dataset": {"name": "mnist", "input_shape": [1, 28, 28], "num_classes": 10,
                                                               "options": {}, "val_split": 0.1, "data_dir": None},
                    "metrics": {"accuracy": 99.1, "fp32_accuracy": 99.2, "loss": 0.03},
                    **({"structure": model._dnncompress_structure} if structured else {})}
            for entropy in ("none", "huffman", "ans"):
                yield canonical_json(compact_spec(build_packed(ckpt, entropy)[2]))


def main():
    texts = list(specs())
    # numbers vary from file to file; what repeats is the structure between them: those pieces go last (nearest),
    # after whole specs of every fifth variant (they give the longer matches: keys, scheme options, names)
    pieces = collections.Counter(p for t in texts for p in re.split(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", t) if len(p) >= 3)
    common = "".join(p for p, n in sorted(pieces.items(), key=lambda kv: (kv[1] * len(kv[0]), kv[0])) if n >= 2)
    data = ("".join(texts[::5]).encode()[-30000:] + common.encode())[-32768:]
    blob = base64.b64encode(zlib.compress(data, 9)).decode()
    lines = "\n".join(f'    "{blob[i:i + 100]}"' for i in range(0, len(blob), 100))
    Path(__file__).parents[1].joinpath("dnncompress/pack/spec_dict.py").write_text(
        f'"""The preset dictionary version-4 specs are deflated with ({len(data):,} bytes, zlib + base64 here), made by\n'
        f'tools/make_spec_dict.py and frozen with the format: changing it makes every version-4 file unreadable."""\n'
        f"import base64\nimport zlib\n\nSPEC_DICT = zlib.decompress(base64.b64decode(\n{lines}\n))\n"
        f'SPEC_DICT_SHA256 = "{hashlib.sha256(data).hexdigest()}"\n')


if __name__ == "__main__":
    main()
