"""The model classes a checkpoint can name, by class name. A leaf: model modules register themselves here."""

from __future__ import annotations

from torch import nn

__all__ = ["MODEL_REGISTRY", "register_model"]

#: ``{"BiRefNet": BiRefNet, "U2Net": U2Net, ...}``, filled as the model modules are imported.
MODEL_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` loadable by name from a checkpoint's model description."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls
