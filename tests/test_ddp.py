"""Two CPU processes (gloo) train through torchrun and must end with bit-identical weights."""
import json
import os
import subprocess
import sys

import torch


def test_two_process_ddp_train_ranks_agree(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free rendezvous port itself (no pick-then-bind race)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dnncompress", "train", "lenet300", "--data", "synthetic",
           "--epochs", "1", "-o", str(tmp_path / "ddp.pt"), "--json"]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["world_size"] == 2
    digests = out["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    ckpt = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ckpt["history"][-1]["result"]["rank_digests"] == digests
