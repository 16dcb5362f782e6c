"""Pruning: magnitude masks, sensitivity-driven automatic sparsity, AGP schedules, joint sparsity+bits."""
from .magnitude import apply_masks, magnitude_masks, mask_summary, prune
from .schedule import AGPHook, agp_sparsity

__all__ = ["AGPHook", "agp_sparsity", "apply_masks", "magnitude_masks", "mask_summary", "prune"]
