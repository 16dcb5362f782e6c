"""Peers side by side (issue 13): LeNet-5 on the embedded MNIST, one fp32 base, one fine-tuning budget, one loop.

Every tool gets a copy of the same trained base and, where its quantized model trains, the same QAT
(our `train` loop: Adam, cosine, the same epochs and learning rate). Columns: test accuracy of what the
tool's own saved file holds (ours: the .dnc loaded back), that file's bytes, and the step time of its
QAT model against an fp32 step (median of timed steps, batch 32, same machine, same run). A peer that
does not install or fails is a row with the reason. Nothing is chosen here: every tool runs its
documented defaults at the stated bits, so the validation split is not used.

    python benchmarks/peers_lenet5.py [--qat-epochs 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import copy
import io
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from common import table, write_section

import dnncompress
from dnncompress.data import load_data
from dnncompress.models import build_model
from dnncompress.report import fp32_file_bytes
from dnncompress.train import TrainSettings, evaluate, seed_everything, train

CMD = "python benchmarks/peers_lenet5.py"
NOTES: dict[str, str] = {}  # a tool's remark on its row (e.g. the size of another file it can write)
warnings.filterwarnings("ignore")


def torch_save_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


class Stepper:
    """One training step (forward, backward, Adam) of a private copy of a model, on fixed batches."""

    def __init__(self, model: nn.Module, batches: list):
        self.model = copy.deepcopy(model).train()
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.batches, self.i = batches, 0
        self.loss_fn = nn.CrossEntropyLoss()

    def seconds(self, steps: int) -> float:
        """Median seconds of one step over `steps` steps."""
        times = []
        for _ in range(steps):
            x, y = self.batches[self.i % len(self.batches)]
            self.i += 1
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            self.loss_fn(self.model(x), y).backward()
            self.opt.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def step_against_fp32(model: nn.Module, base: nn.Module, batches: list, rounds: int = 7, steps: int = 15) -> tuple[float, float]:
    """(median step seconds, median ratio to fp32): fp32 and the quantized model take turns, round by round,
    so that a slow spell of this shared machine lands on both sides of each ratio."""
    quant, fp = Stepper(model, batches), Stepper(base, batches)
    quant.seconds(5), fp.seconds(5)  # warm-up
    pairs = [(quant.seconds(steps), fp.seconds(steps)) for _ in range(rounds)]
    return statistics.median(q for q, _ in pairs), statistics.median(q / f for q, f in pairs)


# --- every tool: (row name, bits, prepare(base) -> model that trains or None, finish(model, dir) -> (model to test, bytes))

def ours(scheme: str, **opts):
    def prepare(model):
        dnncompress.quantize(model, scheme=scheme, **opts)
        return model

    def finish(model, d):
        path = Path(d) / "model.dnc"
        dnncompress.save_packed(model, path, entropy="huffman", arch="lenet5")
        return dnncompress.load_packed(path), path.stat().st_size

    return prepare, finish


def brevitas(narrow: bool):
    def prepare(model):
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerTensorFloatMSE

        class TwoBit(Int8WeightPerTensorFloatMSE):  # per-tensor learned scale, initialised from the MSE fit
            bit_width = 2
            narrow_range = narrow  # narrow: {-1, 0, +1} (ternary); wide: {-2, -1, 0, +1}

        def swap(m):
            for name, child in m.named_children():
                if isinstance(child, nn.Conv2d):
                    q = qnn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                        padding=child.padding, bias=child.bias is not None, weight_quant=TwoBit)
                elif isinstance(child, nn.Linear):
                    q = qnn.QuantLinear(child.in_features, child.out_features, bias=child.bias is not None, weight_quant=TwoBit)
                else:
                    swap(child)
                    continue
                q.load_state_dict(child.state_dict(), strict=False)
                setattr(m, name, q)

        swap(model)
        return model

    def finish(model, d):
        # Brevitas keeps fp32 shadow weights: its own file is the state_dict; its deployable export is ONNX
        # (QCDQ), whose size is noted beside when onnx and onnxoptimizer are installed
        try:
            from brevitas.export import export_onnx_qcdq

            path = Path(d) / "qcdq.onnx"
            export_onnx_qcdq(model.eval(), torch.randn(1, 1, 28, 28), export_path=str(path))
            NOTES["brevitas"] = f"QCDQ ONNX export {path.stat().st_size:,} bytes"
        except Exception as e:
            NOTES["brevitas"] = f"no QCDQ export ({type(e).__name__})"
        return model, torch_save_bytes(model)

    return prepare, finish


def quanto(bits: int):
    def prepare(model):
        from optimum.quanto import qint2, qint4, quantize

        quantize(model, weights=qint2 if bits == 2 else qint4)
        return model

    def finish(model, d):
        from optimum.quanto import freeze
        from safetensors.torch import save

        freeze(model)  # weights become packed integer tensors
        return model, len(save(model.state_dict()))

    return prepare, finish


def torchao(bits: int):
    dtype = {2: torch.int2, 4: torch.int4}[bits]

    def prepare(model):
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

        quantize_(model, QATConfig(weight_config=IntxFakeQuantizeConfig(dtype, granularity="per_channel"), step="prepare"))
        return model

    def finish(model, d):
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerAxis
        from torchao.quantization.qat import QATConfig

        quantize_(model, QATConfig(IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0)), step="convert"))
        return model, torch_save_bytes(model)

    return prepare, finish


def nncf_qat():
    def prepare(model, calib=None):
        import nncf

        return nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))  # INT8 weights and activations

    def finish(model, d):
        return model, torch_save_bytes(model)  # fake-quantized fp32 weights plus the quantizers' parameters

    return prepare, finish


def nncf_weights(mode: str):
    def prepare(model, calib=None):
        return None  # compressed weights are integer buffers: nothing left to fine-tune

    def finish(model, d, calib=None):
        import nncf

        out = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), ratio=1.0, group_size=-1,
                                    dataset=nncf.Dataset(calib))
        return out, torch_save_bytes(out)

    return prepare, finish


ROWS = [
    ("dnncompress fourval (seed 000)", 2, "ours", ours("fourval")),
    ("dnncompress ternary (exact)", 1.58, "ours", ours("ternary", rule="exact")),
    ("dnncompress codebook 2-bit (dynamic)", 2, "ours", ours("codebook", bits=2, codebook="dynamic")),
    ("dnncompress codebook 4-bit (dynamic)", 4, "ours", ours("codebook", bits=4, codebook="dynamic")),
    ("Brevitas 2-bit {-2..1}, MSE scale", 2, "brevitas", brevitas(narrow=False)),
    ("Brevitas ternary {-1,0,1}, MSE scale", 1.58, "brevitas", brevitas(narrow=True)),
    ("optimum-quanto qint2", 2, "optimum.quanto", quanto(2)),
    ("optimum-quanto qint4", 4, "optimum.quanto", quanto(4)),
    ("torchao int2 QAT (Linear only)", 2, "torchao", torchao(2)),
    ("torchao int4 QAT (Linear only)", 4, "torchao", torchao(4)),
    ("NNCF INT8 QAT (weights + activations)", 8, "nncf", nncf_qat()),
    ("NNCF compress_weights INT4_SYM (no QAT)", 4, "nncf", nncf_weights("INT4_SYM")),
    ("NNCF compress_weights INT2_SYM (no QAT)", 2, "nncf", nncf_weights("INT2_SYM")),
]


def version_of(module: str) -> str:
    if module == "ours":
        return dnncompress.__version__
    try:
        from importlib.metadata import version

        return version({"optimum.quanto": "optimum-quanto"}.get(module, module))
    except Exception:
        return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--base-epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="substring of the rows to run (a quick check)")
    args = ap.parse_args()
    data = load_data("mnist", seed=args.seed)
    seed_everything(args.seed)
    base = build_model("lenet5", data.arch_kwargs())
    train(base, data.train, TrainSettings(epochs=args.base_epochs, seed=args.seed, augment=data.augment))
    base.eval()
    fp32_acc = evaluate(base, data.test)["accuracy"]
    fp32_bytes = fp32_file_bytes(base.state_dict())
    batches = []
    for x, y in torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=False):
        batches.append((x, y))
        if len(batches) == 8:
            break
    calib = [x[:1] for x, _ in batches]  # tools that calibrate (NNCF) see 8 training images
    fp_step = Stepper(base, batches).seconds(60)
    rows = [["fp32 base", 32, f"{fp32_acc:.2f}", "–", f"{fp32_bytes:,}", "1.0×", f"{1000 * fp_step:.2f} ms (1.00×)", "torch.save / safetensors"]]
    qat = TrainSettings(epochs=args.qat_epochs, lr=1e-3, schedule="cosine", seed=args.seed, augment=data.augment)
    for name, bits, module, (prepare, finish) in ROWS:
        if args.only and args.only not in name:
            continue
        print(f"-- {name}", flush=True)
        try:
            __import__(module) if module != "ours" else None
        except Exception as e:
            rows.append([name, bits, "skipped", "", "", "", "", f"{module} does not import: {type(e).__name__}: {e}"[:120]])
            continue
        try:
            seed_everything(args.seed)
            model = copy.deepcopy(base)
            takes_calib = "calib" in prepare.__code__.co_varnames
            trained = prepare(model, calib) if takes_calib else prepare(model)
            ptq = step = ratio = None
            if trained is not None:
                ptq = evaluate(trained, data.test)["accuracy"]
                step, ratio = step_against_fp32(trained, base, batches)
                seed_everything(args.seed)
                train(trained, data.train, qat)
                model = trained
            with tempfile.TemporaryDirectory() as d:
                final, nbytes = finish(model, d, calib) if "calib" in finish.__code__.co_varnames else finish(model, d)
            acc = evaluate(final.eval(), data.test)["accuracy"]
            rows.append([name, bits, f"{acc:.2f}", "" if ptq is None else f"{ptq:.2f}", f"{nbytes:,}", f"{fp32_bytes / nbytes:.1f}×",
                         "no QAT" if step is None else f"{1000 * step:.2f} ms ({ratio:.2f}×)",
                         f"{module} {version_of(module)}" + (f"; {NOTES.pop(module)}" if module in NOTES else "")])
            print("   ", rows[-1], flush=True)
        except Exception as e:
            traceback.print_exc()
            rows.append([name, bits, "failed", "", "", "", "", f"{module} {version_of(module)} raised {type(e).__name__}: {e}"[:160].replace("|", "/")])
    body = (f"LeNet-5 on the embedded MNIST (3,600 train / 400 validation / 1,000 test images), one fp32 base "
            f"({args.base_epochs} epochs, seed {args.seed}); every quantized model that trains gets the same QAT: "
            f"{args.qat_epochs} epochs, Adam, lr 1e-3, cosine, our training loop. **accuracy** is the test accuracy of what "
            "each tool's own saved file holds (ours: the .dnc loaded back; quanto after `freeze`; torchao after its "
            "`convert` step; NNCF compress_weights as compressed). **bytes**: that file (ours: the Huffman-coded .dnc; "
            "quanto: safetensors of the frozen state_dict; the others: `torch.save` of the state_dict, the format each "
            "documents). **QAT step**: training step at batch 32 (forward, backward, Adam); the ratio is the "
            "median over 7 rounds of 15 steps in which the tool's model and the fp32 base take turns, so that a slow "
            "spell of this shared machine falls on both sides. Nothing is chosen on data here: every tool runs its defaults at the stated bits, "
            "so the validation split is unused.\n\n")
    body += table(["tool / scheme", "bits", "test acc % (saved file)", "acc % before QAT", "file bytes", "× smaller", "QAT step", "version"], rows)
    body += "\n\n" + how_we_compare(rows)
    write_section("peers_1_lenet5", "Peers side by side: LeNet-5, same base, same fine-tuning", body, CMD)


def how_we_compare(rows) -> str:
    """A short reading of the table above, computed from its figures (no fixed claims)."""
    def num(s):
        try:
            return float(str(s).replace(",", "").rstrip("×"))
        except ValueError:
            return None

    done = [(r[0], num(r[2]), num(r[4])) for r in rows[1:] if num(r[2]) is not None and num(r[4])]
    if not done:
        return ""
    mine = [d for d in done if d[0].startswith("dnncompress")]
    peers = [d for d in done if not d[0].startswith("dnncompress")]
    lines = ["**How we compare** (from the figures above):", ""]
    if mine and peers:
        best_small = min(mine, key=lambda d: d[2])
        smaller_peers = [p for p in peers if p[2] <= best_small[2] * 1.05]
        lines.append(f"- Our smallest file, {best_small[0]}, is {best_small[2]:,.0f} bytes at {best_small[1]:.2f} %. "
                     + (f"No peer's file is that small; the smallest peer file is {min(peers, key=lambda p: p[2])[0]} at "
                        f"{min(p[2] for p in peers):,.0f} bytes ({min(peers, key=lambda p: p[2])[1]:.2f} %)."
                        if not smaller_peers else
                        "Peers at that size or smaller: " + ", ".join(f"{p[0]} ({p[2]:,.0f} bytes, {p[1]:.2f} %)" for p in smaller_peers) + "."))
        for p in sorted(peers, key=lambda p: p[2]):
            better = [m for m in mine if m[2] <= p[2] and m[1] >= p[1]]
            if better:
                b = min(better, key=lambda m: m[2])
                lines.append(f"- {p[0]}: {p[2]:,.0f} bytes at {p[1]:.2f} %; {b[0]} is {p[2] / b[2]:.1f}× smaller at {b[1]:.2f} %.")
            else:
                lines.append(f"- {p[0]}: {p[2]:,.0f} bytes at {p[1]:.2f} %; none of our rows is both as small and as accurate.")
    def ratio(cell):
        return float(cell.split("(")[1].rstrip("×)")) if "(" in str(cell) else None

    ours_r = [ratio(r[6]) for r in rows[1:] if r[0].startswith("dnncompress") and ratio(r[6])]
    peers_r = [ratio(r[6]) for r in rows[1:] if not r[0].startswith("dnncompress") and ratio(r[6])]
    if ours_r and peers_r:
        lines.append(f"- QAT step cost: ours {min(ours_r):.2f}–{max(ours_r):.2f}× an fp32 step, the peers' "
                     f"{min(peers_r):.2f}–{max(peers_r):.2f}×" + (" (we are slower: issue 14)" if min(ours_r) > min(peers_r) else "") + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
