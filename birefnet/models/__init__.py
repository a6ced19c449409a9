"""Segmentation networks. They know nothing of data, losses or configuration files."""

from birefnet.models.birefnet import BiRefNet
from birefnet.models.checkpoint import load_model, save_model
from birefnet.models.outputs import SegmentationOutput
from birefnet.models.u2net import ISNet, ISNetGTEncoder, U2Net

__all__ = ["BiRefNet", "ISNet", "ISNetGTEncoder", "SegmentationOutput", "U2Net", "load_model", "save_model"]
