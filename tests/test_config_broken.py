"""Every broken config is refused by `validate` exactly as `run` would refuse it: one line that names
the file (and the line where there is one) and what is wrong, exit code 2, nothing written."""
import pytest
from click.testing import CliRunner

from dnncompress.cli import main
from dnncompress.config import load_config
from dnncompress.errors import UserError

from .optional import needs_torchvision

T = "model: {arch: lenet5}\ndata: {name: synthetic}\nstages:\n"

BROKEN = {
    "unknown-arch": ("model: {arch: lenet6}\nstages: [train]\n", [], r":1.*unknown architecture 'lenet6'.*did you mean 'lenet5'"),
    "unknown-torchvision": ("model: {arch: 'torchvision:resnet9000'}\nstages: [train]\n", [], "unknown torchvision model"),
    "code-arch-untrusted": ("model: {arch: 'os:system'}\nstages: [train]\n", [], r"import and run code.*--trust"),
    "arch-kwargs-nested": ("model: {arch: lenet5, arch_kwargs: {a: [1, 2]}}\nstages: [train]\n", [], "arch_kwargs"),
    "unknown-dataset": ("model: {arch: lenet5}\ndata: {name: mnits}\nstages: [train]\n", [], r":2.*unknown dataset 'mnits'.*did you mean 'mnist'"),
    "missing-data-dir": ("model: {arch: lenet5}\ndata: {name: cifar10, root: /no/such/dir}\nstages: [train]\n", [], r"data.root.*does not exist"),
    "lr-nan": (T + "  - train: {lr: .nan}\n", [], r":4.*lr must be a finite number > 0"),
    "lr-inf": (T + "  - train: {lr: .inf}\n", [], "lr must be a finite number > 0"),
    "lr-negative": (T + "  - train: {lr: -0.1}\n", [], "lr must be"),
    "lr-string": (T + "  - train: {lr: fast}\n", [], r"lr.*must be float"),
    "weight-decay-negative": (T + "  - train: {weight_decay: -1.0e-4}\n", [], "weight_decay must be"),
    "weight-decay-nan": (T + "  - train: {weight_decay: .nan}\n", [], "weight_decay must be"),
    "epochs-huge": (T + "  - train: {epochs: 1000000000000}\n", [], r"epochs must be .*10,000"),
    "epochs-float": (T + "  - train: {epochs: 1e12}\n", [], r"epochs.*must be int"),
    "epochs-negative": (T + "  - train: {epochs: -1}\n", [], "epochs must be"),
    "batch-zero": (T + "  - train: {batch_size: 0}\n", [], "batch_size must be"),
    "batch-huge": (T + "  - train: {batch_size: 100000000}\n", [], "batch_size must be"),
    "optimizer-typo": (T + "  - train: {optimizer: adamw}\n", [], "did you mean 'adam'"),
    "schedule-unknown": (T + "  - train: {schedule: linear}\n", [], "schedule"),
    "stages-empty": (T.replace("stages:\n", "stages: []\n"), [], "no stages"),
    "stages-missing": ("model: {arch: lenet5}\n", [], "no stages"),
    "stages-mapping": ("model: {arch: lenet5}\nstages: {train: {}}\n", [], "must be a list"),
    "stage-two-keys": (T + "  - {train: {}, prune: {}}\n", [], "one 'name: {params}' entry"),
    "stage-unknown": (T + "  - trian: {}\n", [], "did you mean 'train'"),
    "stage-params-list": (T + "  - train: [1, 2]\n", [], "must be a mapping"),
    "finetune-no-input": ("model: {arch: lenet5}\nstages:\n  - finetune: {}\n", [], "model.checkpoint is required"),
    "checkpoint-missing": ("model: {arch: lenet5, checkpoint: /no/such.pt}\nstages:\n  - finetune: {}\n", [], r"checkpoint '/no/such.pt' not found"),
    "finetune-lr-nan": (T + "  - train: {}\n  - finetune: {lr: .nan}\n", [], "lr must be"),
    "finetune-l1-negative": (T + "  - train: {}\n  - finetune: {l1: -1}\n", [], "l1 and l2"),
    "finetune-l2-inf": (T + "  - train: {}\n  - finetune: {l2: .inf}\n", [], "l1 and l2"),
    "agp-final-too-big": (T + "  - train: {}\n  - finetune: {agp: {final: 1.5}}\n", [], r"agp.final must be in \[0, 1\)"),
    "agp-every-zero": (T + "  - train: {}\n  - finetune: {agp: {every: 0}}\n", [], "agp.every"),
    "agp-start-after-end": (T + "  - train: {}\n  - finetune: {agp: {start: 0.9, end: 0.5}}\n", [], "start < end"),
    "agp-unknown-key": (T + "  - train: {}\n  - finetune: {agp: {finall: 0.9}}\n", [], "did you mean 'final'"),
    "sparsity-one": (T + "  - train: {}\n  - prune: {sparsity: 1.0}\n", [], r"sparsity must be in \[0, 1\)"),
    "sparsity-word": (T + "  - train: {}\n  - prune: {sparsity: most}\n", [], "sparsity must be"),
    "sparsity-nan": (T + "  - train: {}\n  - prune: {sparsity: .nan}\n", [], "sparsity must be"),
    "max-drop-negative": (T + "  - train: {}\n  - prune: {sparsity: auto, max_drop: -1}\n", [], "max-drop must be"),
    "max-drop-nan": (T + "  - train: {}\n  - prune: {sparsity: auto, max_drop: .nan}\n", [], "max-drop must be"),
    "prune-scope": (T + "  - train: {}\n  - prune: {scope: world}\n", [], "scope"),
    "prune-override-value": (T + "  - train: {}\n  - prune: {overrides: {conv1: 2.0}}\n", [], r"conv1. must be in \[0, 1\)"),
    "scheme-unknown": (T + "  - train: {}\n  - quantize: {scheme: fivevalue}\n", [], "unknown quantization scheme"),
    "codebook-bits": (T + "  - train: {}\n  - quantize: {scheme: codebook, bits: 9}\n", [], "takes 2–8 bits"),
    "fourval-bits": (T + "  - train: {}\n  - quantize: {scheme: fourval, bits: 4}\n", [], "takes 2 bits"),
    "codebook-per-channel-dynamic": (T + "  - train: {}\n  - quantize: {scheme: codebook, codebook: dynamic, per_channel: true}\n", [], "per-channel"),
    "quant-override-scalar": (T + "  - train: {}\n  - quantize: {scheme: codebook, overrides: {conv1: 8}}\n", [], "override"),
    "quant-override-key": (T + "  - train: {}\n  - quantize: {scheme: codebook, overrides: {conv1: {bitz: 8}}}\n", [], "bitz"),
    "quant-override-bits": (T + "  - train: {}\n  - quantize: {scheme: codebook, overrides: {conv1: {bits: 12}}}\n", [], "bits"),
    "joint-ratio-small": (T + "  - train: {}\n  - joint: {target_ratio: 0.5}\n", [], "target_ratio > 1"),
    "joint-ratio-nan": (T + "  - train: {}\n  - joint: {target_ratio: .nan}\n", [], "target_ratio"),
    "joint-bits": (T + "  - train: {}\n  - joint: {bits: [1]}\n", [], "bits must be integers in 2..8"),
    "joint-sparsities": (T + "  - train: {}\n  - joint: {sparsities: [1.2]}\n", [], "sparsities must be"),
    "pack-entropy": (T + "  - train: {}\n  - pack: {entropy: zip}\n", [], "entropy"),
    "seed-negative": ("seed: -1\n" + T + "  - train: {}\n", [], "seed must be"),
    "seed-huge": ("seed: 100000000000000000000000\n" + T + "  - train: {}\n", [], "seed must be"),
    "device-unknown": ("device: gpu\n" + T + "  - train: {}\n", [], r"device 'gpu'"),
    "output-dir-empty": ("output_dir: ''\n" + T + "  - train: {}\n", [], "output_dir"),
    "not-a-mapping": ("- train\n- prune\n", [], "must be a mapping"),
    "bad-yaml": ("stages: [train\n", [], "not valid YAML"),
    "tab-indent": ("stages:\n\t- train\n", [], "not valid YAML"),
    "duplicate-key": ("model: {arch: lenet5}\nseed: 1\nseed: 2\nstages: [train]\n", [], r":3.*'seed' appears twice"),
    "duplicate-stage-key": (T + "  - train: {epochs: 1, epochs: 2}\n", [], r":4.*'epochs' appears twice"),
    "alias-bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                   "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                   "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n", [], "alias"),
    "deep-nesting": ("x: " + "[" * 2000 + "]" * 2000 + "\n", [], "nested"),
    "override-no-equals": (T + "  - train: {}\n", ["stages.0.train.epochs"], "key.path=value"),
    "override-bad-yaml": (T + "  - train: {}\n", ["stages.0.train.epochs=[1"], r"override 'stages.0.train.epochs=\[1'.*YAML"),
    "override-into-scalar": (T + "  - train: {}\n", ["seed.x=1"], "not a mapping|must be int"),
    "override-index": (T + "  - train: {}\n", ["stages.5.train.epochs=1"], "no item 5|out of range"),
    "override-unknown-key": (T + "  - train: {}\n", ["stages.0.train.epohcs=1"], "did you mean 'epochs'"),
    "train-no-arch": ("data: {name: synthetic}\nstages: [train]\n", [], "train needs an architecture"),
    "same-output-twice": (T + "  - train: {}\n  - pack: {output: out.dnc}\n  - pack: {output: out.dnc}\n", [], "would overwrite"),
    "output-is-config": (T + "  - train: {}\n  - pack: {output: c.yaml}\n", [], "would overwrite the config itself"),
    "plot-is-output": (T + "  - train: {}\n  - prune: {sparsity: auto, plot: out.png}\n  - pack: {output: out.png}\n", [], "would overwrite"),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_torchvision) if "torchvision" in n else n for n in BROKEN])
def test_broken_config_is_one_clear_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, overrides, pattern = BROKEN[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=pattern) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_non_utf8_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: {arch: lenet5}\nstages: [train]\n# caf\xe9\n")
    with pytest.raises(UserError, match=r"c.yaml.*not UTF-8.*byte 4\d"):
        load_config(path)


@pytest.mark.parametrize("name", ["unknown-arch", "lr-nan", "alias-bomb", "duplicate-key", "override-bad-yaml"])
def test_validate_and_run_exit_2_and_write_nothing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, overrides, _ = BROKEN[name]
    (tmp_path / "c.yaml").write_text(text)
    for cmd in ("validate", "run"):
        r = CliRunner().invoke(main, [cmd, "c.yaml", *overrides])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "c.yaml" in lines[0], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_code_arch_in_config_runs_only_with_trust(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("model: {arch: 'torch.nn:Linear'}\nstages: [train]\n")
    with pytest.raises(UserError, match="--trust"):
        load_config(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml", trust=True).model.arch == "torch.nn:Linear"
