"""The paths a GPU run takes, exercised with CPU stand-ins, for every temporal module (gsf, gsm,
tsm, stsm) in ResNet-50 and BNInception with both implementations:

- autocast: bf16 on CPU stands in for fp16 on CUDA (same autocast machinery, same dtype rules);
  eval and a train step, within tolerance of fp32, finite gradients;
- ``model.to(memory_format=torch.channels_last)``: converts, same output, same gradients;
- ``.half()`` / ``.bfloat16()`` models run and stay near fp32;
- ``torch.compile(model)``: eval and a train step agree with eager.

and GSF inserted by pattern into timm CNNs (ResNet-D, ConvNeXt, RegNet) on the same paths.

The models are thin (``width_mult``) and the clips small: what is tested is that each path runs
and computes the same thing, not speed. Compiling: inductor turns a whole thin ResNet-50 into
~40 C++ kernels in ~60 s (eval) and ~170 s (train step) on 2 cores, so ``make test`` compiles
the 16 whole models with the "eager" backend for eval (Dynamo's capture and graph breaks) and
"aot_eager" for the train step (also AOTAutograd's forward/backward graphs, as inductor gets
them), and every module alone with inductor (its own kernels: where the original InductorError
came from); ``make test-slow`` runs the 16 whole models' eval under inductor, and GSF's train
step.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from gsf import build_model
from gsf.modules import GSF, SpatioTemporalShift, TemporalShift

# width_mult, input size: the last stage at 2x2, so that train-mode BatchNorm there normalises
# over 2 * FRAMES * 4 values per channel (over fewer, bf16 rounding decides the train-mode output
# of a randomly initialised network, TSN's as much as GSF's).
BACKBONES = {"resnet50": (0.125, 64), "bninception": (0.25, 64)}
MODULES = ["gsf", "gsm", "tsm", "stsm"]
IMPLS = ["reference", "fast"]
CASES = [pytest.param(b, m, i, id=f"{b}-{m}-{i}") for b in BACKBONES for m in MODULES for i in IMPLS]
# Whole compiled models take 4-21 s each on 2 cores: make test compiles GSF on ResNet-50 (both
# implementations); make test-slow (run by .ci/run) every other case.
COMPILED_CASES = [pytest.param(b, m, i, id=f"{b}-{m}-{i}",
                               marks=() if (b, m) == ("resnet50", "gsf") else pytest.mark.slow)
                  for b in BACKBONES for m in MODULES for i in IMPLS]
FRAMES = 2
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread


def build(backbone: str, module: str, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(backbone=backbone, module=module, num_classes=5, num_frames=FRAMES,
                      width_mult=BACKBONES[backbone][0], dropout=0.0, module_options={"impl": impl})
    assert any(getattr(m, "impl", None) == impl for m in net.modules())
    return net


def clips(backbone: str, n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    size = BACKBONES[backbone][1]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FRAMES, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)


def train_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, autocast=nullcontext()):
    """Loss and parameter gradients of one cross-entropy step in train mode."""
    model.train()
    with autocast:
        loss = F.cross_entropy(model(x).float(), labels)
    return loss.detach(), torch.autograd.grad(loss, [p for p in model.parameters()])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, autocast=nullcontext()) -> torch.Tensor:
    model.eval()
    with autocast:
        return model(x).float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def flat(grads) -> torch.Tensor:
    return torch.cat([g.float().flatten() for g in grads])


def assert_same_step(got, expected, rtol: float):
    """Same loss and gradients (zero-in-theory gradients, such as a conv bias before a train-mode
    BatchNorm, are compared on the scale of all gradients)."""
    (loss, grads), (ref_loss, ref_grads) = got, expected
    assert abs(loss.item() - ref_loss.item()) <= rtol * abs(ref_loss.item())
    scale = float(flat(ref_grads).abs().max())
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("backbone,module,impl", CASES)
def test_autocast_bf16_eval_and_train(backbone, module, impl):
    net = build(backbone, module, impl)
    x, labels = clips(backbone)
    assert rel(evaluate(net, x, BF16), evaluate(net, x)) < 0.05
    fp32_loss, _ = train_step(copy.deepcopy(net), x, labels)
    loss, grads = train_step(net, x, labels, BF16)
    assert abs(loss.item() - fp32_loss.item()) < 0.05 * fp32_loss.item()
    # Gradients of a randomly initialised network in train mode are too sensitive to rounding to
    # compare with fp32's; tests/test_modules.py compares each module's own (within 5%).
    assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)
    assert flat(grads).abs().sum() > 0


@pytest.mark.parametrize("backbone,module,impl", CASES)
def test_channels_last(backbone, module, impl):
    """Eval in fp32; the train step's gradients in float64, where summing in another order cannot
    be amplified into a visible difference (in fp32 a randomly initialised network in train mode
    turns 1e-7 into up to 60% on some gradients, with either implementation and with TSM too)."""
    net = build(backbone, module, impl)
    x, labels = clips(backbone)
    expected = evaluate(net, x)
    wide = copy.deepcopy(net).double()
    expected_step = train_step(copy.deepcopy(wide), x.double(), labels)
    for model in (net, wide):
        model.to(memory_format=torch.channels_last)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(evaluate(net, x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    loss, grads = train_step(net, x, labels)
    assert all(torch.isfinite(g).all() for g in grads)
    assert_same_step(train_step(wide, x.double(), labels), expected_step, rtol=1e-7)


@pytest.mark.parametrize("backbone,module,impl", CASES)
def test_half_and_bfloat16_models(backbone, module, impl):
    net = build(backbone, module, impl)
    x, _ = clips(backbone)
    expected = evaluate(net, x)
    for dtype, tol in ((torch.bfloat16, 0.05), (torch.float16, 0.01)):
        out = evaluate(copy.deepcopy(net).to(dtype), x.to(dtype))
        assert torch.isfinite(out).all() and rel(out, expected) < tol, dtype


@pytest.mark.parametrize("backbone,module,impl", COMPILED_CASES)
def test_compiled_model_agrees_with_eager(backbone, module, impl, backends=("eager", "aot_eager")):
    """Eval in fp32, then a train step in float64 (see test_channels_last): loss, gradients and
    BatchNorm statistics of ``torch.compile(model)`` against eager. ``backends``: for eval and
    for the train step ("eager": Dynamo's capture and graph breaks; "aot_eager": also
    AOTAutograd's forward/backward graphs; "inductor": also its kernels)."""
    torch._dynamo.reset()
    net = build(backbone, module, impl)
    x, labels = clips(backbone)
    expected = evaluate(net, x)
    torch.testing.assert_close(evaluate(torch.compile(net, backend=backends[0]), x), expected,
                               rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    if backends[1] is None:
        return
    net.double()
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend=backends[1])
    assert_same_step(train_step(compiled, x.double(), labels), train_step(eager, x.double(), labels), rtol=1e-7)
    for (name, a), b in zip(net.named_buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=name)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("backbone,module,impl", CASES)
def test_inductor_compiled_model_agrees_with_eager(backbone, module, impl):
    """Whole models under inductor: eval for all, the train step for GSF's readable
    implementation (what impl="auto" compiles); a train step took ~13 min on the shared 2 cores."""
    train = "inductor" if (module, impl) == ("gsf", "reference") else None
    test_compiled_model_agrees_with_eager(backbone, module, impl, backends=("inductor", train))


MODULE_AT = {  # one module as a backbone hosts it: (factory, channels, H, W)
    "gsf": (lambda impl: GSF(64, FRAMES, 0.25, impl=impl, inplace=True), 64, 6, 6),
    "gsf-release": (lambda impl: GSF(32, FRAMES, 1.0, layout="release", impl=impl), 32, 5, 7),
    "gsm": (lambda impl: GSF(32, FRAMES, 1.0, fusion="sum", impl=impl, inplace=True), 32, 6, 6),
    "tsm": (lambda impl: TemporalShift(32, FRAMES, impl=impl), 32, 6, 6),
    "stsm": (lambda impl: SpatioTemporalShift(32, FRAMES, impl=impl), 32, 6, 6),
}


@pytest.mark.slow  # inductor's C++ code generation: 20-77 s a case on 2 cores with a cold cache (make test-slow)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("module", list(MODULE_AT))
def test_inductor_compiled_module_agrees_with_eager(module, impl):
    """Each module alone under inductor, after a BatchNorm as in the backbones: eval and a train
    step (input and parameter gradients). The fast implementation runs eagerly between the
    compiled graphs (``torch.compiler.disable``)."""
    torch._dynamo.reset()
    factory, c, h, w = MODULE_AT[module]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(c), factory(impl), torch.nn.Conv2d(c, 4, 1))
    eager = copy.deepcopy(net)
    compiled = torch.compile(net)
    x = torch.randn(2 * FRAMES, c, h, w)
    expected = evaluate(eager, x)
    torch.testing.assert_close(evaluate(compiled, x), expected, rtol=1e-4, atol=1e-5)
    for model in (compiled, eager):
        model.train()
    leaf = x.clone().requires_grad_()
    got = torch.autograd.grad(compiled(leaf).square().sum(), [leaf, *net.parameters()])
    leaf = x.clone().requires_grad_()
    ref = torch.autograd.grad(eager(leaf).square().sum(), [leaf, *eager.parameters()])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    torch._dynamo.reset()


@pytest.mark.parametrize("h,w", [(1, 1), (1, 3), (4, 4)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("module", list(MODULE_AT))
def test_compiled_channels_last_module_agrees_with_eager(module, impl, h, w):
    """channels_last and torch.compile together (AOTAutograd's traced backward), in fp32 (oneDNN
    convolutions), on maps down to 1x1, where a channels_last tensor is also contiguous and the
    strides a kernel picks at run time may differ from those traced."""
    torch._dynamo.reset()
    factory, c, _, _ = MODULE_AT[module]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.BatchNorm2d(c), factory(impl))
    net.to(memory_format=torch.channels_last)
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(4 * FRAMES, c, h, w).contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(compiled(x).square().sum(), list(net.parameters()))
    ref = torch.autograd.grad(eager(x).square().sum(), list(eager.parameters()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    torch._dynamo.reset()


TIMM = ["timm/resnet18d", "timm/convnext_atto", "timm/regnetx_002"]


@pytest.mark.parametrize("backbone", TIMM)
def test_timm_backbone_with_gsf_on_the_gpu_paths(backbone):
    """A timm CNN with GSF inserted by pattern (#12) takes the same GPU paths: bf16 autocast eval
    and train step, channels_last, torch.compile (Dynamo and AOTAutograd) eval."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = build_model(backbone=backbone, module="gsf", num_classes=5, num_frames=FRAMES, dropout=0.0)
    assert any(isinstance(m, GSF) for m in net.modules())
    x, labels = torch.randn(2, FRAMES, 3, 64, 64), torch.tensor([1, 3])
    expected = evaluate(net, x)
    assert rel(evaluate(net, x, BF16), expected) < 0.05
    loss, grads = train_step(copy.deepcopy(net), x, labels, BF16)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads) and flat(grads).abs().sum() > 0
    wide = copy.deepcopy(net).to(memory_format=torch.channels_last)
    torch.testing.assert_close(evaluate(wide, x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    compiled = torch.compile(copy.deepcopy(net), backend="aot_eager")
    torch.testing.assert_close(evaluate(compiled, x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    torch._dynamo.reset()
