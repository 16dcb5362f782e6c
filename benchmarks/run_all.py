"""`make bench`: every benchmark in turn; each writes its sections of docs/results.md."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in ("quant_lenet5.py", "kmeans_bench.py", "calib_lenet5.py", "pack_bench.py", "prune_lenet5.py", "pq_lenet5.py", "trust_bench.py", "entropy_bench.py", "structured_bench.py", "smallest_lenet5.py", "peers_lenet5.py", "onnx_bench.py", "quick_bench.py", "qat_accuracy.py", "sweep_ab.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], cwd=HERE, check=True)
for model in ("effnet", "mpnet"):  # pretrained models against the peers (mpnet: about two hours on 2 cores)
    print(f"== ptq_pretrained.py --model {model}", flush=True)
    subprocess.run([sys.executable, str(HERE / "ptq_pretrained.py"), "--model", model], cwd=HERE, check=True)
