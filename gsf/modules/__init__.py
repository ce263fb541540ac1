"""Temporal modules that turn a 2D CNN into a video model.

Every module here maps frame features ``(N*T, C, H, W)`` to the same shape and never mixes
clips: frames of one clip are consecutive along the first axis (TSN layout). Each file starts
with the readable implementation; a fast CPU one sits beside it behind ``impl=`` (same
parameters and results, held together by the tests):

- ``gsf.py``: ``GSF``, the paper's equations (1)-(10); ``_gsf_fast.py`` the fast version.
- ``shift.py``: ``TemporalShift`` (TSM) and ``SpatioTemporalShift`` (STSM).
"""
from .gsf import GSF, processed_channels, release_order, release_processed_channels
from .shift import SpatioTemporalShift, TemporalShift

__all__ = ["GSF", "TemporalShift", "SpatioTemporalShift", "processed_channels", "release_order",
           "release_processed_channels"]
