"""Convolutions on the kernel walk (``nmsat.dataflow.conv``) on the simulator compute what ``nmsat.sw.bdwp``'s
``BDWPConv2d`` computes: its FF-masked forward and its BP-masked input gradient, strided and not."""

import numpy as np
import pytest
import torch

from nmsat.dataflow import conv
from nmsat.hw.config import SATConfig
from nmsat.hw.numerics import bf16_bits_to_f32, f32_to_bf16_bits
from nmsat.sim.core import CoreModel
from nmsat.sw.bdwp import BDWPConv2d

TINY = SATConfig.tiny()


def _run(program):
    memory = program.memory.copy()
    result = CoreModel(TINY).run(memory, program.program_addr, program.length)
    assert result.ok and result.race_free
    return bf16_bits_to_f32(program.read_output(memory))


@pytest.mark.parametrize("n,m", [(2, 8), (1, 4)])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_walks_are_bdwp_conv2d_forward_and_input_gradient(n, m, stride):
    torch.manual_seed(n * 10 + stride)
    batch, cin, cout, size = 3, 16, 8, 6
    layer = BDWPConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, n=n, m=m)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(bf16_bits_to_f32(f32_to_bf16_bits(layer.weight.numpy()))))
    x_bits = f32_to_bf16_bits(torch.randn(batch, cin, size, size).numpy())
    x = torch.tensor(bf16_bits_to_f32(x_bits), requires_grad=True)
    y = layer(x)
    ho = y.shape[-1]
    weight = layer.weight.detach().numpy()
    ff = conv.compile_walks(TINY, [conv.ff_walk(weight, size, size, stride, 1, 1)],
                            conv.ActLayout(batch, cin, size, size, 1, 8), x_bits,
                            conv.ActLayout(batch, cout, ho, ho, 0, 4), (n, m))
    y_walk = _run(ff)
    scale = float(y.abs().max())
    assert np.abs(y_walk - y.detach().numpy()).max() <= 2 ** -7 * scale
    dy_bits = f32_to_bf16_bits(torch.randn_like(y).numpy())
    y.backward(torch.tensor(bf16_bits_to_f32(dy_bits)))
    bp = conv.compile_walks(TINY, conv.bp_walks(weight, size, size, stride, 1, 1),
                            conv.ActLayout(batch, cout, ho, ho, conv.bp_pad(3, stride, 1, 1), 8), dy_bits,
                            conv.ActLayout(batch, cin, size, size, 0, 8), (n, m))
    dx_walk = _run(bp)
    ref = x.grad.numpy()
    assert np.abs(dx_walk - ref).max() <= 2 ** -7 * float(np.abs(ref).max())
    # the masks matter: the dense walk is far from BDWP's (so the check above tells masks apart)
    dense = _run(conv.compile_walks(TINY, [conv.ff_walk(weight, size, size, stride, 1, 1)],
                                    conv.ActLayout(batch, cin, size, size, 1, 8), x_bits,
                                    conv.ActLayout(batch, cout, ho, ho, 0, 4)))
    assert np.abs(dense - y.detach().numpy()).max() > 0.1 * scale
