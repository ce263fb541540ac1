"""``build_model``: a model section (a ``ModelConfig``, or its fields as keywords) -> the TSN video classifier.

The one entry point for every model: from the backbone and module registries (``gsf.model``), or,
with ``release_checkpoint``, the authors' released model with its weights (``gsf.release``). It
sits above both because it uses both; ``gsf.release`` builds with ``gsf.model`` too, and
``gsf.model`` imports neither (docs/imports.md).
"""
from __future__ import annotations

from typing import Any

from .model import TSN, ModelConfig, build_tsn
from .release import build_released_model


def build_model(cfg: ModelConfig | None = None, /, **options: Any) -> TSN:
    """A TSN video classifier with ``module`` inserted into ``backbone``: ``cfg`` is a validated
    ``ModelConfig`` (a trial's ``model`` section), or ``options`` are its fields, validated here
    (e.g. ``build_model(backbone="resnet50", module="gsf", placement="conv3")``).

    ``placement`` and ``shift_ratio`` default to the backbone's registered values, the paper's
    final configuration for the built-in ones (ResNet-50: after conv3 on 25% of the channels;
    Inception: the 1x1 branch, 100%). ``release_checkpoint``: the released model in that file,
    its weights loaded (``gsf.release.build_released_model``).
    """
    if cfg is None:
        cfg = ModelConfig.model_validate(options)
    elif options:
        raise TypeError(f"build_model takes a ModelConfig or keyword options, not both (got {', '.join(options)})")
    if cfg.release_checkpoint is not None:
        return build_released_model(cfg.release_checkpoint,
                                    **{k: getattr(cfg, k) for k in ModelConfig.model_fields if k != "release_checkpoint"})
    return build_tsn(cfg)
