"""Does this torch compute convolution input gradients right on this CPU?

Debian 13's python3-torch 2.6 runs CPU convolutions through Debian's oneDNN
(libdnnl 3.7.2). On AVX-512 machines its avx512_core backward-data kernel
returns wrong input gradients (errors of ~20 on unit-normal data, NaN in
some calls) for convolutions whose output channel count is not a multiple
of 16 (checked 2026-12-07 on an AMD EPYC with AVX-512: 3->8, 8->8 and
8->24 wrong in every call, 8->16, 16->16 and 16->32 right; oneDNN's verbose
log shows the weights reordered to ABcd16a16b, 8 channels padded to 16);
with ONEDNN_MAX_CPU_ISA=AVX2 (or torch.backends.mkldnn disabled) it is
right. gradacc cannot fix that: it
refuses the non-finite pushes it causes, and trains on the finite garbage as
PyTorch alone would. The PyTorch 2 tier runs this probe first and, when it
finds the defect, runs the tests with ONEDNN_MAX_CPU_ISA=AVX2 (and says so).

Prints one line per channel count and exits 1 when any is wrong.
"""
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(0)
wrong = []
for cin, cout in ((3, 8), (8, 8), (8, 16), (16, 16), (16, 32), (8, 24)):
    worst = 0.0
    for trial, n in enumerate((2, 5, 6)):
        x = torch.randn(n, cin, 12, 12, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, requires_grad=True)
        go = torch.randn(n, cout, 12, 12)
        gx, gw = torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), go)
        with torch.backends.mkldnn.flags(enabled=False):
            rx, rw = torch.autograd.grad(F.conv2d(x, w, padding=1), (x, w), go)
        err = max(float((gx - rx).abs().max()), float((gw - rw).abs().max()))
        worst = max(worst, err if err == err else float("inf"))
    ok = worst <= 1e-3
    print(f"onednn probe: conv2d {cin}->{cout} channels, input and weight gradients vs torch's own non-oneDNN "
          f"path: max |error| {worst:.3g} {'ok' if ok else 'WRONG'}", flush=True)
    if not ok:
        wrong.append(f"{cin}->{cout}")
print(f"onednn probe: torch {torch.__version__}: "
      + ("convolution gradients right" if not wrong else f"WRONG convolution gradients for {wrong} channels"))
sys.exit(1 if wrong else 0)
