"""Stage registry; importing this package registers every built-in stage."""
from . import joint, pack, prune, quantize, shrink, training  # noqa: F401  (registration side effects)
from .base import STAGES, Context, Stage, StageOutput, execute, register_stage

__all__ = ["STAGES", "Context", "Stage", "StageOutput", "execute", "register_stage"]
