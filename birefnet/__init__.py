"""BiRefNet for dichotomous image segmentation: models, data, losses, metrics and training."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

#: The repository root (parent of this package), used by configs/paths as ${project_root:}.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
# arithmetic in configs, e.g. the reference LR rule ${eval:'1e-4 * (${data.batch_size} / 4) ** 0.5'}
OmegaConf.register_new_resolver("eval", eval, replace=True)
