"""BiRefNet for dichotomous image segmentation: models, data, losses, metrics and training."""

from birefnet.resolvers import PROJECT_ROOT, register_resolvers

__version__ = "0.1.0"
__all__ = ["PROJECT_ROOT", "__version__"]

register_resolvers()
