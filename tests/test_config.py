from pathlib import Path

import pytest

from dnncompress.config import load_config
from dnncompress.errors import UserError

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.stages


def test_unknown_key_names_key_file_line_and_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {arch: lenet5}\nstages:\n  - train:\n      epohcs: 3\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "epohcs" in msg and "did you mean 'epochs'" in msg


def test_unknown_top_level_key_and_stage(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("modle: {arch: lenet5}\nstages: [train]\n")
    with pytest.raises(UserError, match=r"c.yaml:1.*did you mean 'model'"):
        load_config(p)
    p.write_text("stages:\n  - trian: {}\n")
    with pytest.raises(UserError, match=r"c.yaml:2.*did you mean 'train'"):
        load_config(p)


def test_wrong_types_and_bad_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stages:\n  - train: {epochs: many}\n")
    with pytest.raises(UserError, match=r"c.yaml:2.*epochs.*int"):
        load_config(p)
    p.write_text("stages:\n  - train: {optimizer: adamw}\n")
    with pytest.raises(UserError, match="did you mean 'adam'"):
        load_config(p)
    p.write_text("stages:\n  - train: {epochs: -1}\n")
    with pytest.raises(UserError, match="epochs must be"):
        load_config(p)
    p.write_text("stages: [train\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: {arch: lenet5}\nstages:\n  - train: {epochs: 3}\n")
    cfg = load_config(p, ["stages.0.train.epochs=1", "model.arch=lenet300", "output_dir=x"])
    assert cfg.stages[0][1].epochs == 1 and cfg.model.arch == "lenet300" and cfg.output_dir == "x"
    with pytest.raises(UserError, match="key.path=value"):
        load_config(p, ["nonsense"])
