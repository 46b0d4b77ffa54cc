"""Cost of the excitation rules (issues 7 and 17; ratios measured in one run, median over rounds).

Figures:

* the pullback's backward pass against the vanilla backward on the chapter's VGG-style CNN
  (channels (8, 16), batch 256, same forward graph): <= 1.5;
* the softmax-pool backward against an unfold-based reference (autograd through the source's
  Listing 2 with -inf padding, forward + backward): <= 2, for a non-overlapping and an overlapping
  pool; both give the same gradient (checked).

Scaling curves: the backward ratio against the batch size and against the CNN's width.
"""

import contextlib
import time

import torch
import torch.nn.functional as F
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.models import vgg_cnn
from nbsupport.surrogate import softmax_routed_max_pool2d, surrogate_gradients

BATCH = 256 if not SMOKE else 16
ROUNDS = 5 if not SMOKE else 1
BATCHES = (32, 64, 128, 256, 512) if not SMOKE else (4, 8)
WIDTHS = ((8, 16), (16, 32), (32, 64)) if not SMOKE else ((4, 8),)


def backward_time(model, x, surrogate: bool) -> float:
    """Wall time of the backward pass alone, on a forward graph built just before it."""
    xg = x.clone().requires_grad_(True)
    with surrogate_gradients(model, 0.3) if surrogate else contextlib.nullcontext():
        out = model(xg)[:, 0].sum()
    start = time.perf_counter()
    torch.autograd.grad(out, xg)
    return time.perf_counter() - start


def backward_ratio(model, x, rounds: int) -> dict:
    """Per-round ratios pullback backward / vanilla backward, the two alternating round by round."""
    backward_time(model, x, False), backward_time(model, x, True)  # warm-up
    vanilla, pullback = [], []
    for _ in range(rounds):
        vanilla.append(backward_time(model, x, False))
        pullback.append(backward_time(model, x, True))
    return ratio_stats(pullback, vanilla)


def reference_soft_pool(x, k, s, p, T):
    """Listing 2 of the source with -inf padding: unfold, softmax, weighted sum (autograd does the backward)."""
    n, c, h, w = x.shape
    xp = F.pad(x.reshape(n * c, 1, h, w), (p, p, p, p), value=-torch.inf)
    win = F.unfold(xp, k, stride=s)
    weights = torch.softmax(win / T, dim=1)
    oh = (h + 2 * p - k) // s + 1
    return (weights * win.nan_to_num(neginf=0.0)).sum(1).reshape(n, c, oh, -1)


def main():
    setup()
    report = Report(__file__, "Cost of the excitation rules")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, 28, 28, generator=gen)
    torch.manual_seed(0)
    model = vgg_cnn(WIDTHS[0] if SMOKE else (8, 16)).eval()
    report.figure(f"pullback backward, VGG-style CNN, batch {BATCH}", description=(
        "backward pass with ReLU's derivative replaced by sigmoid(z/T) and max-pool's by the softmax-pool, "
        "over the vanilla backward on the same forward graph"), ours="pullback backward",
        baseline="vanilla backward", op="<=", target=1.5, ratios=backward_ratio(model, x, ROUNDS))

    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        feats = torch.randn(BATCH, 16, 28, 28, generator=gen)
        g = torch.randn(F.max_pool2d(feats, k, s, p).shape, generator=gen)

        def ours():
            xg = feats.clone().requires_grad_(True)
            out = softmax_routed_max_pool2d(xg, k, s, p, temperature=0.3)
            return torch.autograd.grad(out, xg, g)[0]

        def reference():
            xg = feats.clone().requires_grad_(True)
            return torch.autograd.grad(reference_soft_pool(xg, k, s, p, 0.3), xg, g)[0]

        report.check(f"max |ours - unfold reference| of the softmax-pool gradient (kernel {k}, stride {s}, "
                     f"padding {p})", float((ours() - reference()).abs().max()), 1e-4)
        t = interleaved({"ours": ours, "reference": reference}, rounds=ROUNDS)
        report.figure(f"softmax-pool backward, kernel {k}, stride {s}, padding {p}", description=(
            f"on {BATCH}x16x28x28 features: max-pool forward + our backward over Listing 2 by unfold "
            "(forward + autograd backward)"), ours="softmax-pool (ours)", baseline="unfold reference",
            op="<=", target=2.0, ratios=ratio_stats(t["ours"], t["reference"]))

    by_batch = [backward_ratio(model, torch.rand(n, 1, 28, 28, generator=gen), max(ROUNDS // 2, 1))["median"]
                for n in BATCHES]
    report.curve("backward ratio vs batch", description="pullback / vanilla backward, VGG-style CNN",
                 x_label="batch size", y_label="time ratio", x=list(BATCHES), series={"pullback / vanilla": by_batch})
    by_width = []
    for channels in WIDTHS:
        torch.manual_seed(0)
        by_width.append(backward_ratio(vgg_cnn(channels).eval(), x, max(ROUNDS // 2, 1))["median"])
    report.curve("backward ratio vs width", description=f"pullback / vanilla backward, batch {BATCH}",
                 x_label="channels of the last block", y_label="time ratio", x=[c[-1] for c in WIDTHS],
                 series={"pullback / vanilla": by_width})
    report.write()


if __name__ == "__main__":
    main()
