"""Cost of the excitation rules (issues 7 and 17; ratios measured in one run, median over rounds).

Figures:

* the pullback's backward pass against the vanilla backward on the chapter's VGG-style CNN
  (channels (8, 16), batch 256, same forward graph): <= 1.5;
* the softmax-pool backward against an unfold-based reference (autograd through the source's
  Listing 2 with -inf padding, forward + backward): <= 2, for a non-overlapping and an overlapping
  pool; both give the same gradient (checked).

Scaling curves: the backward ratio against the batch size and against the CNN's width (median
over rounds). A table puts the backward ratio beside the ratio of forward + backward (the rules'
forward pass dispatches every call through a TorchFunctionMode and copies the input of an in-place
ReLU), so that work moved from the backward into the forward pass would show.
"""

import contextlib
import time

import torch
import torch.nn.functional as F
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.models import vgg_cnn
from nbsupport.pullbacks.softpool import softmax_routed_max_pool2d
from nbsupport.pullbacks.surrogate import surrogate_gradients

BATCH = 256 if not SMOKE else 16
ROUNDS = 15 if not SMOKE else 1
PASSES = 3 if not SMOKE else 1  # per round and path: single ~30 ms backward passes varied 0.7-2.4x
BATCHES = (32, 64, 128, 256, 512) if not SMOKE else (4, 8)
WIDTHS = ((8, 16), (16, 32), (32, 64)) if not SMOKE else ((4, 8),)


def pass_times(model, x, surrogate: bool) -> tuple[float, float]:
    """Wall times of the forward pass and of the backward pass on the graph it built."""
    xg = x.clone().requires_grad_(True)
    start = time.perf_counter()
    with surrogate_gradients(model, 0.3) if surrogate else contextlib.nullcontext():
        out = model(xg)[:, 0].sum()
    middle = time.perf_counter()
    torch.autograd.grad(out, xg)
    return middle - start, time.perf_counter() - middle


def ratios(model, x, rounds: int) -> tuple[dict, dict]:
    """Per-round ratios pullback / vanilla of the backward pass and of forward + backward, the two
    alternating round by round; a round times PASSES passes of each (summed)."""
    for _ in range(1 if SMOKE else 3):  # warm-up (the allocator's heap grows to the graphs' size)
        pass_times(model, x, False), pass_times(model, x, True)

    def timed(surrogate):
        times = [pass_times(model, x, surrogate) for _ in range(PASSES)]
        return sum(f for f, _ in times), sum(b for _, b in times)

    vanilla, pullback = [], []
    for _ in range(rounds):
        vanilla.append(timed(False))
        pullback.append(timed(True))
    return (ratio_stats([b for _, b in pullback], [b for _, b in vanilla]),
            ratio_stats([f + b for f, b in pullback], [f + b for f, b in vanilla]))


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
    backward, total = ratios(model, x, ROUNDS)
    report.figure(f"pullback backward, VGG-style CNN, batch {BATCH}", description=(
        "backward pass with ReLU's derivative replaced by sigmoid(z/T) and max-pool's by the softmax-pool, "
        "over the vanilla backward on the same forward graph"), ours="pullback backward",
        baseline="vanilla backward", op="<=", target=1.5, ratios=backward)

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

    rows = [{"channels": "(8, 16)", "batch": BATCH, "backward ratio (median)": backward["median"],
             "backward ratio (min)": backward["min"], "forward + backward ratio (median)": total["median"],
             "forward + backward ratio (min)": total["min"]}]
    by_batch = []
    for n in BATCHES:
        backward_n, total_n = ratios(model, torch.rand(n, 1, 28, 28, generator=gen), ROUNDS)
        by_batch.append(backward_n["median"])
        rows.append({"channels": "(8, 16)", "batch": n, "backward ratio (median)": backward_n["median"],
                     "backward ratio (min)": backward_n["min"], "forward + backward ratio (median)": total_n["median"],
                     "forward + backward ratio (min)": total_n["min"]})
    report.curve("backward ratio vs batch", description=f"pullback / vanilla backward, VGG-style CNN, median of "
                 f"{ROUNDS}", x_label="batch size", y_label="time ratio", x=list(BATCHES),
                 series={"pullback / vanilla": by_batch})
    by_width = []
    for channels in WIDTHS:
        torch.manual_seed(0)
        backward_c, total_c = ratios(vgg_cnn(channels).eval(), x, ROUNDS)
        by_width.append(backward_c["median"])
        rows.append({"channels": str(tuple(channels)), "batch": BATCH, "backward ratio (median)": backward_c["median"],
                     "backward ratio (min)": backward_c["min"], "forward + backward ratio (median)": total_c["median"],
                     "forward + backward ratio (min)": total_c["min"]})
    report.curve("backward ratio vs width", description=f"pullback / vanilla backward, batch {BATCH}, median of "
                 f"{ROUNDS}", x_label="channels of the last block", y_label="time ratio", x=[c[-1] for c in WIDTHS],
                 series={"pullback / vanilla": by_width})
    report.table("pullback / vanilla by batch and width", description=(
        f"VGG-style CNN, per-round ratios over {ROUNDS} interleaved rounds; the first row is the figure's run"),
        rows=rows)
    report.write()


if __name__ == "__main__":
    main()
