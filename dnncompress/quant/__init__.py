"""Quantization schemes: one file each, registered by name in SCHEMES. Pure tensor math: applying
them to a model is `dnncompress.quantize_model`."""
from . import asym, codebook, fourval, pq, ternary  # noqa: F401  (registration side effects)
from .base import SCHEMES, Quantizer, ScalarQuantizer, Storage, make_quantizer, quantizer_from_state, quantizer_from_storage

__all__ = ["SCHEMES", "Quantizer", "ScalarQuantizer", "Storage", "make_quantizer", "quantizer_from_state", "quantizer_from_storage"]
