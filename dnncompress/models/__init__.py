"""Model zoo: importing the modules registers their architectures."""
from . import cifar_nets, lenet, resnet_cifar  # noqa: F401  (registration side effects)
from .zoo import ARCHS, build_model, default_input_shape, register_arch

__all__ = ["ARCHS", "build_model", "default_input_shape", "register_arch"]
