"""Evaluate a checkpoint or prediction folders: ``python evaluate.py checkpoint=FILE`` (see configs/eval.yaml)."""

import hydra
from omegaconf import DictConfig

from birefnet.errors import exit_on_user_error
from birefnet.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
