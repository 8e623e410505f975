"""The batch-invariant CPU linear (``kernels/batch_invariant.py``, ``csrc/cpu/linear_rows_cpu.cpp``): accurate like
any fp32 GEMM, and each output row bit-identical whatever else is in the batch, in every CPU kernel variant."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from cogvideo_engine.kernels.batch_invariant import linear_rows, linear_rows_available, linear_rows_reference

from helpers.numerics import assert_fp_close

available, why = linear_rows_available()
pytestmark = pytest.mark.skipif(not available, reason=f"linear_rows: {why}")

if available:
    from cogvideo_engine import _C
    ISAS = list(_C.cpu_isas())
else:
    _C, ISAS = None, ["none"]


@contextlib.contextmanager
def cpu_isa(name: str):
    """The CPU kernels run variant ``name`` inside; the previous variant afterwards."""
    before = _C.cpu_isa()
    _C.set_cpu_isa(name)
    try:
        yield
    finally:
        _C.set_cpu_isa(before)


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make(m: int, k: int, n: int, *, seed: int = 0, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) / max(k, 1) ** 0.5
    b = torch.randn(n, generator=gen) if bias else None
    return x, w, b


def check_accuracy(x, w, b, what):
    """The project's rule against float64: at most twice F.linear's own fp32 error plus 16 ulps of the scale."""
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert_fp_close(linear_rows(x, w, b), exact, F.linear(x, w, b), what=what)


# (M, K, N): K not a multiple of 16, N not a multiple of the column blocks, K past the kernel's segments (1024)
SHAPES = [(1, 1, 1), (1, 16, 16), (3, 37, 17), (5, 512, 33), (16, 100, 70), (70, 531, 19), (8, 2048 + 16 * 3 + 5, 21),
          (33, 64, 5), (1, 1100, 19), (2, 1500, 37)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_accuracy_against_float64(isa, bias, shape):
    m, k, n = shape
    x, w, b = make(m, k, n, seed=m * 7 + k, bias=bias)
    with cpu_isa(isa):
        check_accuracy(x, w, b, f"{isa} M={m} K={k} N={n}")


@pytest.mark.parametrize("isa", ISAS)
def test_every_row_count(isa):
    """M = 1..70 (every tail of the row blocks), accurate and each row equal to the row computed alone."""
    x, w, b = make(70, 45, 23, seed=1)
    with cpu_isa(isa):
        alone = torch.cat([linear_rows(x[i:i + 1], w, b) for i in range(70)])
        check_accuracy(x, w, b, f"{isa} M=70")
        for m in range(1, 71):
            assert torch.equal(linear_rows(x[:m], w, b), alone[:m]), f"{isa}: the first {m} rows"


@pytest.mark.parametrize("isa", ISAS)
def test_rows_are_batch_invariant(isa):
    """A row gives the same bits alone (M = 1), at any position of a batch of any size, next to random rows, rows
    of zeros or huge rows, through a strided x and through a 3-D x."""
    k, n = 531, 37
    probes, w, b = make(4, k, n, seed=2)
    gen = torch.Generator().manual_seed(3)
    with cpu_isa(isa):
        alone = [linear_rows(probes[r:r + 1], w, b) for r in range(len(probes))]
        for m in (2, 3, 5, 8, 13, 16, 31, 64, 70):
            for fill in ("random", "zeros", "huge"):
                x = {"random": torch.randn(m, k, generator=gen), "zeros": torch.zeros(m, k),
                     "huge": 1e30 * torch.randn(m, k, generator=gen)}[fill]
                for pos in sorted({0, m // 2, m - 1}):
                    r = (m + pos) % len(probes)
                    x[pos] = probes[r]
                    out = linear_rows(x, w, b)
                    assert torch.equal(out[pos:pos + 1], alone[r]), f"{isa}: row {r} at {pos} of {m} ({fill} rows)"
        wide = torch.randn(12, 2 * k, generator=gen)
        wide[5, :k] = probes[1]
        assert torch.equal(linear_rows(wide[:, :k], w, b)[5:6], alone[1]), f"{isa}: strided x"
        x3 = torch.randn(3, 4, k, generator=gen)
        x3[2, 1] = probes[2]
        out3 = linear_rows(x3, w, b)
        assert out3.shape == (3, 4, n)
        assert torch.equal(out3[2, 1:2], alone[2]), f"{isa}: [3, 4, K] input"


@pytest.mark.parametrize("isa", ISAS)
def test_thread_count_does_not_change_a_bit(isa):
    """Large enough for the kernel to split N over the OpenMP team (and K past one segment): 1 and 2 threads
    agree bit for bit."""
    x, w, b = make(24, 1100, 700, seed=4)
    with cpu_isa(isa):
        with num_threads(1):
            one = linear_rows(x, w, b)
        with num_threads(2):
            two = linear_rows(x, w, b)
            single_rows = torch.cat([linear_rows(x[i:i + 1], w, b) for i in (0, 11, 23)])
    assert torch.equal(one, two), f"{isa}: 1 vs 2 threads"
    assert torch.equal(single_rows, one[[0, 11, 23]]), f"{isa}: rows alone vs the batch"


@pytest.mark.skipif("baseline" not in ISAS, reason="this build has no baseline CPU kernel variant")
def test_baseline_follows_the_documented_order():
    """The baseline variant (no FMA) is bit-identical to its order written in PyTorch: 16 lane partial sums over
    k (lane l takes k = l mod 16, increasing k, multiply then add, zeros past K), the tree
    s8[l] = a[l] + a[l + 8], s4[l] = s8[l] + s8[l + 4], s2[l] = s4[l] + s4[l + 2], s2[0] + s2[1], then + bias."""
    m, k, n = 6, 83, 10
    x, w, b = make(m, k, n, seed=5)
    kp = (k + 15) // 16 * 16
    xp = F.pad(x, (0, kp - k)).view(m, 1, kp // 16, 16)
    wp = F.pad(w, (0, kp - k)).view(1, n, kp // 16, 16)
    acc = torch.zeros(m, n, 16)
    for t in range(kp // 16):
        acc = acc + xp[:, :, t] * wp[:, :, t]  # two fp32 roundings, elementwise
    s8 = acc[..., :8] + acc[..., 8:]
    s4 = s8[..., :4] + s8[..., 4:]
    s2 = s4[..., :2] + s4[..., 2:]
    twin = (s2[..., 0] + s2[..., 1]) + b
    with cpu_isa("baseline"):
        assert torch.equal(linear_rows(x, w, b), twin)


def test_reference_twin():
    x, w, b = make(4, 100, 9, seed=6)
    ref = linear_rows_reference(x.view(2, 2, 100), w, b)
    assert ref.dtype == torch.float32 and ref.shape == (2, 2, 9)
    assert torch.equal(ref.view(4, 9), F.linear(x.double(), w.double(), b.double()).float())
    assert_fp_close(linear_rows(x, w, b), F.linear(x.double(), w.double(), b.double()), ref.view(4, 9),
                    what="against the float64 twin rounded")


def test_empty_inputs():
    x, w, b = make(3, 0, 4, seed=7)
    assert torch.equal(linear_rows(x, w, b), b.expand(3, 4))
    assert linear_rows(torch.zeros(0, 5), torch.ones(4, 5)).shape == (0, 4)
    assert linear_rows(torch.zeros(2, 0, 5), torch.ones(4, 5)).shape == (2, 0, 4)


BAD = [
    ("x float16", lambda x, w, b: (x.half(), w, b), "float32"),
    ("weight float64", lambda x, w, b: (x, w.double(), b), "float32"),
    ("bias bfloat16", lambda x, w, b: (x, w, b.bfloat16()), "float32"),
    ("weight 1-D", lambda x, w, b: (x, w[0], b), "[N, K]"),
    ("K mismatch", lambda x, w, b: (x[:, :7], w, b), "K"),
    ("bias length", lambda x, w, b: (x, w, b[:3]), "[N]"),
    ("x last dim strided", lambda x, w, b: (torch.randn(8, 4).t(), w, b), "contiguous"),
    ("weight transposed", lambda x, w, b: (x, torch.randn(8, 5).t(), b), "contiguous"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_name_the_constraint(case):
    _, change, needle = case
    x, w, b = make(4, 8, 5, seed=8)
    x2, w2, b2 = change(x, w, b)
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        linear_rows(x2, w2, b2)


def _arg(t):
    return t.data_ptr(), str(t.dtype).removeprefix("torch."), list(t.shape), list(t.stride())


def test_extension_checks_its_inputs():
    """The C++ entry point checks on its own (ValueError naming the constraint), before touching memory."""
    x, w, b = make(4, 8, 5, seed=9)
    out = torch.empty(4, 5)
    _C.linear_rows(_arg(out), _arg(x), _arg(w), _arg(b))
    assert torch.equal(out, linear_rows(x, w, b))
    cases = [
        ((_arg(out), _arg(x.half()), _arg(w), _arg(b)), "float32"),
        ((_arg(torch.empty(4, 6)), _arg(x), _arg(w), None), r"out \[4, 6\] must be \[M, N\] = \[4, 5\]"),
        ((_arg(out), _arg(x[:, :6]), _arg(w), None), "K"),
        ((_arg(out), _arg(torch.randn(8, 4).t()), _arg(w), None), "contiguous"),
        ((_arg(out), _arg(x), _arg(w), _arg(b[:2])), "bias"),
        ((_arg(out), _arg(x.view(2, 2, 8)), _arg(w), None), "2-D"),
    ]
    for args, needle in cases:
        with pytest.raises(ValueError, match=needle):
            _C.linear_rows(*args)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES[1:7], ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES[1:7]])
def test_bf16_weight_is_the_fp32_product_with_the_rounded_weight(isa, shape):
    """A bf16 weight is widened exactly as it is read: the bits of the fp32 kernel on ``weight.float()``, so as
    accurate as any fp32 product against float64 of the rounded weight; each row batch-invariant as in fp32."""
    m, k, n = shape
    x, w, b = make(m, k, n, seed=m * 5 + k)
    wb = w.bfloat16()
    with cpu_isa(isa):
        out = linear_rows(x, wb, b)
        assert torch.equal(out, linear_rows(x, wb.float(), b)), f"{isa}: bf16 weight vs the same weight in fp32"
        assert torch.equal(out[m - 1:], linear_rows(x[m - 1:], wb, b)), f"{isa}: the last row alone"
    exact = F.linear(x.double(), wb.double(), b.double())
    assert_fp_close(out, exact, F.linear(x, wb.float(), b), what=f"{isa} bf16 weight M={m} K={k} N={n}")


def test_bf16_weight_accepted_only_for_the_weight():
    x, w, b = make(4, 8, 5, seed=10)
    with pytest.raises(ValueError, match="x must be float32"):
        linear_rows(x.bfloat16(), w, b)
    with pytest.raises(ValueError, match="weight must be float32 or bfloat16"):
        linear_rows(x, w.half(), b)
