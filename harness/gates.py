"""Per-layer histograms of GSF's tanh gate values, recorded during evaluation (the paper's Fig. 8).

Every GSF with learned gating passes its gate planes (N, T, 2, H, W) through a child
``gate_probe`` (an ``nn.Identity``) only while that probe has a forward hook, so recording costs
nothing when off and adds no state-dict keys. ``GateRecorder`` hooks every probe of a model:

    with GateRecorder(model) as gates:
        model(clips)
    gates.summary()   # {"edges": [...], "layers": [{"name", "counts", "mean", "std", "negative"}, ...]}

Layers are listed in the order the model defines them (bottom to top of the network).
Negative gate values make GSF difference neighbouring frames, positive ones average them
(section 3.1 of the paper).
"""
from __future__ import annotations

import torch
from torch import nn

BINS = 40


class _Layer:
    def __init__(self, name: str, bins: int):
        self.name = name
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.n = 0
        self.total = self.squares = self.negative = 0.0

    def add(self, gate: torch.Tensor, bins: int) -> None:
        g = gate.detach().float()
        self.counts += torch.histc(g, bins=bins, min=-1.0, max=1.0).double().cpu()
        self.n += g.numel()
        self.total += g.sum().item()
        self.squares += (g * g).sum().item()
        self.negative += (g < 0).sum().item()

    def summary(self) -> dict:
        mean = self.total / self.n if self.n else float("nan")
        var = max(0.0, self.squares / self.n - mean * mean) if self.n else float("nan")
        return {"name": self.name, "counts": self.counts.tolist(), "values": self.n, "mean": mean,
                "std": var ** 0.5, "negative": self.negative / self.n if self.n else float("nan")}


class GateRecorder:
    """Forward hooks on every ``gate_probe`` of ``model``; a no-op for models without one."""

    def __init__(self, model: nn.Module, bins: int = BINS):
        self.bins = bins
        self.probes = [(name.removesuffix(".gate_probe"), m) for name, m in model.named_modules()
                       if name.endswith("gate_probe")]
        self.layers = [_Layer(name, bins) for name, _ in self.probes]
        self._handles: list = []

    def __enter__(self) -> "GateRecorder":
        for layer, (_, probe) in zip(self.layers, self.probes):
            self._handles.append(probe.register_forward_hook(
                lambda module, args, output, layer=layer: layer.add(args[0], self.bins)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def summary(self) -> dict:
        edges = torch.linspace(-1.0, 1.0, self.bins + 1).tolist()
        return {"edges": edges, "layers": [layer.summary() for layer in self.layers if layer.n]}


def merge(summaries: list[dict]) -> dict:
    """One ``GateRecorder.summary`` of several (the data-parallel workers' shares of the
    validation set): counts and value counts add up, means, spreads and negative shares are
    weighted by each share's values."""
    layers: dict[str, list[dict]] = {}
    for summary in summaries:
        for layer in summary["layers"]:
            layers.setdefault(layer["name"], []).append(layer)
    out = []
    for name, parts in layers.items():
        n = sum(p["values"] for p in parts)
        mean = sum(p["mean"] * p["values"] for p in parts) / n
        squares = sum((p["std"] ** 2 + p["mean"] ** 2) * p["values"] for p in parts) / n
        out.append({"name": name, "counts": [sum(c) for c in zip(*(p["counts"] for p in parts))], "values": n,
                    "mean": mean, "std": max(0.0, squares - mean * mean) ** 0.5,
                    "negative": sum(p["negative"] * p["values"] for p in parts) / n})
    return {"edges": summaries[0]["edges"], "layers": out}
