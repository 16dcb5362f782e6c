"""Quantization schemes: one file each, registered by name in SCHEMES."""
from . import asym, codebook, fourval, ternary  # noqa: F401  (registration side effects)
from .base import SCHEMES, Quantizer, make_quantizer, quantizer_from_state
from .apply import quantize, quantization_summary

__all__ = ["SCHEMES", "Quantizer", "make_quantizer", "quantizer_from_state", "quantize", "quantization_summary"]
