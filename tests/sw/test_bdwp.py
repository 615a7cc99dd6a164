"""BDWP masks and layers against independent references."""

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from nmsat.sw.bdwp import (
    BDWPConv2d, BDWPLinear, bp_mask, conv_weight_as_gemm, ff_mask, gemm_as_conv_weight, nm_mask, sparsify,
)


def reference_mask_1d(values, n, m):
    """Pure-Python N:M mask of a list: sort each group by (-|v|, index), keep the first n."""
    keep = [False] * len(values)
    for start in range(0, len(values), m):
        group = list(range(start, min(start + m, len(values))))
        order = sorted(group, key=lambda i: (-abs(values[i]), i))
        for i in order[:n]:
            keep[i] = True
    return keep


nm_patterns = st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (2, 16), (8, 16), (3, 3),
                               (3, 32), (17, 33), (5, 64)])  # m > 16: the sort-based rank


@settings(max_examples=200, deadline=None)
@given(pattern=nm_patterns, rows=st.integers(1, 5), length=st.integers(1, 40), seed=st.integers(0, 2**31),
       few_values=st.booleans())
def test_nm_mask_matches_reference_with_ties_and_ragged_groups(pattern, rows, length, seed, few_values):
    n, m = pattern
    g = torch.Generator().manual_seed(seed)
    if few_values:  # many exact ties, signs mixed, zeros included
        w = torch.randint(-2, 3, (rows, length), generator=g).float()
    else:
        w = torch.randn(rows, length, generator=g)
    mask = nm_mask(w, n, m, dim=1)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    for r in range(rows):
        assert mask[r].tolist() == reference_mask_1d(w[r].tolist(), n, m)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_nm_mask_groups_run_along_dim(dim):
    w = torch.randn(8, 16, 24)
    mask = nm_mask(w, 2, 8, dim=dim)
    moved = mask.movedim(dim, -1)
    counts = moved.reshape(*moved.shape[:-1], -1, 8).sum(-1)
    assert torch.all(counts == 2)
    # and the kept ones are the largest of their group
    wm = w.abs().movedim(dim, -1).reshape(*moved.shape[:-1], -1, 8)
    km = moved.reshape(wm.shape)
    assert torch.all(wm.masked_fill(~km, -1).amax(-1) >= wm.masked_fill(km, -1).amax(-1))
    assert torch.all(wm.masked_fill(~km, math.inf).amin(-1) >= wm.masked_fill(km, -1).amax(-1))


def test_ties_go_to_lower_index():
    w = torch.tensor([3.0, -3.0, 3.0, 3.0, 1.0, -3.0, 3.0, 0.0])
    assert nm_mask(w, 2, 8).tolist() == [True, True, False, False, False, False, False, False]
    assert nm_mask(w, 3, 4).tolist() == [True, True, True, False, True, True, True, False]


def test_ragged_last_group_is_zero_padded_and_pads_never_win():
    w = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # 9 = 8 + 1
    assert nm_mask(w, 2, 8).tolist() == [True, True, False, False, False, False, False, False, True]
    w = torch.tensor([0.0, 0.0, 0.0])  # one short group of zeros keeps min(n, 3) real elements
    assert nm_mask(w, 2, 8).tolist() == [True, True, False]


def test_special_values_rank_by_magnitude_bits():
    nan, inf = float("nan"), float("inf")
    w = torch.tensor([1.0, -inf, nan, 2.0, -0.0, 0.0, 3.0, inf])
    # key order: nan > inf == -inf (tie: lower index) > 3 > 2 > 1 > ±0
    assert nm_mask(w, 1, 8).tolist() == [False, False, True, False, False, False, False, False]
    assert nm_mask(w, 3, 8).tolist() == [False, True, True, False, False, False, False, True]
    assert nm_mask(torch.tensor([-0.0, 0.0]), 1, 2).tolist() == [True, False]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_nm_mask_dtypes_agree_with_abs(dtype):
    w = torch.randn(64, 32).to(dtype)
    ref = torch.tensor([reference_mask_1d(row, 2, 8) for row in w.double().tolist()])
    assert torch.equal(nm_mask(w, 2, 8), ref)


@pytest.mark.parametrize("n,m,message", [
    (0, 8, "1 <= n <= m"), (9, 8, "1 <= n <= m"), (2, 0, "m must be >= 1"), (2.0, 8, "n must be an int"),
    (True, 8, "n must be an int"), (2, "8", "m must be an int"),
])
def test_bad_pattern_raises_clear_error(n, m, message):
    with pytest.raises(ValueError, match=message):
        nm_mask(torch.randn(4, 8), n, m)
    with pytest.raises(ValueError, match=message):
        BDWPLinear(8, 4, n=n, m=m)


def test_bad_dtype_and_scalar():
    with pytest.raises(ValueError, match="unsupported dtype"):
        nm_mask(torch.arange(8), 2, 4)
    with pytest.raises(ValueError, match="at least one dimension"):
        nm_mask(torch.tensor(1.0), 1, 2)


# --------------------------------------------------------------------------- direction of the masks


def test_linear_masks_run_along_k_and_cout():
    w = torch.randn(16, 24)  # [Cout, K]
    mf, mb = ff_mask(w, 2, 8), bp_mask(w, 2, 8)
    assert torch.all(mf.reshape(16, 3, 8).sum(-1) == 2)  # along K
    assert torch.all(mb.t().reshape(24, 2, 8).sum(-1) == 2)  # along Cout
    assert torch.equal(mf, nm_mask(w, 2, 8, dim=1)) and torch.equal(mb, nm_mask(w, 2, 8, dim=0))


def test_conv_gemm_view_is_tap_major_channel_minor_per_group():
    cout, cin, groups = 6, 4, 2
    w = torch.randn(cout, cin // groups, 3, 2)
    gemm = conv_weight_as_gemm(w, groups)
    assert gemm.shape == (2, 3, 3 * 2 * 2)
    for g in range(groups):
        for o in range(3):
            for ky in range(3):
                for kx in range(2):
                    for c in range(2):
                        assert gemm[g, o, (ky * 2 + kx) * 2 + c] == w[g * 3 + o, c, ky, kx]
    assert torch.equal(gemm_as_conv_weight(gemm, w.shape), w)


def test_conv_masks_per_group():
    cout, cin_g, groups = 32, 8, 2
    w = torch.randn(cout, cin_g, 3, 3)
    mf = conv_weight_as_gemm(ff_mask(w, 2, 8, groups), groups)  # [g, Cout/g, 9*8]
    mb = conv_weight_as_gemm(bp_mask(w, 2, 8, groups), groups)
    # FF: m consecutive input channels at one tap; BP: m consecutive output channels of one group
    assert torch.all(mf.reshape(groups, 16, 9, 8).sum(-1) == 2)
    assert torch.all(mb.reshape(groups, 2, 8, 72).sum(2) == 2)
    gw = conv_weight_as_gemm(w, groups)
    for g in range(groups):
        assert torch.equal(mf[g], nm_mask(gw[g], 2, 8, dim=1))
        assert torch.equal(mb[g], nm_mask(gw[g], 2, 8, dim=0))


# --------------------------------------------------------------------------- layers: FF, BP, WU


@pytest.mark.parametrize("decay", [0.0, 2e-4])
@pytest.mark.parametrize("n,m", [(2, 8), (1, 4), (2, 4)])
def test_linear_ff_bp_wu(n, m, decay):
    torch.manual_seed(0)
    layer = BDWPLinear(40, 24, n=n, m=m, decay=decay).double()
    x = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w = layer.weight.detach()
    mf, mb = nm_mask(w, n, m, dim=1), nm_mask(w, n, m, dim=0)
    assert torch.equal(y, F.linear(x, w * mf, layer.bias))
    dy = torch.randn_like(y)
    y.backward(dy)
    torch.testing.assert_close(x.grad, dy @ (w * mb), rtol=0, atol=1e-12)
    dw = dy.reshape(-1, 24).t() @ x.detach().reshape(-1, 40)
    torch.testing.assert_close(layer.weight.grad, dw + decay * (~mf) * w, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, dy.reshape(-1, 24).sum(0), rtol=0, atol=1e-12)
    assert not torch.equal(mf, mb)  # the two directions really differ


def _conv_reference(x, w, b, mf, mb, dy, stride, padding, dilation, groups, decay):
    """FF / BP / WU through autograd of plain F.conv2d, one masked weight at a time."""
    xf = x.detach().clone().requires_grad_()
    y = F.conv2d(xf, w * mf, b, stride, padding, dilation, groups)
    (grad_x,) = torch.autograd.grad(F.conv2d(xf, w * mb, None, stride, padding, dilation, groups), xf, dy)
    wd = w.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(F.conv2d(x.detach(), wd, None, stride, padding, dilation, groups), wd, dy)
    return y.detach(), grad_x, grad_w + decay * (~mf) * w


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,groups", [
    (16, 16, 3, 1, 1, 1, 1),
    (16, 32, 3, 2, 1, 1, 2),
    (24, 24, 1, 1, 0, 1, 3),
    (8, 16, (3, 1), (2, 1), (1, 0), 2, 1),
    (3, 16, 3, 1, 1, 1, 1),   # K = 27: ragged groups
    (32, 32, 3, 1, 1, 1, 32),  # depthwise: K = 9, Cout/g = 1
])
def test_conv_ff_bp_wu(cin, cout, k, stride, padding, dilation, groups):
    torch.manual_seed(1)
    decay = 1e-3
    layer = BDWPConv2d(cin, cout, k, stride, padding, dilation, groups, n=2, m=8, decay=decay).double()
    x = torch.randn(2, cin, 9, 10, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w = layer.weight.detach()
    mf, mb = ff_mask(w, 2, 8, groups), bp_mask(w, 2, 8, groups)
    dy = torch.randn_like(y)
    y.backward(dy)
    ref_y, ref_dx, ref_dw = _conv_reference(x, w, layer.bias.detach(), mf, mb, dy, stride, padding, dilation,
                                            groups, decay)
    torch.testing.assert_close(y.detach(), ref_y, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, ref_dw, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, dy.sum((0, 2, 3)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding,padding_mode", [("same", "zeros"), ("valid", "zeros"), (1, "reflect"),
                                                   ("same", "circular")])
def test_conv_padding_variants_match_nn_conv2d_when_dense(padding, padding_mode):
    torch.manual_seed(2)
    ref = nn.Conv2d(8, 8, (3, 4), padding=padding, padding_mode=padding_mode).double()
    layer = BDWPConv2d(8, 8, (3, 4), padding=padding, padding_mode=padding_mode, n=8, m=8).double()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), layer(xb)
    torch.testing.assert_close(yb, ya)
    dy = torch.randn_like(ya)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)


def test_gradcheck_input_path_with_fixed_masks():
    """Where BDWP's gradient is a true gradient (dense masks, or dX when Mf == Mb) gradcheck applies."""
    from nmsat.sw.bdwp import _BDWPConv2dFunction, _BDWPLinearFunction

    torch.manual_seed(3)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    mask = torch.rand(6, 4, 3, 3) > 0.5
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda x: _BDWPConv2dFunction.apply(x, w, None, mask, mask, 0.0, (2, 1), (1, 0), (1, 1), 2)
    assert torch.autograd.gradcheck(fn, (x,))
    ones = torch.ones_like(mask)
    wr, b = w.clone().requires_grad_(), torch.randn(6, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: _BDWPConv2dFunction.apply(x, w, b, ones, ones, 0.0, (1, 2), (0, 1), (2, 1), 2)
    assert torch.autograd.gradcheck(fn, (x, wr, b))
    wl = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    bl = torch.randn(5, dtype=torch.float64, requires_grad=True)
    xl = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    onesl = torch.ones(5, 7, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x, w, b: _BDWPLinearFunction.apply(x, w, b, onesl, onesl, 0.0),
                                    (xl, wl, bl))


def test_state_dict_is_drop_in():
    ref = nn.Conv2d(16, 32, 3, padding=1)
    layer = BDWPConv2d(16, 32, 3, padding=1)
    assert ref.state_dict().keys() == layer.state_dict().keys()
    layer.load_state_dict(ref.state_dict())
    lin = BDWPLinear(8, 4)
    assert lin.state_dict().keys() == nn.Linear(8, 4).state_dict().keys()


def test_masks_follow_weights_every_step_or_every_k():
    torch.manual_seed(4)
    layer = BDWPLinear(16, 16, n=2, m=8)
    layer(torch.randn(1, 16))
    first = layer.mask_ff.clone()
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight))  # reorder magnitudes
    layer(torch.randn(1, 16))
    assert torch.equal(layer.mask_ff, ff_mask(layer.weight, 2, 8)) and not torch.equal(layer.mask_ff, first)

    lazy = BDWPLinear(16, 16, n=2, m=8, mask_interval=3)
    lazy(torch.randn(1, 16))
    stale = lazy.mask_ff.clone()
    with torch.no_grad():
        lazy.weight.mul_(torch.rand_like(lazy.weight))
    lazy(torch.randn(1, 16))
    lazy(torch.randn(1, 16))
    assert torch.equal(lazy.mask_ff, stale)  # steps 2 and 3 reuse the mask
    lazy(torch.randn(1, 16))
    assert torch.equal(lazy.mask_ff, ff_mask(lazy.weight, 2, 8))  # step 4 recomputes


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="decay must be a finite float >= 0"):
        BDWPLinear(8, 8, decay=-1.0)
    with pytest.raises(ValueError, match="mask_interval must be an int >= 1"):
        BDWPConv2d(8, 8, 3, mask_interval=0)


# --------------------------------------------------------------------------- sparsify


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(16, 32, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def test_sparsify_swaps_middle_layers_and_keeps_weights():
    torch.manual_seed(5)
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 4, 4)
    out = sparsify(net, 2, 8)
    assert out is net
    assert type(net.stem) is nn.Conv2d and type(net.head[3]) is nn.Linear  # first and last stay dense
    assert isinstance(net.body[0], BDWPConv2d) and isinstance(net.body[2], BDWPConv2d)
    assert isinstance(net.head[1], BDWPLinear) and net.body[0].groups == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    h = net.body[0](net.stem(x))
    w = net.body[0].weight
    torch.testing.assert_close(h, F.conv2d(net.stem(x), w * ff_mask(w, 2, 8, 2), net.body[0].bias, padding=1,
                                           groups=2))


def test_sparsify_options_and_errors():
    net = sparsify(_Net(), 1, 4, keep_dense=(), exclude=lambda name, mod: name == "body.2")
    assert isinstance(net.stem, BDWPConv2d) and isinstance(net.head[3], BDWPLinear)
    assert type(net.body[2]) is nn.Conv2d and net.stem.n == 1 and net.stem.m == 4
    net = sparsify(_Net(), keep_dense=("head.1",))
    assert type(net.head[1]) is nn.Linear and isinstance(net.stem, BDWPConv2d)
    with pytest.raises(ValueError, match="keep_dense names no Linear/Conv2d layer"):
        sparsify(_Net(), keep_dense=("nope",))
    with pytest.raises(ValueError, match="1 <= n <= m"):
        sparsify(_Net(), 3, 2)


def test_sparsify_warns_when_it_changes_nothing():
    two = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="no layer was made 2:8 sparse: the model has 2 dense"):
        sparsify(two, 2, 8)
    assert all(type(mod) is nn.Linear for mod in (two[0], two[2]))
    with pytest.warns(UserWarning, match="no layer was made"):
        sparsify(nn.Sequential(nn.Linear(4, 4)), 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(two, 2, 8, keep_dense=())  # both made sparse: no warning
    assert isinstance(two[0], BDWPLinear)


def test_sparsified_model_trains_on_digits():
    from nmsat.sw.digits import DigitsCNN, load_split

    x_tr, y_tr, _, _ = load_split()
    torch.manual_seed(0)
    model = sparsify(DigitsCNN(), 2, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = x_tr[:256], y_tr[:256]
    first = F.cross_entropy(model(x), y).item()
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    model.eval()
    model(x)  # eval mode picks up the weights of the last step
    w = model.conv2.weight
    assert torch.equal(model.conv2.mask_ff, ff_mask(w, 2, 8))


def test_nm_mask_dim_out_of_range_raises_like_torch():
    w = torch.randn(4, 8)
    for dim in (2, -3):
        with pytest.raises(IndexError, match="dimension out of range"):
            nm_mask(w, 2, 8, dim=dim)


def test_nm_mask_with_a_huge_m_does_not_blow_up():
    """m far above any group length: one padded group per row, ranked by a sort, not an m×m network."""
    w = torch.randn(64, 288)
    mask = nm_mask(w, 1, 100_000)
    assert mask.sum(dim=1).tolist() == [1] * 64
    assert torch.equal(mask.float().argmax(dim=1), w.abs().argmax(dim=1))
