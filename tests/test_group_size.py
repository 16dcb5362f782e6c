"""Group-wise scales: one α per run of g weights of a row, fitted, packed (and counted) and restored."""
import pytest
import torch

from dnncompress.errors import UserError
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.quant import make_quantizer
from dnncompress.quant.base import table_rows
from dnncompress.quantize_model import quantize
from dnncompress.report import report_packed
from dnncompress.surgery import effective_state_dict


def test_table_rows():
    assert table_rows((8, 64), False, 0) == 1
    assert table_rows((8, 64), True, 0) == 8
    assert table_rows((8, 64), True, 16) == 32
    assert table_rows((8, 3, 3, 3), True, 9) == 24
    assert table_rows((8, 25), True, 16) == 8  # 16 does not divide a row of 25: one group per row


@pytest.mark.parametrize("scheme", ["fourval", "ternary", "asym-ternary", "asym-quaternary", "codebook"])
def test_groups_fit_closer_and_pack_exactly(tmp_path, scheme):
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 16)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.1, 3, 128))  # input columns of very different scales: groups help
    w = lin.weight.detach()
    err_row = float((make_quantizer(scheme, per_channel=True).fit(w)(w) - w).norm())
    err_group = float((make_quantizer(scheme, group_size=32).fit(w)(w) - w).norm())
    assert err_group < err_row
    model = torch.nn.Sequential(lin)
    quantize(model, scheme=scheme, group_size=32)
    path = tmp_path / "g.dnc"
    save_packed(model, path)
    back = checkpoint_from_packed(path, model=torch.nn.Sequential(torch.nn.Linear(128, 16)))
    assert torch.equal(back["state_dict"]["0.weight"], effective_state_dict(model)["0.weight"])
    width = 2 if scheme.startswith("asym") else 1
    shared = 16 * 4 if scheme == "codebook" else 0  # a 4-bit codebook's 16 shared values, fp32
    row = next(r for r in report_packed(path)["layers"] if r["layer"] == "0")
    assert row["tables"] == 16 * 4 * width * 4 + shared  # 16 rows × 4 groups × α (and αn) or scale × fp32: counted in the file


def test_group_size_is_refused_where_it_means_nothing():
    with pytest.raises(UserError, match="group-size"):
        make_quantizer("pq", group_size=64)
    with pytest.raises(UserError, match="group_size"):
        make_quantizer("fourval", group_size=-1)


def test_cli_group_size_checkpoint_loads(in_tmp, tiny_ckpt):
    from click.testing import CliRunner

    from dnncompress.checkpoint import load_checkpoint
    from dnncompress.cli import main

    r = CliRunner().invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "--group-size", "16", "-o", "g.pt"])
    assert r.exit_code == 0, r.output
    q = load_checkpoint("g.pt")["quant"]["1"]  # vetted on load: the table has one row per group of 16
    assert q["group_size"] == 16 and q["levels"].shape[0] == 300 * (784 // 16)
