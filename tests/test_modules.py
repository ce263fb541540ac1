"""The temporal modules: GSF's fast implementation against its readable one (equations (1)-(10)),
the properties both must have, and the parameter-free shifts (TSM, STSM).

hypothesis is not installed in this environment, so the grids are plain parametrize.
Everything runs in float64 so "equal to the reference" can be checked tightly.
"""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from gsf.modules import GSF, SpatioTemporalShift, TemporalShift, processed_channels

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-11)
IMPLS = ["reference", "fast"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors, one torch thread


def make_gsf(channels=12, num_frames=4, shift_ratio=1.0, gating="learned", fusion="learned",
             layout="paper", train=True, seed=0, bn_scale="mixed", impl="fast", inplace=False):
    """A GSF in float64 with every parameter and BN statistic randomised (not the zero/one init)."""
    torch.manual_seed(seed)
    m = GSF(channels, num_frames, shift_ratio, gating, fusion, layout, inplace, impl).to(DT)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        if gating == "learned":
            bn = m.gate_norm
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            if bn_scale == "positive":
                bn.weight.abs_().add_(0.1)
            elif bn_scale == "mixed":  # negative and exactly-zero scales take the general eval path
                bn.weight[0] = 0.0
                bn.weight[1] = -abs(bn.weight[1].item()) - 0.1
    return m.train(train)


def reference_of(m: GSF) -> GSF:
    """The same module (weights, statistics, mode) running the readable implementation."""
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    return ref


def clip(n=2, t=4, c=12, h=5, w=6, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n * t, c, h, w, dtype=DT)


def grads_of(fn, module, x, grad_out):
    x = x.detach().requires_grad_()
    out = fn(x)
    params = [x] + list(module.parameters())
    return out, torch.autograd.grad(out, params, grad_out)


def assert_same_module_state(a: GSF, b: GSF):
    """Parameters and buffers (BatchNorm running statistics, batch counter) equal."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], **TOL, msg=k)


# --------------------------------------------------------------------------------------------
# The fast implementation against the readable one
# --------------------------------------------------------------------------------------------

CONFIGS = [
    (gating, fusion)
    for gating, fusion in itertools.product(["learned", 1, -1, 0], ["learned", "sum"])
]


@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["paper", "release"])
@pytest.mark.parametrize("shift_ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("gating,fusion", CONFIGS)
def test_fast_matches_reference(gating, fusion, shift_ratio, layout, train, inplace):
    """Outputs, input and parameter gradients, and BatchNorm running statistics, with autograd
    (the hand-written backward) and without (inference_mode: the workspace path, folded BN)."""
    fast = make_gsf(16, 4, shift_ratio, gating, fusion, layout, train, inplace=inplace)
    ref = reference_of(fast)
    x = clip(c=16)
    grad_out = torch.randn_like(x)
    out_ref, grads_ref = grads_of(ref, ref, x, grad_out)
    out, grads = grads_of(fast, fast, x, grad_out)
    torch.testing.assert_close(out, out_ref, **TOL)
    for name, a, b in zip(["x"] + [k for k, _ in fast.named_parameters()], grads, grads_ref):
        torch.testing.assert_close(a, b, **TOL, msg=f"gradient of {name}")
    assert_same_module_state(fast, ref)  # one update of the running statistics in train mode
    with torch.inference_mode():
        out_ref, out = ref(x.clone()), fast(x.clone())
    torch.testing.assert_close(out, out_ref, **TOL)
    assert_same_module_state(fast, ref)


@pytest.mark.parametrize("bn_scale", ["positive", "mixed"])
@pytest.mark.parametrize("shift_ratio,layout", [(0.25, "paper"), (1.0, "release"), (0.25, "release")])
def test_folded_batchnorm_matches_reference(shift_ratio, layout, bn_scale):
    """Eval mode without autograd folds BatchNorm + ReLU into the gate GEMM, with a special case
    for positive BN scales (the usual one) and a general one for negative and zero scales."""
    fast = make_gsf(16, 4, shift_ratio, layout=layout, train=False, bn_scale=bn_scale)
    x = clip(c=16)
    with torch.no_grad():
        ref = reference_of(fast)(x)
    with torch.inference_mode():
        out = fast(x)
    torch.testing.assert_close(out, ref, **TOL)


@pytest.mark.parametrize("n,t,h,w", [(1, 1, 3, 3), (2, 2, 1, 1), (1, 3, 1, 4), (3, 5, 2, 7)])
@pytest.mark.parametrize("grad", [True, False])
def test_odd_sizes_match_reference(n, t, h, w, grad):
    """One frame (everything shifts out), 1x1 maps (every spatial tap but the centre is padding)."""
    fast = make_gsf(6, t, 1.0, train=False)
    ref = reference_of(fast)
    x = clip(n, t, 6, h, w)
    if grad:
        grad_out = torch.randn_like(x)
        expected, ref_grads = grads_of(ref, ref, x, grad_out)
        out, got_grads = grads_of(fast, fast, x, grad_out)
        for a, b in zip(got_grads, ref_grads):
            torch.testing.assert_close(a, b, **TOL)
    else:
        with torch.no_grad():
            expected, out = ref(x), fast(x)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["paper", "release"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradcheck_small(train, layout, impl):
    """Finite differences: each implementation on its own."""
    m = make_gsf(8, 3, 0.5, layout=layout, train=train, impl=impl)
    x = clip(2, 3, 8, 3, 2).requires_grad_()
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("impl", ["auto"] + IMPLS)
def test_traced_module_matches_and_fvcore_counts_the_gate_conv(impl):
    """fvcore traces the module: the trace must compute GSF and count 27*C*T*H*W for the gate conv,
    2*C*T*H*W for its BatchNorm (eval) and 18*C*T for the fusion convs (C = processed channels),
    whichever implementation is traced ("auto" traces the readable one)."""
    n, t, c, h, w = 1, 4, 16, 5, 6
    m = make_gsf(c, t, 0.5, train=False, impl=impl)
    x = clip(n, t, c, h, w)
    traced = torch.jit.trace(m, x, check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), reference_of(m)(x), **TOL)
    fvcore = pytest.importorskip("fvcore.nn")
    analysis = fvcore.FlopCountAnalysis(m, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    p = m.processed
    assert analysis.total() == 27 * p * t * h * w + 2 * p * t * h * w + 18 * p * t * n
    assert ("bmm" in str(traced.graph)) == (impl == "fast")  # the fast GEMM, or the readable conv3d


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_autocast_low_precision(train, impl):
    """Under autocast (bf16 on CPU here; fp16 on CUDA takes the same code) activations arrive in
    low precision: forward and backward run, parameter gradients stay fp32 and near fp32's."""
    m = make_gsf(32, 4, 0.5, train=train, impl=impl).float()
    ref = copy.deepcopy(m)
    x = torch.randn(8, 32, 6, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(xa.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    ref(xb).square().sum().backward()
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(xa.grad, xb.grad) < 0.05
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32 and rel(p.grad, q.grad) < 0.05, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shift_ratio", [0.5, 1.0])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16-input", "fp32-input"])
def test_autocast_without_autograd(dtype, train, shift_ratio, impl):
    """Evaluation under autocast (every validation pass and Table 12 latency on a GPU): the
    no-autograd path runs its GEMM in the autocast dtype and stays near fp32."""
    m = make_gsf(32, 4, shift_ratio, train=train, bn_scale="positive", impl=impl).float()
    x = torch.randn(8, 32, 6, 6)
    with torch.no_grad():
        ref = copy.deepcopy(m)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x.to(dtype))
    assert y.dtype in (dtype, torch.bfloat16)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 0.02


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_channels_last_conversion(train, impl):
    """model.to(memory_format=torch.channels_last) converts every 4-D/5-D tensor: the module
    must survive it and give the same output on channels_last input."""
    m = make_gsf(16, 4, 0.5, train=train, impl=impl)
    x = clip(c=16)
    ref = copy.deepcopy(m)(x)
    m.to(memory_format=torch.channels_last)
    out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, **TOL)


def test_conv3d_layout_gate_weight_loads():
    """A state dict with the gate kernels in Conv3d layout (2, C/2, 3, 3, 3) loads unchanged."""
    m = make_gsf(16, 4, 0.5)
    state = m.state_dict()
    state["gate_weight"] = state["gate_weight"].view(2, 4, 3, 3, 3)
    other = make_gsf(16, 4, 0.5, seed=1)
    other.load_state_dict(state)
    assert torch.equal(other.gate_weight, m.gate_weight)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gate_probe_sees_the_gate_planes(train, impl):
    """A forward hook on ``gate_probe`` receives the tanh gate planes (N, T, 2, H, W), the same
    from both implementations, with or without autograd."""
    m = make_gsf(16, 4, 0.5, train=train, impl=impl)
    x = clip(c=16)
    expected = reference_of(m)._gates(x[:, :m.processed]).detach()
    seen = []
    handle = m.gate_probe.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone()))
    m(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        m(x)
    assert len(seen) == 2 and seen[0].shape == (2, 4, 2, 5, 6)
    for gate in seen:
        torch.testing.assert_close(gate, expected, **TOL)
        assert gate.abs().max() < 1
    handle.remove()
    m(x)
    assert len(seen) == 2
    assert not hasattr(make_gsf(16, 4, gating=1), "gate_probe")  # a fixed gate has no planes


@pytest.mark.parametrize("impl", IMPLS)
def test_parameter_count_and_state_dict_keys(impl):
    for c in (64, 256, 1000):
        for ratio in (0.25, 1.0):
            p = processed_channels(c, ratio)
            assert sum(q.numel() for q in GSF(c, 8, ratio, impl=impl).parameters()) == 29 * p + 40
            assert sum(q.numel() for q in GSF(c, 8, ratio, fusion="sum", impl=impl).parameters()) == 29 * p + 2
            assert sum(q.numel() for q in GSF(c, 8, ratio, gating=1, fusion="sum", impl=impl).parameters()) == 0
    assert {k: tuple(v.shape) for k, v in GSF(16, 8, impl=impl).state_dict().items()} == {
        "gate_weight": (2, 8, 27), "gate_bias": (2,), "gate_norm.weight": (16,), "gate_norm.bias": (16,),
        "gate_norm.running_mean": (16,), "gate_norm.running_var": (16,), "gate_norm.num_batches_tracked": (),
        "fuse1.weight": (1, 2, 3, 3), "fuse1.bias": (1,), "fuse2.weight": (1, 2, 3, 3), "fuse2.bias": (1,)}


def test_frozen_parameters():
    """Some parameters frozen (e.g. fine-tuning): the others still get the reference's gradients."""
    m = make_gsf(12, 4, 0.5)
    ref = reference_of(m)
    for module in (m, ref):
        for p in list(module.gate_norm.parameters()) + list(module.fuse1.parameters()):
            p.requires_grad_(False)
    x = clip()
    grad_out = torch.randn_like(x)
    trainable = lambda module: [x] + [p for p in module.parameters() if p.requires_grad]  # noqa: E731
    x.requires_grad_()
    expected = torch.autograd.grad(ref(x), trainable(ref), grad_out)
    got = torch.autograd.grad(m(x), trainable(m), grad_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)


def test_auto_takes_the_readable_path_under_compile_and_transforms(monkeypatch):
    """impl="auto" runs the fast path in eager CPU code only: under torch.compile (here Dynamo
    with the eager backend, no inductor), torch.func transforms and forward-mode AD it must run
    the readable one, which supports them."""
    import gsf.modules._gsf_fast as fast_impl

    calls = []
    real = fast_impl.forward
    monkeypatch.setattr(fast_impl, "forward", lambda m, x: calls.append(1) or real(m, x))
    m = make_gsf(8, 2, 1.0, impl="auto", train=False)
    x = clip(1, 2, 8, 3, 3)
    expected = reference_of(m)(x)
    torch.testing.assert_close(m(x), expected, **TOL)
    assert calls == [1]
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(m, backend="eager")(x), expected, **TOL)
    torch.func.jacrev(m)(x)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.randn_like(x))
        torch.autograd.forward_ad.unpack_dual(m(dual))
    assert calls == [1]
    torch._dynamo.reset()
# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("impl", IMPLS)
def test_gating_zero_with_sum_is_identity(grad, impl):
    m = make_gsf(12, 4, 0.5, gating=0, fusion="sum", impl=impl)
    x = clip().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        assert torch.equal(m(x), x)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("impl", IMPLS)
def test_gating_one_with_sum_is_a_pure_shift(grad, impl):
    """Group 1 forward (frame t gets t-1), group 2 backward (t gets t+1), zeros at the clip ends."""
    n, t, c = 2, 4, 12
    m = make_gsf(c, t, 0.5, gating=1, fusion="sum", impl=impl)
    p, half = m.processed, m.processed // 2
    x = clip(n, t, c).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = m(x).detach().view(n, t, c, 5, 6)
    v = x.detach().view(n, t, c, 5, 6)
    assert torch.equal(out[:, 1:, :half], v[:, :-1, :half])
    assert torch.equal(out[:, :-1, half:p], v[:, 1:, half:p])
    assert not out[:, 0, :half].any() and not out[:, -1, half:p].any()
    assert torch.equal(out[:, :, p:], v[:, :, p:])


@pytest.mark.parametrize("gating,fusion", CONFIGS)
@pytest.mark.parametrize("shift_ratio", [0.25, 0.5])
@pytest.mark.parametrize("impl", IMPLS)
def test_channels_beyond_shift_ratio_pass_through(gating, fusion, shift_ratio, impl):
    m = make_gsf(16, 4, shift_ratio, gating, fusion, layout="release", impl=impl)
    x = clip(c=16)
    p = m.processed
    assert p < 16
    assert torch.equal(m(x.requires_grad_())[:, p:], x[:, p:])
    with torch.no_grad():
        assert torch.equal(m(x)[:, p:], x[:, p:])


@pytest.mark.parametrize("gating,fusion", CONFIGS)
@pytest.mark.parametrize("impl", IMPLS)
def test_clips_never_mix(gating, fusion, impl):
    """Eval mode: in train mode BatchNorm's batch statistics do (by design) span the batch."""
    n, t = 3, 4
    m = make_gsf(12, t, 1.0, gating, fusion, train=False, impl=impl)
    x = clip(n, t)
    y = x.clone()
    y[:t] += torch.randn_like(y[:t])  # perturb every frame of clip 0
    with torch.no_grad():
        a, b = m(x), m(y)
    assert not torch.allclose(a[:t], b[:t])
    assert torch.equal(a[t:], b[t:])


@pytest.mark.parametrize("gating,fusion", [("learned", "learned"), ("learned", "sum"), (-1, "learned")])
@pytest.mark.parametrize("impl", IMPLS)
def test_every_parameter_gets_a_gradient(gating, fusion, impl):
    m = make_gsf(12, 4, 0.5, gating, fusion, impl=impl)
    x = clip().requires_grad_()
    m(x).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


# The temporal reach of one output frame, in frames each way:
# - gate g[t] sees frames t-1..t+1 (3x3x3 conv); R[t] = (1 - g[t]) X[t] the same;
# - S[t] = g[t-1] X[t-1] (group 1) or g[t+1] X[t+1] (group 2): t-2..t+2 (fixed gate: t-1..t+1);
# - the fusion weight F[t] convolves the pooled S and R over frames t-1..t+1: one more each way;
# - Z[t] = lerp(R[t], S[t], F[t]).
# So learned/learned reaches 3 frames, learned/sum and fixed/learned 2, fixed/sum 1. Gating 1
# with sum is a pure shift: R = 0, so frame s itself does not see x[s].
REACH = {("learned", "learned"): 3, ("learned", "sum"): 2, (1, "learned"): 2, (-1, "learned"): 2,
         (-1, "sum"): 1}


@pytest.mark.parametrize("gating,fusion", list(REACH) + [(1, "sum")])
@pytest.mark.parametrize("impl", IMPLS)
def test_temporal_receptive_field(gating, fusion, impl):
    t, s = 10, 4
    m = make_gsf(12, t, 1.0, gating, fusion, train=False, impl=impl)
    x = clip(1, t)
    y = x.clone()
    y[s] += torch.randn_like(y[s])
    with torch.no_grad():
        changed = [not torch.equal(a, b) for a, b in zip(m(x), m(y))]
    if (gating, fusion) == (1, "sum"):
        assert changed == [abs(f - s) == 1 for f in range(t)]
    else:
        assert changed == [abs(f - s) <= REACH[(gating, fusion)] for f in range(t)]


def test_processed_channels_even_and_follow_shift_ratio():
    for c in range(2, 80):
        for ratio in (0.01, 0.125, 0.25, 0.3, 0.5, 0.75, 1.0):
            p = processed_channels(c, ratio)
            assert p % 2 == 0 and 2 <= p <= c
            assert abs(p - c * ratio) <= 2 or p == 2
            assert GSF(c, 4, ratio).processed == p
    assert processed_channels(256, 0.25) == 64 and processed_channels(64, 1.0) == 64
    assert processed_channels(7, 1.0) == 6


@pytest.mark.parametrize("kwargs", [dict(shift_ratio=0), dict(shift_ratio=1.5), dict(shift_ratio=-0.25),
                                    dict(gating="foo"), dict(fusion="foo"), dict(gating=None),
                                    dict(impl="cuda")])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        GSF(16, 8, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_raise(impl):
    m = GSF(16, 8, impl=impl)
    with pytest.raises(ValueError):
        m(torch.randn(12, 16, 4, 4))  # not a multiple of num_frames
    with pytest.raises(ValueError):
        m(torch.randn(8, 15, 4, 4))  # wrong channel count


@pytest.mark.parametrize("impl", IMPLS)
def test_input_is_not_modified(impl):
    m = make_gsf(12, 4, 0.5, impl=impl)
    x = clip()
    x0 = x.clone()
    m(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        m(x)
    assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize("shift_ratio,layout", [(0.5, "paper"), (1.0, "paper"), (1.0, "release")])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_inplace_writes_over_x_only_without_autograd(shift_ratio, layout, train):
    m = make_gsf(12, 4, shift_ratio, layout=layout, train=train, inplace=True)
    x = clip()
    with torch.no_grad():
        ref = reference_of(m)(x)
    x0 = x.clone()
    out = m(x.requires_grad_())  # autograd: x is kept for backward, never overwritten
    assert torch.equal(x.detach(), x0)
    torch.testing.assert_close(out, ref, **TOL)
    x = x.detach()
    with torch.inference_mode():
        out = m(x)
    torch.testing.assert_close(out, ref, **TOL)
    if layout == "release":  # its reordered output cannot go over x: a fresh tensor, x untouched
        assert torch.equal(x, x0) and out.data_ptr() != x.data_ptr()
    else:
        assert out.data_ptr() == x.data_ptr()


def test_inference_workspace_is_shared_safely():
    """Inference temporaries live in a per-thread workspace shared by every GSF: a call on a
    larger module in between must not change a result already returned."""
    small, big = make_gsf(8, 2, 0.5, train=False), make_gsf(24, 4, 1.0, train=False, seed=1)
    xs, xb = clip(1, 2, 8, 3, 4), clip(2, 4, 24, 9, 9, seed=2)
    with torch.inference_mode():
        first = small(xs)
        kept = first.clone()
        big(xb)
        again = small(xs)
    with torch.no_grad():
        ref = reference_of(small)(xs)
    assert torch.equal(first, kept)
    torch.testing.assert_close(first, ref, **TOL)
    torch.testing.assert_close(again, ref, **TOL)


@pytest.mark.parametrize("gating,fusion", [("learned", "learned"), (1.0, "sum")])
@pytest.mark.parametrize("shift_ratio", [0.25, 0.5, 1.0])
def test_inplace_training_matches_reference(gating, fusion, shift_ratio):
    """With autograd, an inplace GSF writes over x straight from a BatchNorm when it processes at
    most half the channels (backward keeps a copy of those); outputs and gradients are unchanged."""
    m = make_gsf(16, 4, shift_ratio, gating, fusion, inplace=True)
    readable = reference_of(m)
    leaf = clip(c=16).requires_grad_()
    grad_out = torch.randn_like(leaf)
    bn = lambda v: F.batch_norm(v, None, None, training=True)  # noqa: E731  (as conv3's bn3)
    ref, ref_grads = grads_of(lambda v: readable(bn(v)), readable, leaf, grad_out)
    x = bn(leaf)
    out = m(x)
    assert (out.data_ptr() == x.data_ptr()) == (shift_ratio <= 0.5)
    got = torch.autograd.grad(out, [leaf, *m.parameters()], grad_out)
    torch.testing.assert_close(out, ref, **TOL)
    for a, b in zip(got, ref_grads):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("placement", ["conv2", "conv3", "input", "all"])
def test_backbones_let_gsf_overwrite_only_fresh_activations(placement):
    """After a conv the input is a fresh activation (inplace); at a residual branch's input the
    skip connection reads it too (not inplace). Same network output either way."""
    from gsf import build_model

    torch.manual_seed(0)
    net = build_model(backbone="resnet50", module="gsf", num_classes=5, num_frames=2, width_mult=0.125,
                      placement=placement).eval()
    gsfs = [(name.rsplit(".", 1)[-1], m) for name, m in net.named_modules() if isinstance(m, GSF)]
    assert gsfs and all(m.inplace == (name != "input") for name, m in gsfs)
    for m in net.modules():  # random BN statistics: the fold and the residual must both matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 3, 32, 32)
    with torch.inference_mode():
        fast = net(x)
        for _, m in gsfs:
            m.inplace = False
        torch.testing.assert_close(fast, net(x), rtol=1e-4, atol=1e-5)
    grads = []
    net.train()
    for inplace in (True, False):  # training: same loss and gradients with and without
        for name, m in gsfs:
            m.inplace = inplace and name != "input"
        torch.manual_seed(1)
        loss = net(x).square().sum()
        grads.append([loss.detach()] + list(torch.autograd.grad(loss, list(net.parameters()))))
    for a, b in zip(*grads):  # float32 through a whole network: BN re-run on a copy sums in another order
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("backbone,size,width", [("bninception", 64, 0.25), ("inception_v3", 75, 1.0)])
def test_inception_branches_let_gsf_overwrite(backbone, size, width):
    from gsf import build_model

    torch.manual_seed(0)
    net = build_model(backbone=backbone, module="gsf", num_classes=5, num_frames=2, width_mult=width).eval()
    gsfs = [m for m in net.modules() if isinstance(m, GSF)]
    assert gsfs and all(m.inplace for m in gsfs)
    x = torch.randn(1, 2, 3, size, size)
    with torch.inference_mode():
        fast = net(x)
        for m in gsfs:
            m.inplace = False
        torch.testing.assert_close(fast, net(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# TSM and STSM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_tsm_moves_its_folds_and_zero_pads(impl):
    n, t, c = 2, 4, 16
    m = TemporalShift(c, t, fold_div=8, impl=impl)
    f = c // 8
    x = clip(n, t, c)
    out = m(x).view(n, t, c, 5, 6)
    v = x.view(n, t, c, 5, 6)
    assert out.shape == v.shape
    assert torch.equal(out[:, :-1, :f], v[:, 1:, :f]) and not out[:, -1, :f].any()  # t sees t+1
    assert torch.equal(out[:, 1:, f:2 * f], v[:, :-1, f:2 * f]) and not out[:, 0, f:2 * f].any()  # t sees t-1
    assert torch.equal(out[:, :, 2 * f:], v[:, :, 2 * f:])
    moved = (out != v).any(dim=(0, 1, 3, 4))
    assert moved.float().mean() == 2 / 8


@pytest.mark.parametrize("impl", IMPLS)
def test_stsm_moves_its_folds_and_zero_pads(impl):
    n, t, c, h, w = 2, 3, 32, 5, 6
    m = SpatioTemporalShift(c, t, impl=impl)
    tf, sf = c // 8, c // 16
    x = clip(n, t, c, h, w)
    out = m(x).view(n, t, c, h, w)
    v = x.view(n, t, c, h, w)
    assert torch.equal(out[:, :-1, :tf], v[:, 1:, :tf]) and not out[:, -1, :tf].any()
    assert torch.equal(out[:, 1:, tf:2 * tf], v[:, :-1, tf:2 * tf]) and not out[:, 0, tf:2 * tf].any()
    s = 2 * tf
    down, up, right, left = (slice(s + i * sf, s + (i + 1) * sf) for i in range(4))
    assert torch.equal(out[:, :, down, 1:], v[:, :, down, :-1]) and not out[:, :, down, 0].any()
    assert torch.equal(out[:, :, up, :-1], v[:, :, up, 1:]) and not out[:, :, up, -1].any()
    assert torch.equal(out[:, :, right, :, 1:], v[:, :, right, :, :-1]) and not out[:, :, right, :, 0].any()
    assert torch.equal(out[:, :, left, :, :-1], v[:, :, left, :, 1:]) and not out[:, :, left, :, -1].any()
    assert torch.equal(out[:, :, s + 4 * sf:], v[:, :, s + 4 * sf:])
    moved = (out != v).any(dim=(0, 1, 3, 4))
    assert moved.float().mean() == 0.5


SHIFTS = {"tsm": lambda c, t, impl: TemporalShift(c, t, impl=impl),
          "tsm-fold4": lambda c, t, impl: TemporalShift(c, t, fold_div=4, impl=impl),
          "tsm-nothing-moves": lambda c, t, impl: TemporalShift(c, t, fold_div=64, impl=impl),
          "stsm": lambda c, t, impl: SpatioTemporalShift(c, t, impl=impl),
          "stsm-4-8": lambda c, t, impl: SpatioTemporalShift(c, t, 4, 8, impl=impl)}


@pytest.mark.parametrize("n,t,h,w", [(2, 4, 5, 6), (1, 1, 3, 3), (2, 3, 1, 1)])
@pytest.mark.parametrize("shift", list(SHIFTS))
def test_shift_fast_matches_reference(shift, n, t, h, w):
    """Outputs and input gradients, with and without autograd, contiguous and channels_last."""
    ref, fast = (SHIFTS[shift](32, t, impl) for impl in IMPLS)
    for x in (clip(n, t, 32, h, w), clip(n, t, 32, h, w).contiguous(memory_format=torch.channels_last)):
        grad_out = torch.randn_like(x)
        expected, expected_grad = grads_of(ref, ref, x, grad_out)
        out, grad = grads_of(fast, fast, x, grad_out)
        assert torch.equal(out, expected) and torch.equal(grad[0], expected_grad[0])
        with torch.inference_mode():
            assert torch.equal(fast(x), ref(x))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shift", ["tsm", "stsm"])
def test_shifts_do_not_mix_clips_and_have_the_right_gradient(shift, impl):
    module = SHIFTS[shift](32, 4, impl)
    c, t = module.channels, module.num_frames
    x = clip(3, t, c)
    y = x.clone()
    y[:t] += 1.0
    a, b = module(x), module(y)
    assert a.shape == x.shape
    assert torch.equal(a[t:], b[t:])
    small = clip(2, t, c, 3, 3).requires_grad_()
    assert torch.autograd.gradcheck(module, (small,), fast_mode=True)
    with torch.no_grad():
        assert torch.equal(module(small), module(small.detach().requires_grad_()).detach())


def test_shifts_reject_bad_arguments():
    with pytest.raises(ValueError):
        SpatioTemporalShift(8, 4, temporal_fold_div=2, spatial_fold_div=2)
    with pytest.raises(ValueError):
        TemporalShift(16, 4, impl="slow")
    for impl in IMPLS:
        with pytest.raises(ValueError):
            TemporalShift(16, 4, impl=impl)(torch.randn(6, 16, 3, 3))  # not a multiple of num_frames
