"""Stage registry; importing this package registers every built-in stage."""
from .base import STAGES, Context, Stage, StageOutput, execute, register_stage  # noqa: F401
from . import joint, pack, prune, quantize, training  # noqa: F401,E402  (registration side effects)

__all__ = ["STAGES", "Context", "Stage", "StageOutput", "execute", "register_stage"]
