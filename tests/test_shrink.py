"""shrink: whole filters and neurons go until the packed file fits a byte target, chosen on validation."""
import json

import torch
import torch.nn as nn
from click.testing import CliRunner

from dnncompress.checkpoint import load_checkpoint
from dnncompress.cli import main
from dnncompress.prune.shrink import prunable_units, search


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_search_takes_the_most_accurate_candidate_that_fits_else_the_smallest():
    model, x = net(), torch.randn(2, 1, 6, 6)
    grid = [(0.0, 0.5), (0.5, 0.0), (0.5, 0.5), (0.75, 0.75)]
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sizes = {}
    for c, n in grid:  # what each candidate measures, so the test can say which should win
        from dnncompress.prune.shrink import cut

        sizes[(c, n)] = params(cut(model, x, c, n))
    # accuracy falls with the cut, except that (0.5, 0) is the most accurate of all: it wins only when it fits
    fake_acc = {(0.0, 0.5): 90.0, (0.5, 0.0): 95.0, (0.5, 0.5): 80.0, (0.75, 0.75): 70.0}
    order = iter(grid)
    acc = lambda m: fake_acc[next(order)]  # noqa: E731
    chosen, trials, fits = search(model, x, grid, max(sizes[(0.0, 0.5)], sizes[(0.5, 0.0)]), lambda m: None, acc, params)
    assert fits and [t["chosen"] for t in trials] == [False, True, False, False]
    assert params(chosen) == sizes[(0.5, 0.0)] and [t["packed_bytes"] for t in trials] == [sizes[g] for g in grid]
    order = iter(grid)
    chosen, trials, fits = search(model, x, grid, min(sizes.values()) - 1, lambda m: None, acc, params)  # nothing fits
    assert not fits and trials[-1]["chosen"] and params(chosen) == min(sizes.values())
    assert all(t["sizes"] for t in trials[1:])  # each trial records the smaller sizes it was cut to


def test_prunable_units_knows_an_mlp_has_no_filters():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    assert prunable_units(mlp, torch.randn(2, 20)) == {"channel": False, "neuron": True}
    assert prunable_units(net(), torch.randn(2, 1, 6, 6)) == {"channel": True, "neuron": True}


def _packed_bytes(path, tmp_path):
    """Quantize the shrunk checkpoint with ternary and pack it the way shrink measured (ANS, fp16 biases)."""
    q, dnc = tmp_path / "q.pt", tmp_path / "q.dnc"
    r = CliRunner().invoke(main, ["quantize", str(path), "--scheme", "ternary", "-o", str(q)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["pack", str(q), "-o", str(dnc), "--entropy", "ans", "--fp16"])
    assert r.exit_code == 0, r.output
    return dnc.stat().st_size


def test_cli_shrink_fits_the_real_packed_file_and_says_when_it_cannot(in_tmp, tiny_ckpt):
    target = 12_000  # lenet300 (784-300-100-10): ternary + ANS is ~50 kB dense; only deep neuron cuts fit
    r = CliRunner().invoke(main, ["shrink", str(tiny_ckpt), "--target-bytes", str(target), "--neurons", "0.5,0.8,0.9",
                                  "--recover-epochs", "0", "-o", "s.pt", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["chosen_on"].startswith("validation") and result["fits"] and "status" not in result
    assert [t["channels_removed"] for t in result["trials"]] == [0.0, 0.0, 0.0]  # an MLP: no filters to try
    chosen = result["chosen"]
    assert chosen["packed_bytes"] <= target * 0.95
    # the most accurate on validation among those that fit, and the size measured is the real file's
    assert chosen["val_accuracy"] == max(t["val_accuracy"] for t in result["trials"] if t["fits"])
    # (within a few bytes: the real checkpoint's spec also names the stages it went through)
    assert abs(_packed_bytes(in_tmp / "s.pt", in_tmp) - chosen["packed_bytes"]) <= 0.01 * chosen["packed_bytes"]
    assert load_checkpoint(in_tmp / "s.pt")["structure"]

    r = CliRunner().invoke(main, ["shrink", str(tiny_ckpt), "--target-bytes", "500", "--neurons", "0.5,0.9", "--recover-epochs", "0",
                                  "-o", "m.pt"])
    assert r.exit_code == 0, r.output
    assert "MISSED" in r.stderr and (in_tmp / "m.pt").exists()


def test_shrink_bad_input_is_one_line_and_writes_nothing(in_tmp, tiny_ckpt):
    for args, words in ((["--target-ratio", "1"], "target_ratio"), (["--neurons", "0.5,1.5"], "fractions"),
                        (["--neurons", "a,b"], "comma-separated"), (["--scheme", "nope"], "unknown scheme")):
        r = CliRunner().invoke(main, ["shrink", str(tiny_ckpt), "-o", "bad.pt", *args])
        assert r.exit_code == 2, (args, r.output)
        line = r.output.strip()
        assert "\n" not in line and words in line, (args, line)
        assert not (in_tmp / "bad.pt").exists()
    r = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "0.5", "--recover-epochs", "1", "-o", "bad.pt"])
    assert r.exit_code == 2 and "--recover-epochs" in r.output and not (in_tmp / "bad.pt").exists()


def test_structured_auto_with_recovery_compares_like_with_like(in_tmp, tiny_ckpt):
    """With --recover-epochs the baseline gets the same fine-tuning as each candidate, and the scan goes past one noisy miss."""
    r = CliRunner().invoke(main, ["prune", str(tiny_ckpt), "--structured", "neuron", "--sparsity", "auto", "--max-drop", "2",
                                  "--recover-epochs", "1", "-o", "p.pt", "--json"])
    assert r.exit_code == 0, r.output
    auto = json.loads(r.stdout)["auto"]
    assert auto["recover_epochs"] == 1 and auto["measured_drop"] <= 2
    misses = [t["val_drop"] > 2 for t in auto["trials"]]
    assert not any(a and b for a, b in zip(misses[:-2], misses[1:-1]))  # it stops at the second miss in a row, not before
