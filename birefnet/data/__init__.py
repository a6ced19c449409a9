"""DIS-layout datasets, the reference augmentation pipeline and the LightningDataModule."""

from birefnet.data.datamodule import DISDataModule
from birefnet.data.dataset import DatasetValidationError, DISDataset

__all__ = ["DISDataModule", "DISDataset", "DatasetValidationError"]
