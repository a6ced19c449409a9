"""Segmentation networks. They know nothing of data, losses or configuration files."""

from birefnet.models.birefnet import BiRefNet
from birefnet.models.checkpoint import load_model, push_to_hub, save_model, save_pretrained
from birefnet.models.outputs import SegmentationOutput
from birefnet.models.u2net import ISNet, ISNetGTEncoder, U2Net
from birefnet.models.zoo import MODEL_ZOO
from birefnet.preprocessing import PreprocessingCard

__all__ = [
    "MODEL_ZOO",
    "BiRefNet",
    "ISNet",
    "ISNetGTEncoder",
    "PreprocessingCard",
    "SegmentationOutput",
    "U2Net",
    "load_model",
    "push_to_hub",
    "save_model",
    "save_pretrained",
]
