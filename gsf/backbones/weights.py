"""ImageNet initialisation from a local file: never a download at run time.

``read_state_dict`` reads any of the files the backbones take (a bare state dict, one wrapped under
"state_dict"/"model", DataParallel's ``module.`` prefixes, ``.safetensors``); ``fit_state_dict``
checks it key for key against a model, so that a file that does not fit is one error naming the
file and the keys, never a half-loaded backbone.
"""
from __future__ import annotations

import os
import re

import torch
from torch import nn


def read_state_dict(path: str | os.PathLike, what: str = "pretrained weights") -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` held in ``path``, read with ``weights_only=True`` (a file never runs code).

    Unwraps "state_dict"/"model" and strips ``module.``; a file that is missing or not a state dict
    is an error naming it (FileNotFoundError / ValueError), not a pickle traceback.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) can read "
                         f"(truncated, not a PyTorch file, or holding more than tensors): {_reason(e)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict (a dict of tensors, possibly under 'state_dict' or 'model')")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _reason(error: Exception) -> str:
    """The informative sentence of torch.load's error (its weights_only advice would mislead here)."""
    text = str(error).strip()
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.DOTALL)
    text = unpickler.group(1) if unpickler else text
    return text.split(". ")[0].splitlines()[0].rstrip(".") if text else type(error).__name__


def fit_state_dict(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path, what: str,
                   shown=lambda keys: keys) -> dict[str, torch.Tensor]:
    """``state`` (already in ``own``'s key names) checked against a model's state dict ``own``.

    Every key of ``own`` must be given and nothing else. BatchNorm's ``num_batches_tracked`` may be
    absent: older checkpoints (Caffe conversions, early torchvision files) predate it, and it only
    matters with momentum=None. A tensor of shape ``(1, *shape)`` where the model has ``shape`` is
    squeezed: Caffe conversions store BatchNorm vectors as (1, C) (the authors' release squeezes
    them too). ``shown`` turns our key names back into the file's for the message.
    """
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    if missing or unexpected:
        listed = [f"{len(keys)} {kind} keys (e.g. {shown(keys[:4])})"
                  for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"{path} does not match {what}: {', '.join(listed)}")
    fitted = {}
    for key, value in state.items():
        want = tuple(own[key].shape)
        if tuple(value.shape) != want and tuple(value.shape) == (1, *want):
            value = value.squeeze(0)
        fitted[key] = value
    wrong = sorted(k for k, v in fitted.items() if tuple(v.shape) != tuple(own[k].shape))
    if wrong:
        k = wrong[0]
        raise ValueError(f"{path} does not match {what}: {len(wrong)} tensors have another shape (width_mult != 1?), "
                         f"e.g. {shown([k])[0]}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    return fitted


def load_state_dict(model: nn.Module, path: str, ignore_prefixes: tuple[str, ...] = (), key_map=None) -> None:
    """Load ``path`` (a state dict, or a checkpoint holding one under "state_dict"/"model"; a
    ``.safetensors`` file is read as one) into ``model``.

    Classifier keys (``ignore_prefixes``) are dropped; any other mismatch is an error naming the
    file and a few of the keys, since a silently half-loaded backbone ruins an ablation.
    """
    state = read_state_dict(path)
    if key_map is not None:
        state = {key_map(k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    state = fit_state_dict(own, state, path, "the backbone")
    model.load_state_dict(state, strict=False)
