"""The single output structure every segmentation model in this package returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SegmentationOutput"]


@dataclass
class SegmentationOutput:
    """Logits of a dichotomous segmentation model, in train and eval mode alike.

    Attributes:
        logits: final map, ``(B, 1, H, W)`` at input resolution, before the sigmoid.
        side_logits: deep-supervision maps (coarse to fine), each ``(B, 1, h, w)`` at its own resolution;
            empty when the model computes none (BiRefNet computes them in training only, as the reference).
        gradient_preds: outward-reference predictions per decoder stage (coarse to fine), training only.
        gradient_targets: the matching targets at input resolution (Laplacian of the image times the
            stage's side logits; gradients flow through them, as in the reference).
        class_logits: auxiliary classification logits ``(B, num_classes)`` when that head exists.
        features: intermediate decoder features (IS-Net's feature synchronisation), finest first.
    """

    logits: torch.Tensor
    side_logits: list[torch.Tensor] = field(default_factory=list)
    gradient_preds: list[torch.Tensor] = field(default_factory=list)
    gradient_targets: list[torch.Tensor] = field(default_factory=list)
    class_logits: torch.Tensor | None = None
    features: list[torch.Tensor] = field(default_factory=list)

    @property
    def all_logits(self) -> list[torch.Tensor]:
        """Side maps followed by the final map: the list the pixel loss supervises."""
        return [*self.side_logits, self.logits]
