"""Users' own data: an ImageFolder tree and a package.module:function factory, with one-line errors."""
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dnncompress.checkpoint import load_checkpoint
from dnncompress.cli import main
from dnncompress.data import load_data
from dnncompress.errors import UserError

from .optional import needs_torchvision


def _image_tree(root, classes=("cat", "dog"), per_class=6):
    g = torch.Generator().manual_seed(0)
    for part in ("train", "val"):
        for c, name in enumerate(classes):
            (root / part / name).mkdir(parents=True)
            for i in range(per_class if part == "train" else 2):
                pixels = (torch.rand(20, 24, 3, generator=g) * 80 + 160 * c).clamp(0, 255).byte().numpy()
                Image.fromarray(pixels).save(root / part / name / f"{i}.png")
    return root


@needs_torchvision
def test_imagefolder_loads_train_val_and_holds_out_validation(tmp_path):
    root = _image_tree(tmp_path / "imgs")
    d = load_data("imagefolder", str(root), options={"image_size": 16})
    assert d.input_shape == (3, 16, 16) and d.num_classes == 2 and len(d.test) == 4
    assert len(d.train) + len(d.val) == 12 and len(d.val) == 1
    assert d.train.tensors[0].shape[1:] == (3, 16, 16)


@needs_torchvision
def test_imagefolder_bad_layouts(tmp_path):
    with pytest.raises(UserError, match="train/"):
        load_data("imagefolder", str(tmp_path))
    root = _image_tree(tmp_path / "a")
    (root / "val" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "bird" / "0.png")
    with pytest.raises(UserError, match="same class folders"):
        load_data("imagefolder", str(root), options={"image_size": 16})
    with pytest.raises(UserError, match="does not take the options"):
        load_data("imagefolder", str(root), options={"colour": "blue"})


@needs_torchvision
def test_imagefolder_through_the_cli(in_tmp):
    root = _image_tree(in_tmp / "imgs")
    r = CliRunner().invoke(main, ["train", "lenet5", "--data", "imagefolder", "--data-dir", str(root), "--data-opt", "image_size=28",
                                  "--epochs", "1", "-o", "img.pt", "--json"])
    assert r.exit_code == 0, r.output
    ds = load_checkpoint("img.pt")["dataset"]
    assert ds["name"] == "imagefolder" and ds["options"] == {"image_size": 28} and ds["input_shape"] == [3, 28, 28]
    r = CliRunner().invoke(main, ["train", "lenet5", "--data", "imagefolder", "--data-dir", str(in_tmp), "-o", "x.pt"])
    assert r.exit_code == 2 and "train/" in r.output and not (in_tmp / "x.pt").exists()


def test_user_factory(in_tmp):
    d = load_data("tests.data_factory:tiny")
    assert d.input_shape == (1, 28, 28) and d.num_classes == 2 and len(d.test) == 32
    assert load_data("tests.data_factory:as_dict").num_classes == 3
    runner = CliRunner()
    r = runner.invoke(main, ["train", "lenet300", "--data", "tests.data_factory:tiny", "--epochs", "1", "-o", "f.pt", "--json"])
    assert r.exit_code == 0, r.output
    # a later stage never runs the factory the checkpoint names, unless the user names it again
    r = runner.invoke(main, ["finetune", "f.pt", "--epochs", "1", "-o", "g.pt"])
    assert r.exit_code == 2 and "--data tests.data_factory:tiny" in r.output and not (in_tmp / "g.pt").exists()
    r = runner.invoke(main, ["finetune", "f.pt", "--data", "tests.data_factory:tiny", "--epochs", "1", "-o", "g.pt", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))["output"] == "g.pt"


@pytest.mark.parametrize("name,needle", [("tests.no_such_module:f", "cannot import"), ("tests.data_factory:nope", "cannot import"),
                                         ("tests.data_factory:wrong", "must return"), ("tests.data_factory:broken", "disk on fire")])
def test_bad_factories_give_one_line(in_tmp, name, needle):
    r = CliRunner().invoke(main, ["train", "lenet300", "--data", name, "--epochs", "1", "-o", "bad.pt"])
    assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (in_tmp / "bad.pt").exists()


def test_a_config_naming_a_factory_needs_trust(tmp_path):
    from dnncompress.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: lenet300}\ndata: {name: 'tests.data_factory:tiny', options: {n: 64}}\nstages:\n  - train: {epochs: 1}\n")
    with pytest.raises(UserError, match="--trust"):
        load_config(cfg)
    assert load_config(cfg, trust=True).data.options == {"n": 64}
