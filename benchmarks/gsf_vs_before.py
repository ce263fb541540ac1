"""GSF's forward time against the single-file GSF of an earlier commit, side by side in one
process: same weights, same input, interleaved rounds (``gsf_speed.measure``), ratios to TSN.

    .venv/bin/python benchmarks/gsf_vs_before.py --commit 5c3fd36 --threads 2 --rounds 20

The earlier GSF is read with ``git show COMMIT:gsf/modules.py`` (before gsf/modules/ became a
package) and checked to give the same outputs as today's, so only the speed differs.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gsf_speed as B  # noqa: E402

from gsf import GSF  # noqa: E402


def earlier_gsf(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:gsf/modules.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / f"gsf_{commit}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GSF


def with_gsf(net, cls):
    """``net`` with every GSF replaced by ``cls`` holding the same weights (gate kernels reshaped)."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GSF):
                old = cls(child.channels, child.num_frames, child.shift_ratio, child.gating, child.fusion)
                state = child.state_dict()
                state["gate_weight"] = state["gate_weight"].view(old.gate_weight.shape)
                old.load_state_dict(state)
                setattr(parent, name, old)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", default="5c3fd36")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old_cls = earlier_gsf(args.commit)
    for backbone in ["resnet50", "bninception"]:
        fast = B.build(backbone, "gsf", 8, "fast")
        reference = copy.deepcopy(fast)
        for m in reference.modules():
            if isinstance(m, GSF):
                m.impl = "reference"
        models = {"TSN": B.build(backbone, "none", 8), f"GSF {args.commit}": with_gsf(fast, old_cls),
                  "GSF fast": fast, "GSF reference": reference}
        for m in models.values():
            m.eval()
        x = torch.randn(1, 8, 3, 224, 224)
        with torch.inference_mode():
            outs = {k: m(x) for k, m in models.items()}
        for k in ("GSF fast", "GSF reference"):
            torch.testing.assert_close(outs[k], outs[f"GSF {args.commit}"], rtol=1e-4, atol=1e-4)
        times, first = B.measure(models, lambda m: B.forward_step(m, x, nullcontext()),
                                 B.Timer(torch.device("cpu")), args.rounds, 2)
        print(f"{backbone}: {B.PAPER_SETUP[backbone]}; fp32; {args.rounds} rounds after 2 warm-up; "
              f"threads {torch.get_num_threads()}")
        B.report([(backbone, "cpu", "forward 1x8x3x224x224", times, first)])


if __name__ == "__main__":
    main()
