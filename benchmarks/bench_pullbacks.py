"""Cost of the excitation rules (issue #7).

Targets: the pullback's backward pass <= 1.5x the vanilla backward on the chapter's VGG-style CNN
(same batch, same forward graph), and the softmax-pool backward within 2x of an unfold-based
reference (autograd through the source's Listing-2 construction, with -inf padding).
"""

import math

import torch
import torch.nn.functional as F
from _timing import best_of, setup

from nbsupport.models import vgg_cnn
from nbsupport.pullbacks import _SoftmaxRoutedMaxPool, surrogate_gradients


def backward_time(model, x, surrogate: bool, repeat: int = 5) -> float:
    """Best time of the backward pass alone (a fresh forward graph before each timed call)."""
    times = []
    for _ in range(repeat):
        xg = x.clone().requires_grad_(True)
        if surrogate:
            with surrogate_gradients(model, 0.3):
                out = model(xg)[:, 0].sum()
        else:
            out = model(xg)[:, 0].sum()
        times.append(best_of(lambda: torch.autograd.grad(out, xg), repeat=1))
    return min(times)


def reference_soft_pool(x, k, s, p, T):
    """Listing 2 of the source with -inf padding: unfold, softmax, weighted sum (autograd does the backward)."""
    n, c, h, w = x.shape
    xp = F.pad(x.reshape(n * c, 1, h, w), (p, p, p, p), value=-torch.inf)
    win = F.unfold(xp, k, stride=s)
    weights = torch.softmax(win / T, dim=1)
    oh = (h + 2 * p - k) // s + 1
    return (weights * win.nan_to_num(neginf=0.0)).sum(1).reshape(n, c, oh, -1)


if __name__ == "__main__":
    setup()
    x = torch.rand(256, 1, 28, 28)
    # the chapter's CNN (the target), and a wider one where convolutions outweigh the elementwise rules
    for channels in [(8, 16), (32, 64)]:
        model = vgg_cnn(channels).eval()
        t_vanilla = backward_time(model, x, surrogate=False)
        t_pullback = backward_time(model, x, surrogate=True)
        print(f"VGG-style CNN {channels}, batch 256: vanilla backward {t_vanilla * 1e3:.1f} ms, pullback backward "
              f"{t_pullback * 1e3:.1f} ms, ratio {t_pullback / t_vanilla:.2f}x (target <= 1.5x on (8, 16))")

    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        feats = torch.randn(256, 16, 28, 28)
        g = torch.randn_like(F.max_pool2d(feats, k, s, p))

        def ours():
            xg = feats.clone().requires_grad_(True)
            out = _SoftmaxRoutedMaxPool.apply(xg, (k, k), (s, s), (p, p), (1, 1), False, 0.3, -math.inf)
            return torch.autograd.grad(out, xg, g)[0]

        def reference():
            xg = feats.clone().requires_grad_(True)
            return torch.autograd.grad(reference_soft_pool(xg, k, s, p, 0.3), xg, g)[0]

        err = (ours() - reference()).abs().max().item()
        t_ours, t_ref = best_of(ours, repeat=5), best_of(reference, repeat=5)
        print(f"softmax-pool backward (kernel {k}, stride {s}, padding {p}) on 256x16x28x28: ours {t_ours * 1e3:.1f} ms "
              f"(forward = max-pool), unfold reference (forward + backward) {t_ref * 1e3:.1f} ms, ratio "
              f"{t_ours / t_ref:.2f}x (target <= 2x); max abs difference {err:.1e}")
        assert err < 1e-4
