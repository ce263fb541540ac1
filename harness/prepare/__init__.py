"""From the official downloads to what the ``paper`` profiles read: ``python -m harness.prepare``.

    python -m harness.prepare something-v1 --source ~/datasets/something-v1   # -> data/something-v1/
    python -m harness.prepare weights bninception                             # -> data/weights/

One subcommand per source (``__main__``): ``sources`` reads the official annotation files,
``extract`` does the work (frames out of videos, in parallel, resumable, failures listed),
``weights`` converts the ImageNet files the authors' code starts from. Preparation is the only
step that may download anything; a sweep never does. The commands below are what a sweep prints
when a file the spec names is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

LISTS = {"frames": ("train_videofolder.txt", "val_videofolder.txt"), "videos": ("train_videos.txt", "val_videos.txt")}
CATEGORIES = "category.txt"
# What the official download is called, for the --source placeholder in a printed command.
DOWNLOADS = {"something-v1": "something-something-v1", "something-v2": "something-something-v2",
             "kinetics400": "kinetics400", "diving48": "Diving48"}
ANNOTATIONS = {"kinetics400": " --annotations TRAIN.csv VAL.csv",
               "diving48": " --annotations Diving48_V2_train.json Diving48_V2_test.json --vocab Diving48_vocab.json"}


def _out(path: Path, default: str) -> str:
    """`` --out PATH`` unless ``path`` is where the command writes by default (from this folder)."""
    return "" if Path(os.path.abspath(default)) == Path(os.path.abspath(path)) else f" --out {path}"


def data_command(dataset: str, root: Path, media: str = "frames") -> str:
    """The command that prepares ``dataset`` into ``root``."""
    keep = " --keep-videos" if media == "videos" else ""
    return (f"python -m harness.prepare {dataset} --source PATH/TO/{DOWNLOADS.get(dataset, dataset)}"
            f"{ANNOTATIONS.get(dataset, '')}{keep}{_out(root, f'data/{dataset}')}")


def weights_command(path: Path) -> str | None:
    """The command that writes the weights file ``path``, if it is one ``weights`` writes."""
    from harness.prepare.weights import DEFAULT_OUT, TIMM, name_of

    backbone = name_of(path)
    if backbone is None:
        return None
    out = _out(Path(path).parent, DEFAULT_OUT)
    if backbone.startswith(TIMM):  # timm's own file, which the user fetches: nothing here downloads it
        return f"python -m harness.prepare weights {backbone} --from PATH/TO/model.safetensors{out}"
    return f"python -m harness.prepare weights {backbone}{out}"
