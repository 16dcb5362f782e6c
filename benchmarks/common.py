"""Shared benchmark helpers: machine description, timing, and writing docs/results.md sections."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SECTIONS = DOCS / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {dev}")


def timeit(fn, repeat: int = 5, number: int = 1) -> float:
    """Median seconds per call over `repeat` rounds of `number` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


class PeakRSS:
    """Samples this process's current resident memory (/proc/self/statm) every 0.5 ms in a thread;
    `peak` is the highest seen above the resident size at entry (ru_maxrss would keep the peak of imports)."""

    def __init__(self):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    def above_base_mb(self) -> float:
        return (max(self.peak, self.rss()) - self.base) / 1e6


def trained_lenet5(epochs: int = 3):
    """(the embedded MNIST, LeNet-5 trained `epochs` on it with seed 0): the base several benchmarks compress."""
    from dnncompress.data import load_data
    from dnncompress.models import build_model
    from dnncompress.train import TrainSettings, seed_everything, train

    mnist = load_data("mnist")
    seed_everything(0)
    base = build_model("lenet5")
    train(base, mnist.train, TrainSettings(epochs=epochs))
    return mnist, base


def mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_section(name: str, title: str, body: str, command: str) -> Path:
    """Write docs/results/<name>.md and rebuild docs/results.md from every section."""
    SECTIONS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"## {title}\n\nMeasured {stamp} on {machine()}.\nRerun: `{command}`\n\n{body.strip()}\n"
    path = SECTIONS / f"{name}.md"
    path.write_text(text)
    parts = ["# Benchmark results\n\nEvery figure below was measured by the script named in its section; "
             "nothing is copied from the papers except where a row says 'paper'.\n"]
    for section in sorted(SECTIONS.glob("*.md")):
        parts.append(section.read_text())
    (DOCS / "results.md").write_text("\n".join(parts))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(print(machine()))
