"""Layer stages on the simulator: FF, BP and WU of Linear and Conv2d against torch autograd."""

import pytest
import torch
import torch.nn.functional as F

from nmsat.sw.stages import conv2d_stage, im2col, linear_stage
from nmsat.hw.config import SATConfig
from nmsat.sw.bdwp import conv_weight_as_gemm

TINY = SATConfig.tiny()


def bf16(t):
    return t.to(torch.bfloat16).double()


def close(out, ref, scale):
    """fp32 accumulation of bf16 products: error below ~K·2^-24 of Σ|a·b| (scale)."""
    assert out.shape == ref.shape
    assert torch.all((out.double() - ref).abs() <= 1e-5 * scale + 1e-12), (out.double() - ref).abs().max()


@pytest.mark.parametrize("tokens,fin,fout", [(5, 12, 7), (16, 32, 16)])
def test_linear_stages_match_torch(tokens, fin, fout):
    torch.manual_seed(0)
    x, w, dy = torch.randn(tokens, fin), torch.randn(fout, fin), torch.randn(tokens, fout)
    xd, wd, dyd = bf16(x).requires_grad_(), bf16(w).requires_grad_(), bf16(dy)
    y = xd @ wd.T
    y.backward(dyd)
    close(linear_stage(TINY, "FF", x, w), y.detach(), bf16(x).abs() @ bf16(w).abs().T)
    close(linear_stage(TINY, "BP", x, w, dy), xd.grad, bf16(dy).abs() @ bf16(w).abs())
    close(linear_stage(TINY, "WU", x, w, dy), wd.grad, bf16(dy).abs().T @ bf16(x).abs())


@pytest.mark.parametrize("cin,cout,k,stride,padding,groups", [(4, 8, 3, 1, 1, 1), (8, 8, 3, 2, 1, 2), (6, 4, 1, 1, 0, 1)])
def test_conv_stages_match_torch(cin, cout, k, stride, padding, groups):
    torch.manual_seed(1)
    x = torch.randn(2, cin, 6, 5)
    w = torch.randn(cout, cin // groups, k, k)
    xd, wd = bf16(x).requires_grad_(), bf16(w).requires_grad_()
    y = F.conv2d(xd, wd, stride=stride, padding=padding, groups=groups)
    dy = torch.randn(y.shape)
    y.backward(bf16(dy))
    absy = F.conv2d(bf16(x).abs(), bf16(w).abs(), stride=stride, padding=padding, groups=groups)
    kw = dict(stride=stride, padding=padding, groups=groups)
    close(conv2d_stage(TINY, "FF", x, w, **kw), y.detach(), absy)
    close(conv2d_stage(TINY, "BP", x, w, grad_y=dy, **kw), xd.grad, 10 * xd.grad.abs().max())
    close(conv2d_stage(TINY, "WU", x, w, grad_y=dy, **kw), wd.grad, 10 * wd.grad.abs().max())


def test_im2col_order_matches_bdwp_gemm_view():
    """K of im2col is the K of the BDWP masks: W_gemm · cols equals the convolution."""
    torch.manual_seed(2)
    x, w = torch.randn(1, 8, 5, 5, dtype=torch.float64), torch.randn(6, 4, 3, 3, dtype=torch.float64)
    cols = im2col(x, (3, 3), (1, 1), (1, 1), (1, 1), 2)
    y = torch.cat([conv_weight_as_gemm(w, 2)[g] @ cols[g] for g in range(2)], 0)
    torch.testing.assert_close(y.reshape(6, 1, 5, 5).permute(1, 0, 2, 3), F.conv2d(x, w, padding=1, groups=2))


@pytest.mark.parametrize("name,cin,cout,hw,stride", [("layer4.0.conv2", 512, 512, 4, 1), ("layer2.0.conv1", 64, 128, 8, 2)])
def test_resnet18_layer_shapes_at_the_card_preset_match_torch(name, cin, cout, hw, stride):
    """Real ResNet-18/CIFAR layer shapes (batch 2 to keep it quick) on the vcu1525 preset: FF against torch."""
    torch.manual_seed(3)
    card = SATConfig.vcu1525()
    x, w = torch.randn(2, cin, hw, hw), torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
    out = conv2d_stage(card, "FF", x, w, stride=stride, padding=1)
    ref = F.conv2d(bf16(x), bf16(w), stride=stride, padding=1)
    close(out, ref, F.conv2d(bf16(x).abs(), bf16(w).abs(), stride=stride, padding=1))


@pytest.mark.parametrize("n,m", [(2, 8), (1, 4), (4, 8)])
@pytest.mark.parametrize("cin,cout,k,stride,padding,groups", [(8, 8, 3, 1, 1, 1), (16, 16, 3, 2, 1, 2), (8, 16, 1, 1, 0, 1)])
def test_sparse_conv_stages_match_torch_with_bdwp_masks(cin, cout, k, stride, padding, groups, n, m):
    """BDWP on the simulator: FF with W ⊙ ff_mask, BP with W ⊙ bp_mask (per conv group), against torch."""
    from nmsat.sw.bdwp import bp_mask, ff_mask

    torch.manual_seed(cin + cout + n * m)
    x = torch.randn(2, cin, 6, 5)
    w = torch.randn(cout, cin // groups, k, k)
    kw = dict(stride=stride, padding=padding, groups=groups)
    w_ff = bf16(w) * ff_mask(w, n, m, groups)
    w_bp = (bf16(w) * bp_mask(w, n, m, groups)).requires_grad_()
    y = F.conv2d(bf16(x), w_ff, **kw)
    close(conv2d_stage(TINY, "FF", x, w, pattern=(n, m), **kw), y,
          F.conv2d(bf16(x).abs(), w_ff.abs(), **kw))
    xd = bf16(x).requires_grad_()
    dy = torch.randn(y.shape)
    F.conv2d(xd, w_bp, **kw).backward(bf16(dy))
    close(conv2d_stage(TINY, "BP", x, w, grad_y=dy, pattern=(n, m), **kw), xd.grad, 10 * xd.grad.abs().max())


@pytest.mark.parametrize("n,m", [(2, 8), (2, 4)])
def test_sparse_linear_stages_match_torch_with_bdwp_masks(n, m):
    from nmsat.sw.bdwp import bp_mask, ff_mask

    torch.manual_seed(7)
    x, w, dy = torch.randn(6, 40), torch.randn(24, 40), torch.randn(6, 24)
    w_ff, w_bp = bf16(w) * ff_mask(w, n, m), bf16(w) * bp_mask(w, n, m)
    close(linear_stage(TINY, "FF", x, w, pattern=(n, m)), bf16(x) @ w_ff.T, bf16(x).abs() @ w_ff.abs().T)
    close(linear_stage(TINY, "BP", x, w, dy, pattern=(n, m)), bf16(dy) @ w_bp, bf16(dy).abs() @ w_bp.abs())
