"""Post-training quantization of real pretrained models (issue 11): every scheme data-free and
calibrated, against optimum-quanto, torchao and NNCF in the same run on the same machine.

Models and inputs come from packages (`pretrained.py`): all-mpnet-base-v2 (transformer; its 72
encoder Linear layers are quantized, the embeddings stay fp32 for every tool) and EfficientNet-Lite0
(CNN; every Conv/Linear). Calibration uses one split of the inputs, every figure is measured on the
other. Bytes are the weight bytes of the quantized layers (biases excluded for every tool): ours from
the real .dnc (codes + tables + index per layer), a peer's from the tensors it keeps for those weights
in its own quantized state_dict (everything the model holds minus the untouched tensors).

    python benchmarks/ptq_pretrained.py --model mpnet|effnet [--only ours|peers] [--rows LABEL,...]
        [--ptq data-free|calibrated|both] [--resume] [--keep-earlier]
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import tempfile
import time
import traceback
from pathlib import Path

import pretrained as P
import torch
import torch.nn as nn
from common import PeakRSS, table, write_section

import dnncompress
from dnncompress.pack import save_packed
from dnncompress.report import report_packed

SCHEMES = [("fourval per channel", dict(scheme="fourval", per_channel=True)),
           ("ternary per channel", dict(scheme="ternary", per_channel=True)),
           ("asym-ternary per channel", dict(scheme="asym-ternary", per_channel=True)),
           ("asym-quaternary per channel", dict(scheme="asym-quaternary", per_channel=True)),
           ("codebook 2 bits", dict(scheme="codebook", bits=2)),
           ("codebook 3 bits", dict(scheme="codebook", bits=3)),
           ("codebook 4 bits", dict(scheme="codebook", bits=4)),
           ("codebook 2 bits per channel", dict(scheme="codebook", bits=2, per_channel=True)),
           ("codebook 4 bits per channel", dict(scheme="codebook", bits=4, per_channel=True))]
SCHEMES += [(f"{label} + rotation", {**opts, "rotate": True}) for label, opts in SCHEMES]
# a CNN's depthwise convs (3.9 % of EfficientNet-Lite0's weights, 9 per filter) at 8 bits, the rest at 4: the
# overrides name the model's depthwise layers (Setup.depthwise), so the row is built per model
DEPTHWISE_8 = ("codebook 4 bits per channel + rotation + depthwise 8 bits", dict(scheme="codebook", bits=4, per_channel=True, rotate=True))
# NNCF keeps a CNN's first and last layers (and layers whose inputs do not split into groups of 128) at 8 bits; this
# row spends bytes the same way, on the layers an error scan names first: depthwise, stem and classifier
EDGES_8 = ("codebook 4 bits per channel + rotation + depthwise + stem + classifier 8 bits", dict(scheme="codebook", bits=4, per_channel=True, rotate=True))
SCHEMES += [DEPTHWISE_8, EDGES_8]
CNN_ONLY = {DEPTHWISE_8[0], EDGES_8[0]}
# mixed precision (`target_bits`): each layer's bits (2–8) chosen by its effect on the output over 32 calibration
# inputs, under the byte budget of the named average; it needs data, so these rows are calibrated only
MIXED = [(f"codebook per channel + rotation, mixed 2–8 bits at {b:g} bits/weight",
          dict(scheme="codebook", per_channel=True, rotate=True, target_bits=b)) for b in (4.0, 6.4)]
SCHEMES += MIXED
CNN_ONLY |= {label for label, _ in MIXED}  # not run on MPNet here: its scan is 432 fits of 2.4 M-weight layers (time)
CALIBRATED_ONLY = {label for label, _ in MIXED}
# calibrated, then tuned (`tune_epochs`): every code fixed, per-row factors (folded into the tables), biases and norms
# trained for 3 epochs against the fp32 model's own outputs on the calibration split; no bytes added
TUNED = [(f"{label} + rotation + tuned 3 epochs", {**opts, "rotate": True, "tune_epochs": 3})
         for label, opts in SCHEMES if label in ("fourval per channel", "ternary per channel", "codebook 2 bits per channel",
                                                 "codebook 4 bits per channel")]
SCHEMES += TUNED
CALIBRATED_ONLY |= {label for label, _ in TUNED}
MPNET_ONLY = {label for label, _ in TUNED}  # the CNN met its goals without it; its rows take the time of a full run


TEST_SENTENCES = 512


class Setup:
    """A model, the layers every tool quantizes, calibration inputs and test inputs, and the fidelity metric."""

    def __init__(self, name: str):
        self.name = name
        if name == "mpnet":
            self.model, tok = P.mpnet()
            texts = P.sentences()
            self.calib, self.test = P.tokenize(tok, texts[0::2]), P.tokenize(tok, texts[1::2][:TEST_SENTENCES])
            self.include = ["bert.encoder.*"]
            # the 32×12 relative-position bias table is an Embedding inside the encoder: every peer leaves it fp32
            self.exclude = ["*relative_attention_bias*"]
            self.what = (f"all-mpnet-base-v2 (MPNet-base sentence encoder, 110 M parameters; the 72 encoder Linear layers, "
                         f"85 M weights, are quantized). Inputs: {len(texts):,} sentences from Python standard-library docstrings; "
                         f"calibration on the even-numbered {len(texts[0::2]):,} ({int(self.calib['attention_mask'].sum()):,} tokens), "
                         f"every metric on the first {TEST_SENTENCES} odd-numbered ones. Fidelity: cosine of the sentence embeddings against "
                         f"fp32, and nearest-neighbour agreement (each test sentence's nearest other test sentence is the same as with fp32).")
        else:
            self.model = P.effnet()
            self.calib, self.test = P.photo_crops(128, 1), P.photo_crops(256, 2)
            self.include = ["*"]
            self.exclude = []
            self.what = ("EfficientNet-Lite0 (ImageNet, 4.7 M parameters; every Conv and Linear quantized, depthwise convs included). "
                         "Inputs: random 224² crops of scikit-learn's two sample photos; 128 for calibration, 256 others for every metric. "
                         "Fidelity: cosine of the 1,000 logits against fp32, and top-1 agreement.")
        torch.manual_seed(0)
        with torch.no_grad():
            self.ref = self.forward(self.model)
        self.layers = {n: m for n, m in self.model.named_modules()
                       if isinstance(m, (nn.Linear, nn.Conv2d)) and any(fnmatch.fnmatchcase(n, p) for p in self.include)}
        self.fp32_bytes = sum(m.weight.numel() * 4 for m in self.layers.values())
        self.depthwise = [n for n, m in self.layers.items() if getattr(m, "groups", 1) > 1]

    def forward(self, model):
        with torch.no_grad():
            return model(**self.test) if isinstance(self.test, dict) else model(self.test)

    def fidelity(self, model) -> tuple[float, float, float]:
        out = self.forward(model).float()
        cos = nn.functional.cosine_similarity(out, self.ref, dim=1)
        if self.name == "mpnet":
            def nearest(e):
                e = nn.functional.normalize(e, dim=1)
                return (e @ e.T).fill_diagonal_(-2).argmax(1)
            agree = float((nearest(out) == nearest(self.ref)).float().mean() * 100)
        else:
            agree = float((out.argmax(1) == self.ref.argmax(1)).float().mean() * 100)
        return float(cos.mean()), float(cos.min()), agree


def tensor_bytes(t) -> int:
    """Bytes a tensor holds, looking inside tensor subclasses (torchao, quanto) at the tensors they keep."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and not isinstance(t, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    if isinstance(t, nn.Parameter) and type(t.data) is not torch.Tensor:
        return tensor_bytes(t.data)
    return t.numel() * t.element_size()


def peer_weight_bytes(quantized: nn.Module, setup: Setup) -> int:
    """Everything the quantized model keeps, minus the tensors it left as they were (embeddings, biases, norms)."""
    original = setup.model.state_dict()
    kept = quantized.state_dict()
    weights = {f"{n}.weight" for n in setup.layers}
    total = sum(tensor_bytes(v) for v in kept.values())
    untouched = sum(tensor_bytes(v) for k, v in original.items() if k not in weights and k in kept)
    return total - untouched


def ours(setup: Setup, label: str, opts: dict, calibrated: bool, workdir: Path) -> dict:
    if label == DEPTHWISE_8[0]:
        opts = {**opts, "overrides": {n: {"bits": 8} for n in setup.depthwise}}
    if label == EDGES_8[0]:
        names = list(setup.layers)
        opts = {**opts, "overrides": {n: {"bits": 8} for n in [*setup.depthwise, names[0], names[-1]]}}
    model = copy.deepcopy(setup.model)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        dnncompress.quantize(model, include=setup.include, exclude=setup.exclude, calibration=setup.calib if calibrated else None, **opts)
    seconds = time.perf_counter() - t0
    fid = setup.fidelity(model.eval())
    save_packed(model, workdir / "m.dnc")
    rep = report_packed(workdir / "m.dnc")
    weight_bytes = sum(r["codes"] + r["tables"] + r["index"] for r in rep["layers"] if r["layer"] in setup.layers)
    return {"tool": "dnncompress", "method": label, "ptq": "calibrated" if calibrated else "data-free", "fidelity": fid,
            "bytes": weight_bytes, "seconds": seconds, "peak_mb": mem.above_base_mb()}


def nncf_dataset(setup: Setup):
    import nncf

    if isinstance(setup.calib, dict):
        n = setup.calib["input_ids"].shape[0]
        items = [{k: v[i : i + 32] for k, v in setup.calib.items()} for i in range(0, n, 32)]
    else:
        items = list(setup.calib.split(32))
    return nncf.Dataset(items)


def peers(setup: Setup):
    """(tool, method, data-aware, function(model) -> quantized model) for every peer configuration."""
    def quanto(weights):
        def run(model):
            from optimum.quanto import freeze, quantize
            target = model.bert.encoder if setup.name == "mpnet" else model
            quantize(target, weights=weights)
            freeze(target)
            return model
        return run

    def torchao(config):
        def run(model):
            from torchao.quantization import quantize_
            names = set(setup.layers)
            quantize_(model, config(), filter_fn=lambda m, fqn: fqn in names and isinstance(m, nn.Linear))
            return model
        return run

    def nncf(mode, data_aware):
        def run(model):
            import nncf as N
            mode_ = getattr(N.CompressWeightsMode, mode)
            kw = dict(mode=mode_, ratio=1.0, group_size=128 if "INT8" not in mode else -1, dataset=nncf_dataset(setup),
                      all_layers=True, ignored_scope=N.IgnoredScope(patterns=[".*embeddings.*", ".*relative_attention_bias.*"]) if setup.name == "mpnet" else None)
            if "INT8" in mode:
                kw.pop("ratio"), kw.pop("all_layers")
            if data_aware:
                kw.update(awq=True, scale_estimation=True, subset_size=len(setup.calib["input_ids"] if isinstance(setup.calib, dict) else setup.calib))
            return N.compress_weights(model, **kw)
        return run

    from optimum.quanto import qint2, qint4, qint8
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    out = [("optimum-quanto", "qint8 weights", False, quanto(qint8)), ("optimum-quanto", "qint4 weights", False, quanto(qint4)),
           ("optimum-quanto", "qint2 weights", False, quanto(qint2)),
           ("torchao", "int8 weight-only", False, torchao(Int8WeightOnlyConfig)),
           ("torchao", "int4 weight-only, group 128", False, torchao(lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(128)))),
           ("torchao", "int2 weight-only, group 128", False, torchao(lambda: IntxWeightOnlyConfig(weight_dtype=torch.int2, granularity=PerGroup(128))))]
    for mode in ("INT8_ASYM", "INT4_SYM", "INT4_ASYM", "INT3_SYM", "INT2_SYM"):
        out.append(("NNCF", f"{mode}" + (", group 128" if "INT8" not in mode else ""), False, nncf(mode, False)))
        if "INT8" not in mode:
            out.append(("NNCF", f"{mode}, group 128, AWQ + scale estimation", True, nncf(mode, True)))
    return out


def run_peer(setup: Setup, tool: str, method: str, data_aware: bool, fn) -> dict:
    model = copy.deepcopy(setup.model)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        model = fn(model)
    seconds = time.perf_counter() - t0
    return {"tool": tool, "method": method, "ptq": "calibrated" if data_aware else "data-free", "fidelity": setup.fidelity(model),
            "bytes": peer_weight_bytes(model, setup), "seconds": seconds, "peak_mb": mem.above_base_mb()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mpnet", "effnet"], required=True)
    ap.add_argument("--only", choices=["ours", "peers", "all"], default="all")
    ap.add_argument("--rows", default="", help="comma-separated labels of our rows to run (default: all)")
    ap.add_argument("--ptq", choices=["data-free", "calibrated", "both"], default="both", help="which of our rows to run")
    ap.add_argument("--resume", action="store_true", help="keep the rows an earlier run of this model logged (same machine, same code)")
    ap.add_argument("--keep-earlier", action="store_true",
                    help="keep the rows of docs/results that this run does not measure, each marked with the date it was measured")
    args = ap.parse_args()
    torch.set_num_threads(2)
    setup = Setup(args.model)
    log = Path(tempfile.gettempdir()) / f"ptq_{args.model}.jsonl"
    if log.exists() and not args.resume:
        log.unlink()  # a fresh run measures every row again
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    have = {(r["tool"], r["method"], r["ptq"]) for r in done}
    with tempfile.TemporaryDirectory() as d:
        jobs = []
        if args.only in ("ours", "all"):
            by_label = dict(SCHEMES)
            wanted = [(label, by_label[label]) for label in args.rows.split(",")] if args.rows else \
                [(label, opts) for label, opts in SCHEMES if (setup.depthwise or label not in CNN_ONLY) and (args.model == "mpnet" or label not in MPNET_ONLY)]
            jobs += [("dnncompress", label, cal, lambda label=label, opts=opts, cal=cal: ours(setup, label, opts, cal, Path(d)))
                     for label, opts in wanted for cal in (False, True)
                     if (args.ptq == "both" or args.ptq == ("calibrated" if cal else "data-free")) and (cal or label not in CALIBRATED_ONLY)]
        if args.only in ("peers", "all"):
            jobs += [(tool, method, aware, lambda t=tool, m=method, a=aware, f=fn: run_peer(setup, t, m, a, f))
                     for tool, method, aware, fn in peers(setup)]
        for tool, method, cal, job in jobs:
            if (tool, method, "calibrated" if cal else "data-free") in have:
                continue
            try:
                row = job()
            except Exception as e:  # a peer that cannot do this model: its reason goes in the table
                traceback.print_exc()
                row = {"tool": tool, "method": method, "ptq": "calibrated" if cal else "data-free", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            print(json.dumps(row), flush=True)
            done.append(row)
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    done = [{"measured": today, **r} for r in done]
    if args.keep_earlier:
        have = {(r["tool"], r["method"], r["ptq"]) for r in done}
        done += [r for r in earlier_rows(args.model) if (r["tool"], r["method"], r["ptq"]) not in have]
    write(setup, done, args.model)


SECTION = {"mpnet": "calib_2_mpnet", "effnet": "calib_3_effnet"}


def earlier_rows(name: str) -> list[dict]:
    """The rows of this model's table in docs/results, as run() logs them, each with the date (and machine) it was
    measured on: a row without its own date takes the section's 'Measured' line."""
    import re

    from common import SECTIONS

    path = SECTIONS / f"{SECTION[name]}.md"
    if not path.exists():
        return []
    text = path.read_text()
    stamp = re.search(r"^Measured (\d{4}-\d{2}-\d{2}) [\d:]+ UTC on (.*)\.$", text, re.M)
    machines = dict(re.findall(r"^- (\d{4}-\d{2}-\d{2}): (.*)$", text, re.M))
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "tool":
            header = cells
            continue
        if header is None or cells[0].startswith("---"):
            continue
        cell = dict(zip(header, cells))
        day = cell.get("measured") or (stamp.group(1) if stamp else "unknown")
        row = {"tool": cell["tool"], "method": cell["method"], "ptq": cell["PTQ"], "measured": day,
               "machine": machines.get(day) or (stamp.group(2) if stamp and stamp.group(1) == day else "")}
        if cell["note"].startswith("not run: "):
            row["error"] = cell["note"].removeprefix("not run: ")
        else:
            agree = cell.get("NN agreement %") or cell.get("top-1 agreement %")
            row.update(fidelity=[float(cell["mean cosine"]), float(cell["min cosine"]), float(agree)],
                       bytes=int(cell["weight bytes"].replace(",", "")), seconds=float(cell["seconds"]), peak_mb=float(cell["peak MB"]))
        rows.append(row)
    return rows


def write(setup: Setup, rows: list[dict], name: str) -> None:
    body = setup.what + "\n\n" + (
        "Bytes: weight bytes of the quantized layers, biases excluded for every tool, as a share of their fp32 weights "
        f"({setup.fp32_bytes:,} bytes). Seconds and peak MB: the quantize call alone (peak resident memory above the "
        "process's size when it began, sampled), calibration included. Our rows: '+ rotation' quantizes every row in a "
        "randomized Hadamard frame (`rotate=True`, no bytes stored); 'per channel' codebooks share one table scaled per row; "
        "calibration is GPTQ with act-order on the calibration split and the data-free levels kept (no level re-fit: "
        "see calib_1); 'mixed 2–8 bits at B bits/weight' (`target_bits=B`) chooses each layer's bit width from its effect "
        "on the output over 32 inputs of the calibration split, under the byte budget of B bits per weight (codes and "
        "tables), then calibrates; the test split chooses nothing. Goals (issue 11): ≥ 0.99 mean cosine at ≤ 12.6 % "
        "of the fp32 bytes; ≥ 0.90 at 2 bits (four-value) within ≤ 6.5 %. Reading the peers: torchao's int4/int2 "
        "weight-only (IntxWeightOnlyConfig, the CPU path) keeps one int8 per weight, hence its bytes; torchao quantizes "
        "Linear layers only; a peer that fails on a model shows its error in the note column. Peak MB counts growth "
        "above the process's size when the call began, so memory an earlier row freed and this one reused is not counted.\n\n")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    earlier = {r["measured"]: r.get("machine", "") for r in rows if r.get("measured", today) != today}
    if earlier:
        body += ("Rows with an earlier date in the 'measured' column were kept from an earlier run (`--keep-earlier`), "
                 "not measured in this one; their seconds are that machine's:\n"
                 + "".join(f"- {day}: {machine or 'machine not recorded'}\n" for day, machine in sorted(earlier.items())) + "\n")
    out = []
    for r in sorted(rows, key=lambda r: (r.get("bytes", 1 << 62), r["tool"])):
        day = r.get("measured", today)
        if "error" in r:
            out.append([r["tool"], r["method"], r["ptq"], "—", "—", "—", "—", "—", "—", "—", f"not run: {r['error']}", day])
            continue
        mean, low, agree = r["fidelity"]
        out.append([r["tool"], r["method"], r["ptq"], f"{mean:.4f}", f"{low:.4f}", f"{agree:.1f}", f"{r['bytes']:,}",
                    f"{100 * r['bytes'] / setup.fp32_bytes:.2f} %", f"{r['seconds']:.1f}", f"{r['peak_mb']:.0f}", "", day])
    agree_col = "NN agreement %" if name == "mpnet" else "top-1 agreement %"
    body += table(["tool", "method", "PTQ", "mean cosine", "min cosine", agree_col, "weight bytes", "of fp32", "seconds",
                   "peak MB", "note", "measured"], out)
    section = SECTION[name]
    title = {"mpnet": "PTQ of all-mpnet-base-v2 against optimum-quanto, torchao and NNCF (issue 11)",
             "effnet": "PTQ of EfficientNet-Lite0 against optimum-quanto, torchao and NNCF (issue 11)"}[name]
    write_section(section, title, body, f"python benchmarks/ptq_pretrained.py --model {name}")


if __name__ == "__main__":
    main()
