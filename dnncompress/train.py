"""Training, fine-tuning and evaluation loops: device auto, AMP on GPU, fixed seeds, DDP under torchrun.

The loop knows nothing about pruning or quantization: those live on the model as
parametrizations (see `surgery`), and stage-specific work plugs in through `hooks`
(an object with optional `on_step(step, total)` and `penalty(model)` methods).
"""
from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .errors import UserError

Progress = Callable[[dict], None]


@dataclass
class TrainSettings:
    epochs: int = 3
    lr: float = 2e-3
    batch_size: int = 32
    optimizer: str = "adam"  # adam | sgd
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    augment: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """The device to run on; a name torch does not know, or a device this machine lacks, is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"--device {name}: not a device name; use cpu, cuda, cuda:N, mps or auto") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if device.type not in available:
        raise UserError(f"--device {name}: dnncompress runs on cpu, cuda or mps; use --device cpu")
    if not available[device.type]():
        raise UserError(f"--device {name}: this machine has no {device.type.upper()} device; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use --device cuda:0 or cpu")
    return device


def distributed_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(device: torch.device) -> bool:
    _, world = distributed_env()
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def hash_tensors(h, state: dict) -> None:
    """Feed every (name, tensor bytes) of `state`, in name order, into the hash object `h`."""
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    hash_tensors(h, model.state_dict())
    return h.hexdigest()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation on a batch tensor: random 4-pixel-padded crop and horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):  # per-image crop; n ≤ batch size, cheap next to the forward pass
        img = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = img.flip(-1) if flip[i] else img
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 500, device: str = "auto") -> dict:
    """Top-1 accuracy (percent) and mean cross-entropy over the whole dataset."""
    dev = pick_device(device)
    model = model.to(dev)
    was_training = model.training
    model.eval()
    x_all, y_all = dataset.tensors
    correct, loss_sum = 0, 0.0
    with torch.nn.utils.parametrize.cached():  # weights are fixed here: fake-quantize each layer once, not per batch
        for i in range(0, len(x_all), batch_size):
            x, y = x_all[i : i + batch_size].to(dev), y_all[i : i + batch_size].to(dev)
            with _autocast(dev):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    model.train(was_training)
    n = len(x_all)
    return {"accuracy": 100.0 * correct / max(n, 1), "loss": loss_sum / max(n, 1), "n": n}


def _make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=True)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


def _make_schedule(opt, s: TrainSettings, total_steps: int):
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=max(total_steps, 1))
    if s.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    return None


@dataclass
class Snapshots:
    """Where and how often `train` saves everything it needs to continue after a kill.

    A snapshot (every `every` optimizer steps and at each epoch end, atomically) holds the model's
    full state (shadow weights, masks, quantizer tables), the optimizer, the schedule, every RNG,
    the epoch's data order and position, and the hooks' run state. With `resume`, a snapshot whose
    key matches this exact run (settings, starting weights, data) is continued; the result is
    bit-identical on CPU to a run that was never interrupted. `every=0` writes none.
    """

    path: Path
    every: int = 200
    resume: bool = False
    log: Callable[[str], None] = lambda msg: None
    key: str = ""  # what else defines the run (the stage, its parameters, its input): set by the stage


SNAPSHOT_FORMAT = "dnncompress-snapshot"


def _run_key(model: nn.Module, train_set: TensorDataset, settings: TrainSettings, extra: str) -> str:
    """What makes two runs the same run: settings (not the device), starting weights, data, and `extra`
    (the stage's own key: its parameters, e.g. the AGP schedule the hooks follow)."""
    import hashlib
    import json

    x, y = train_set.tensors
    h = hashlib.sha256(json.dumps({k: v for k, v in vars(settings).items() if k != "device"}, sort_keys=True, default=str).encode())
    h.update(weights_digest(model).encode())
    h.update(str((tuple(x.shape), str(x.dtype), extra)).encode())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    h.update(x[:: max(1, len(x) // 64)].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _rng_states() -> dict:
    """Every RNG as tensors and plain values, so a snapshot loads with weights_only=True (no pickled objects)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
           "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _save_snapshot(snap: Snapshots, state: dict) -> None:
    from .fileio import atomic_torch_save

    atomic_torch_save(state, snap.path)  # tensors and plain values only: read back with weights_only=True


def _load_snapshot(snap: Snapshots, key: str) -> dict | None:
    """The snapshot to continue from, or None (no file, another run's, or unreadable: start afresh)."""
    if not snap.path.is_file():
        snap.log(f"resume: no snapshot at {snap.path}; starting from the beginning")
        return None
    try:
        state = torch.load(snap.path, map_location="cpu", weights_only=True)  # no code runs, whoever wrote the file
    except Exception as e:  # damaged, or not a snapshot of ours: start afresh
        snap.log(f"resume: snapshot {snap.path} is unreadable ({type(e).__name__}); starting from the beginning")
        return None
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT or state.get("key") != key:
        snap.log(f"resume: snapshot {snap.path} belongs to another run (other settings, weights or data); starting from the beginning")
        return None
    snap.log(f"resume: continuing from step {state['step']} (epoch {state['epoch'] + 1}, batch {state['batch']})")
    return state


def train(
    model: nn.Module,
    train_set: TensorDataset,
    settings: TrainSettings,
    hooks: Sequence[object] = (),
    progress: Progress | None = None,
    snapshots: Snapshots | None = None,
) -> dict:
    """Train in place; returns {'steps', 'seconds', 'final_loss', 'train_accuracy'}.

    Under torchrun (WORLD_SIZE > 1) every rank shuffles with the same seed and takes its own
    slice of each epoch, gradients are averaged by DDP, so all ranks end with identical weights.
    With `snapshots`, the run can be killed at any moment and continued (see `Snapshots`).
    """
    seed_everything(settings.seed)
    device = pick_device(settings.device)
    model.to(device).train()
    distributed = _init_distributed(device)
    rank, world = distributed_env()
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    x_all, y_all = train_set.tensors
    per_rank = len(x_all) // world
    steps_per_epoch = max(math.ceil(per_rank / settings.batch_size), 1)
    total = steps_per_epoch * settings.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(params, settings)
    sched = _make_schedule(opt, settings, total)
    gen = torch.Generator().manual_seed(settings.seed)
    key = _run_key(model, train_set, settings, snapshots.key) if snapshots else ""
    resumed = _load_snapshot(snapshots, key) if snapshots and snapshots.resume else None
    first_epoch, first_batch, saved_perm = 0, 0, None
    step, t0, loss_val, correct, seen, loss_sum = 0, time.perf_counter(), float("nan"), 0, 0, 0.0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        if sched is not None:
            sched.load_state_dict(resumed["scheduler"])
        gen.set_state(resumed["generator"])
        _set_rng_states(resumed["rng"])
        for h, hs in zip(hooks, resumed["hooks"]):
            if hs is not None:
                h.load_run_state(hs)
        first_epoch, first_batch, saved_perm, step = resumed["epoch"], resumed["batch"], resumed["perm"], resumed["step"]
        loss_val, correct, seen, loss_sum = resumed["running"]

    def snapshot(epoch: int, batch: int, perm) -> None:
        if rank != 0:
            return
        _save_snapshot(snapshots, {
            "format": SNAPSHOT_FORMAT, "key": key, "epoch": epoch, "batch": batch, "step": step, "perm": perm,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
            "generator": gen.get_state(), "rng": _rng_states(), "running": (loss_val, correct, seen, loss_sum),
            "hooks": [h.run_state() if hasattr(h, "run_state") else None for h in hooks],
        })

    if progress:
        progress({"kind": "start", "total": total, "epochs": settings.epochs, "done": step})
    for epoch in range(first_epoch, settings.epochs):
        if epoch == first_epoch and saved_perm is not None:
            perm = saved_perm
        else:
            perm = torch.randperm(len(x_all), generator=gen)[: per_rank * world]
            correct, seen, loss_sum = 0, 0, 0.0
        mine = perm[rank::world] if world > 1 else perm
        for b in range(first_batch if epoch == first_epoch else 0, steps_per_epoch):
            idx = mine[b * settings.batch_size : (b + 1) * settings.batch_size]
            if len(idx) == 0:
                continue
            x, y = x_all[idx], y_all[idx]
            if settings.augment:
                x = _augment(x, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for h in hooks:
                if hasattr(h, "on_step"):
                    h.on_step(step, total)
            with _autocast(device):
                out = net(x)
                loss = F.cross_entropy(out.float(), y)
                for h in hooks:
                    if hasattr(h, "penalty"):
                        loss = loss + h.penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            loss_val = loss.item()
            loss_sum += loss_val * len(idx)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(idx)
            if progress:
                progress({"kind": "step", "step": step, "epoch": epoch + 1, "loss": loss_val, "accuracy": 100.0 * correct / seen})
            if snapshots and snapshots.every and step % snapshots.every == 0 and b + 1 < steps_per_epoch:
                snapshot(epoch, b + 1, perm)
        if progress:
            progress({"kind": "epoch", "epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "accuracy": 100.0 * correct / max(seen, 1)})
        if snapshots and snapshots.every:
            snapshot(epoch + 1, 0, None)
    for h in hooks:
        if hasattr(h, "on_end"):
            h.on_end()
    extra = {}
    if distributed:
        digests = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        extra["rank_digests"] = digests
    return {
        **extra,
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 3),
        "final_loss": loss_val,
        "train_accuracy": 100.0 * correct / max(seen, 1),
        "world_size": world,
    }
