"""DIS / SOD metrics with PySODMetrics semantics."""

from birefnet.metrics.dis import DISMetrics

__all__ = ["DISMetrics"]
