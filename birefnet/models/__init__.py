"""Segmentation networks. They know nothing of data, losses or configuration files."""

from birefnet.models.birefnet import BiRefNet
from birefnet.models.checkpoint import load_model, save_model
from birefnet.models.outputs import SegmentationOutput

__all__ = ["BiRefNet", "SegmentationOutput", "load_model", "save_model"]
