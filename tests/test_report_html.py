"""`report --html`: one self-contained page, the charts' readability rules, and a real render in headless Chromium."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from dnncompress.charts import layer_figure, sensitivity_figure
from dnncompress.cli import main
from dnncompress.report import report_packed
from dnncompress.report_html import render_html, sensitivity_scans


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_ckpt):
    """tiny (lenet300) → auto prune (a real sensitivity scan in the history) → fourval except the last layer → pack."""
    d = tmp_path_factory.mktemp("html")
    r = CliRunner()
    for args in (["prune", str(tiny_ckpt), "--sparsity", "auto", "-o", str(d / "p.pt")],
                 ["quantize", str(d / "p.pt"), "--scheme", "fourval", "--exclude", "5", "-o", str(d / "q.pt")],
                 ["pack", str(d / "q.pt"), "-o", str(d / "m.dnc")]):
        res = r.invoke(main, args)
        assert res.exit_code == 0, res.output
    return d


def test_page_is_self_contained_complete_and_deterministic(packed):
    from dnncompress.checkpoint import load_checkpoint

    rep = report_packed(packed / "m.dnc")
    history = load_checkpoint(packed / "q.pt")["history"]
    page = render_html(rep, history, "q.pt")
    assert page == render_html(rep, history, "q.pt")  # same report, same bytes
    assert "<script" not in page and "<link" not in page and "@import" not in page
    # nothing is fetched: the only URLs are XML namespace names, which no browser loads
    assert set(re.findall(r"(?:src|href)\s*=", page)) <= {"href="} and not re.search(r"(?:src|href)=\"(?:https?:)?//", page)
    assert all(u.startswith(("http://www.w3.org/", "http://purl.org/", "http://creativecommons.org/"))
               for u in re.findall(r"https?://[^\"'\s)<]+", page))
    table = page[page.index("<h2>Per layer</h2>"):page.index("<h2>History</h2>")]
    assert [m for m in re.findall(r'<td class="l">([^<]+)</td>', table) if m in "1 3 5"] == ["1", "3", "5"]  # model order
    for part in ("codes", "sparse index", "codebook", "fp values", "container", "bits per weight", "sparsity"):
        assert part in page
    assert page.count("<svg") == 3  # layers, accuracy history, pruning sensitivity
    assert "pruning sensitivity, chosen on validation" in page
    assert f"{rep['packed_bytes']:,}" in page


def test_text_from_the_file_is_escaped(packed):
    rep = report_packed(packed / "m.dnc")
    evil = [{"stage": "<script>alert(1)</script>", "config": {"x": "<img src=x onerror=alert(1)>"}, "result": {"accuracy": 1.0}}]
    page = render_html(rep, evil, "<b>")
    assert "<script>" not in page and "<img" not in page and "&lt;script&gt;" in page


def test_many_layers_stay_readable():
    """60 conv layers and 60 BatchNorms: fp32 rows get their own panel and scale; the figure grows per row."""
    layers = []
    for i in range(60):
        layers.append({"layer": f"block{i}.conv", "params": 9216, "nonzeros": 4608, "scheme": "fourval", "bits": 2, "codes": 1200,
                       "index": 600, "tables": 16, "fp": 0, "bytes": 1816, "share": 0.01, "bits_per_weight": 1.6})
        layers.append({"layer": f"block{i}.bn", "params": 128, "nonzeros": 128, "scheme": "fp32", "bits": 32, "codes": 0, "index": 0,
                       "tables": 0, "fp": 512, "bytes": 512, "share": 0.001, "bits_per_weight": 32.0})
    layers.append({"layer": "fc", "params": 640_000, "nonzeros": 640_000, "scheme": "fp32", "bits": 32, "codes": 0, "index": 0,
                   "tables": 0, "fp": 2_560_000, "bytes": 2_560_000, "share": 0.9, "bits_per_weight": 32.0})
    rep = {"arch": "fake", "layers": layers, "fp32_bytes": 5_000_000, "packed_bytes": 2_700_000, "ratio": 1.85, "container_bytes": 1000}
    fig = layer_figure(rep)
    axes = fig.axes
    assert len(axes) == 6  # two groups × (bytes, bits per weight, sparsity)
    compressed, fp = axes[0], axes[3]
    assert [t.get_text() for t in compressed.get_yticklabels()][:2] == ["block0.conv", "block1.conv"]  # model order, top first
    assert len(fp.get_yticklabels()) == 61 and fp.get_yticklabels()[-1].get_text() == "fc"
    assert compressed.get_xlim()[1] < 10 * 1816  # the dense fc does not set the compressed layers' scale
    assert fig.get_size_inches()[1] >= 0.19 * 121  # one readable row per layer
    curves = {f"block{i}.conv": [[s, 10 * s * (i % 3)] for s in (0.0, 0.5, 0.9)] for i in range(60)}
    heat = sensitivity_figure(curves, {"block0.conv": 0.5})
    assert heat.axes[0].images and len(heat.axes[0].get_yticklabels()) == 60  # a heat map, not 60 legend entries


def test_scans_are_found_in_the_history():
    history = [{"stage": "prune", "result": {"auto": {"curves": {"a": [[0, 0], [0.5, 1]]}, "targets": {"a": 0.5}}}},
               {"stage": "joint", "result": {"scan": {"a": [[0.0, 2, 3.0, 10], [0.0, 4, 0.5, 20], [0.5, 2, 5.0, 6]]},
                                             "layers": [{"layer": "a", "bits": 4, "sparsity": 0.0}]}}]
    scans = sensitivity_scans(history)
    assert [s[3] for s in scans] == ["sparsity of this layer alone", "bits of this layer alone"]
    assert scans[1][1] == {"a": [[2, 3.0], [4, 0.5]]} and scans[1][2] == {"a": 4}


def test_cli_html_and_its_mistakes(packed, in_tmp):
    r = CliRunner()
    res = r.invoke(main, ["report", str(packed / "m.dnc"), "--html", "r.html", "--history", str(packed / "q.pt"), "--plot", "r.png"])
    assert res.exit_code == 0, res.output
    page = (in_tmp / "r.html").read_text()
    assert "From " in page and "quantize" in page and (in_tmp / "r.png").stat().st_size > 10_000
    for args, words in ((["--html", "r.txt"], "name a .html file"), (["--html", str(packed / "m.dnc")], "is the input file"),
                        (["--html", "x.html", "--history", str(packed / "m.dnc")], "--history takes the checkpoint")):
        res = r.invoke(main, ["report", str(packed / "m.dnc"), *args])
        assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (in_tmp / "r.txt").exists() and not (in_tmp / "x.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; .ci/run installs it)")
def test_page_renders_in_headless_chromium(packed, tmp_path):
    from PIL import Image

    page = tmp_path / "r.html"
    page.write_text(render_html(report_packed(packed / "m.dnc")))
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists(), "Chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    ink = (pixels.sum(axis=2) < 600).mean()  # share of pixels that are not (near) white
    colours = len(np.unique(pixels.reshape(-1, 3) // 16, axis=0))
    assert ink > 0.03 and colours > 20, (ink, colours)  # text, bars and charts were drawn, not a blank page
