"""Video data for the harness: Something-Something frame folders, Kinetics-400 / Diving48 video
files and the synthetic temporal benchmark, with TSN sampling and the paper's test protocols.

    cfg = DataConfig(**data_section)
    check_data(cfg, num_classes=174)  # once, up front: lists, folders, frame counts, classes
    train_ds, val_ds = build_datasets(cfg, num_frames=8, seed=0)
    clip, label = train_ds[i]    # (T, 3, S, S) uint8, resized and cropped
    views, label = val_ds[i]     # (V, T, 3, S, S) uint8, V = test_clips * test_crops
    x = transforms.normalise(clip.float(), cfg.normalize)   # the model's input (harness.train.model_input)
"""
from .config import DataConfig, DataError
from .datasets import ClipDataset, build_datasets, check_data

__all__ = ["DataConfig", "DataError", "build_datasets", "check_data", "ClipDataset"]
