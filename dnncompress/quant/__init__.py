"""Quantization schemes: one file each, registered by name in SCHEMES."""
from . import asym, codebook, fourval, ternary  # noqa: F401  (registration side effects)
from .apply import quantization_summary, quantize
from .base import SCHEMES, Quantizer, make_quantizer, quantizer_from_state

__all__ = ["SCHEMES", "Quantizer", "make_quantizer", "quantizer_from_state", "quantize", "quantization_summary"]
