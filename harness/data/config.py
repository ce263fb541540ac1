"""The ``data`` section of a spec: one typed, validated model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .synthetic import MAX_CLASSES, Nuisance

# Frame file names (1-based) per dataset, as the authors' release and ``harness.prepare`` write them.
FRAME_TEMPLATES = {"something-v1": "{:05d}.jpg", "something-v2": "{:06d}.jpg",
                   "kinetics400": "img_{:05d}.jpg", "diving48": "img_{:05d}.jpg"}
# What a real dataset holds unless data.media says otherwise: the official downloads' form.
DEFAULT_MEDIA = {"something-v1": "frames", "something-v2": "frames", "kinetics400": "videos", "diving48": "videos"}
# Datasets whose classes name left/right: a horizontal flip needs a label map.
DIRECTIONAL = ("something-v1", "something-v2")


_T = TypeVar("_T")
_Lax = Annotated[_T, Field(strict=False)]  # a str is a Path; JSON's lists and str keys are tuples and ints


class DataError(ValueError):
    """Bad data input: the message names the file or folder and what is wrong with it."""


class DataConfig(BaseModel):
    """The ``data`` section. Keys that only apply to the other kind of dataset (real/synthetic)
    are ignored, so a profile can switch ``dataset`` without unsetting the base's keys.

    Any dataset:
      dataset        "synthetic" (default, no files) | "something-v1" | "something-v2" |
                     "kinetics400" | "diving48"
      input_size     crop fed to the model (default: 224; synthetic: frame_size)
      scale_size     short side the test frames are resized to before cropping
                     (default: input_size * 256 / 224; synthetic: input_size, the whole frame)
      protocol       "efficiency": 1 clip x centre crop | "accuracy": 2 clips x 3 crops
                     (10 x 3 for kinetics400); test_clips / test_crops (1 or 3) override it.
                     Synthetic frames are square and scale_size defaults to input_size, so
                     its 3 crops coincide unless scale_size > input_size
      multiscale     train-time TSN multi-scale crop, scales 1, .875, .75, .66
                     (default: on for real datasets, off for synthetic: the actor could be cut out)
      flip           train-time horizontal flip (default off). Something-Something has
                     left/right classes, so it needs flip_label_map; synthetic uses its own map
      flip_label_map label pairs swapped by a flip: {a: b}, [[a, b], ...], a JSON file of either,
                     or "auto" (pair category names that differ only by left <-> right)
      workers        DataLoader worker processes (default: the trial's CPUs, --cpus-per-trial,
                     minus one for the training process; 0 loads in the training process)
      normalize      "imagenet" (default): RGB / 255, ImageNet mean and std | "caffe_bgr": BGR
                     on the 0-255 scale minus (104, 117, 128), std 1 — what BN-Inception
                     (Caffe-converted) weights and the authors' released BN-Inception and
                     Inception-v3 expect (gsf.release.RELEASED gives each released backbone's)

    Real datasets (required: root, train_list, val_list, categories; a relative root is taken
    from the directory the sweep command runs in, other relative paths and the folders/videos
    named in the lists from root):
      media                   "frames" (a folder of JPEGs per sample) | "videos" (one file per sample);
                              default: frames for Something-Something, videos for Kinetics and Diving48
                              (python -m harness.prepare writes frames for all four unless --keep-videos)
      train_list / val_list   frames: "folder num_frames label" lines; videos: "path label" lines
      categories              one class name per line; its line count is num_classes
      frame_template          frame file names inside a folder, 1-based (default {:05d}.jpg for V1,
                              {:06d}.jpg for V2, img_{:05d}.jpg for Kinetics and Diving48)
      decode                  "cpu" (default) | "cuda": frame folders' JPEGs decoded with nvjpeg on the
                              trial's GPU, in the training process (data.workers: 0, its default then;
                              a trial without a GPU fails when its datasets are built). Frames only

    Synthetic (see docs/synthetic.md; the defaults fit the CPU smoke budget):
      num_classes    even, <= 12: the first num_classes/2 time-reversed pairs (default 12)
      train_size     clips per training epoch (default 4000); val_size (default 500)
      frame_size     rendered frame side in pixels (default 40)
      distractors, clutter, occlusion, noise, jitter   scene nuisances (see Nuisance;
                     defaults 2, 3, 0.3, 6.0, 1.0)
      seed           which clips: train clip i is rendered from (seed, 0, i), val from (seed, 1, i)
    """

    # strict: "8" is not a count and true is not 1; paths and label maps also come back from JSON
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    dataset: Literal["synthetic", "something-v1", "something-v2", "kinetics400", "diving48"] = "synthetic"
    input_size: int | None = Field(None, ge=16, le=1024, description="crop fed to the model, pixels")
    scale_size: int | None = Field(None, ge=16, le=2048, description="short side test frames are resized to")
    protocol: Literal["efficiency", "accuracy"] = "efficiency"
    test_clips: int | None = Field(None, ge=1, le=100, description="clips per test video (overrides protocol)")
    test_crops: Literal[1, 3] | None = None
    multiscale: bool | None = None
    flip: bool = False
    flip_label_map: Union[_Lax[dict[int, int]], _Lax[list[tuple[int, int]]], str, None] = None
    workers: int | None = Field(None, ge=0, le=256, description=(
        "DataLoader worker processes; default (None): the trial's CPUs (--cpus-per-trial) minus one"))
    normalize: Literal["imagenet", "caffe_bgr"] = Field(
        "imagenet", description='input normalisation: "imagenet" (RGB / 255, ImageNet mean/std) or "caffe_bgr" '
        "(BGR 0-255 minus (104, 117, 128), std 1)")

    root: _Lax[Path] | None = Field(None, description=(
        "the dataset's folder; relative: to the directory the sweep command runs in"))
    train_list: _Lax[Path] | None = Field(None, description="training list file; relative: to root")
    val_list: _Lax[Path] | None = Field(None, description="validation list file; relative: to root")
    categories: _Lax[Path] | None = Field(None, description="class names, one a line; relative: to root")
    media: Literal["frames", "videos"] | None = Field(None, description=(
        "frames: a folder of JPEGs per sample; videos: one video file per sample; default (None): "
        "frames for something-v1/v2, videos for kinetics400/diving48"))
    frame_template: str | None = Field(None, description=(
        "frame file names inside a folder, 1-based (default: the dataset's, FRAME_TEMPLATES)"))
    decode: Literal["cpu", "cuda"] = Field("cpu", description=(
        'where frame folders\' JPEGs are decoded: "cpu" (libjpeg-turbo in the loader workers) or "cuda" '
        "(nvjpeg on the trial's GPU, in the training process: data.workers must be 0, its default then); "
        "frame folders only"))

    num_classes: int = Field(12, ge=2, le=MAX_CLASSES, description="synthetic classes (even)")
    train_size: int = Field(4000, ge=1, le=10_000_000, description="synthetic clips per training epoch")
    val_size: int = Field(500, ge=1, le=1_000_000, description="synthetic validation clips")
    frame_size: int = Field(40, ge=16, le=512, description="synthetic frame side, pixels")
    distractors: int = Field(Nuisance.distractors, ge=0, le=32, description="synthetic moving distractors")
    clutter: int = Field(Nuisance.clutter, ge=0, le=64, description="synthetic static background shapes")
    occlusion: float = Field(Nuisance.occlusion, ge=0, le=1)
    noise: float = Field(Nuisance.noise, ge=0, le=100)
    jitter: float = Field(Nuisance.jitter, ge=0, le=8)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="which synthetic clips")

    @model_validator(mode="before")
    @classmethod
    def _cuda_decode_loads_in_process(cls, data):
        # CUDA cannot start in forked loader workers, so nvjpeg decodes where the model trains.
        if (isinstance(data, dict) and data.get("decode") == "cuda" and data.get("workers") is None
                and data.get("dataset", "synthetic") != "synthetic"):
            data = {**data, "workers": 0}
        return data

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.synthetic:
            if self.num_classes % 2:
                raise ValueError(f"num_classes must be even (classes come in time-reversed pairs), "
                                 f"got {self.num_classes}")
            if self.flip_label_map is not None:
                raise ValueError("flip_label_map does not apply to the synthetic dataset (it mirrors its own classes)")
            return self
        for key in ("root", "train_list", "val_list", "categories"):
            if getattr(self, key) is None:
                raise ValueError(f"{key} is required for dataset {self.dataset!r}")
        if self.decode == "cuda":
            if not self.frames:
                raise ValueError(f"data.decode: cuda decodes JPEG frame folders, but {self.dataset} reads videos here "
                                 "(data.media: videos), which decode on the CPU: set data.decode: cpu")
            if self.workers:
                raise ValueError(f"data.decode: cuda decodes in the training process (CUDA does not start in "
                                 f"forked loader workers), so data.workers must be 0, got {self.workers}")
        return self

    @property
    def synthetic(self) -> bool:
        return self.dataset == "synthetic"

    @property
    def nuisance(self) -> Nuisance:
        return Nuisance(self.distractors, self.clutter, self.occlusion, self.noise, self.jitter)

    @property
    def frames(self) -> bool:
        """Samples are frame folders (else video files)."""
        return (self.media or DEFAULT_MEDIA.get(self.dataset)) == "frames"

    @property
    def template(self) -> str:
        return self.frame_template or FRAME_TEMPLATES.get(self.dataset, "{:05d}.jpg")

    @property
    def crop_size(self) -> int:
        if self.input_size is not None:
            return self.input_size
        return self.frame_size if self.synthetic else 224

    @property
    def resize_to(self) -> int:
        if self.scale_size is not None:
            return self.scale_size
        return self.crop_size if self.synthetic else self.crop_size * 256 // 224

    @property
    def views(self) -> tuple[int, int]:
        """(clips, crops) per test video."""
        clips, crops = (1, 1) if self.protocol == "efficiency" else (10 if self.dataset == "kinetics400" else 2, 3)
        return self.test_clips or clips, self.test_crops or crops

    @property
    def use_multiscale(self) -> bool:
        return (not self.synthetic) if self.multiscale is None else self.multiscale

    def resolve(self, path: Path) -> Path:
        """A path from the config or a list, relative to root."""
        path = Path(path).expanduser()
        return path if path.is_absolute() or self.root is None else Path(self.root).expanduser() / path
