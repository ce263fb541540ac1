"""Gate-Shift-Fuse and friends: plain PyTorch temporal modules, backbones and the TSN classifier."""
from .build import build_model
from .model import TSN, ModelConfig
from .modules import GSF, SpatioTemporalShift, TemporalShift
from .registry import list_backbones, list_modules, register_backbone, register_module

__all__ = ["GSF", "TemporalShift", "SpatioTemporalShift", "TSN", "ModelConfig", "build_model",
           "register_module", "register_backbone", "list_modules", "list_backbones"]
