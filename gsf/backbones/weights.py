"""ImageNet initialisation from a local file: never a download at run time."""
from __future__ import annotations

import os

import torch
from torch import nn


def load_state_dict(model: nn.Module, path: str, ignore_prefixes: tuple[str, ...] = (), key_map=None) -> None:
    """Load ``path`` (a state dict, or a checkpoint holding one under "state_dict"/"model"; a
    ``.safetensors`` file is read as one) into ``model``.

    Classifier keys (``ignore_prefixes``) are dropped; any other mismatch is an error naming the
    file and a few of the keys, since a silently half-loaded backbone ruins an ablation.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if key_map is not None:
        state = {key_map(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    # BatchNorm's num_batches_tracked is absent from older checkpoints (Caffe conversions, early
    # torchvision files) and only matters with momentum=None: not worth rejecting a file over.
    own = {k for k in model.state_dict() if not k.startswith(ignore_prefixes)}
    missing = sorted(k for k in own - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match the backbone — missing {len(missing)} keys {missing[:4]}, "
            f"unexpected {len(unexpected)} keys {unexpected[:4]}"
        )
    model.load_state_dict(state, strict=False)
