"""Gate-Shift-Fuse and friends: plain PyTorch temporal modules, backbones and the TSN classifier."""
from .model import BACKBONES, TEMPORAL_MODULES, TSN, build_model
from .modules import GSF, SpatioTemporalShift, TemporalShift

__all__ = ["GSF", "TemporalShift", "SpatioTemporalShift", "TSN", "build_model", "BACKBONES", "TEMPORAL_MODULES"]
