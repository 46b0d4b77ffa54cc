"""The gate reader's batch-axis check: what the second forward pass costs.

``activation_patterns`` keeps a ReLU call as a gate only when its first axis follows the batch
size, which it checks by a second forward pass on 2 or 3 rows of x (issue 25). The baseline is the
reader before that check: one routed pass, the same freezing and restoring. Figures (time ratios
measured in one run, median over rounds), on the book's uses of the reader:

* a 2-8-2 MLP on the 400 x 400 grid of ``plotting.pattern_regions`` (chapters 1 and 2): <= 1.3;
* a 784-128-128-10 MLP on 1000 Fashion-MNIST-sized inputs (chapter 1): <= 1.5 (a pass takes about
  a millisecond, so the second pass's fixed Python cost shows);
* ``vgg_cnn((16, 32))`` in eval mode on 256 images of 28 x 28 (chapter 4): <= 1.3;
* the same CNN on one image (chapter 4 reads its layer shapes so): the second pass, on 2 images,
  costs about as much as the first: <= 3.

The absolute times (table) are milliseconds: the check adds no visible time to a chapter.

Every route returns the same gates (checked).
"""

import torch
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.models import mlp, vgg_cnn
from nbsupport.patterns import activation_patterns
from nbsupport.patterns.gates import _relu_calls, _frozen_and_restored


def one_pass(model, x):
    """The reader before the batch-axis check: one routed pass, parameters frozen, buffers and
    train/eval flags restored; every x-dependent call whose first axis is len(x) kept."""
    with _frozen_and_restored(model):
        calls = _relu_calls(model, x, lambda z: z > 0)
    return [value for _, value in calls if value is not None]


def workloads():
    g = torch.Generator().manual_seed(0)
    side = 400 if not SMOKE else 40
    grid = torch.stack(torch.meshgrid(torch.linspace(-2, 2, side), torch.linspace(-2, 2, side),
                                      indexing="ij"), -1).reshape(-1, 2)
    torch.manual_seed(0)
    small, deep, cnn = mlp([2, 8, 2]), mlp([784, 128, 128, 10]), vgg_cnn((16, 32)).eval()
    n_images, n_inputs = (256, 1000) if not SMOKE else (8, 50)
    return {
        f"2-8-2 MLP, {len(grid)} grid points": (small, grid, 1.3),
        f"784-128-128-10 MLP, {n_inputs} inputs": (deep, torch.randn(n_inputs, 784, generator=g), 1.5),
        f"vgg_cnn((16, 32)), {n_images} images": (cnn, torch.randn(n_images, 1, 28, 28, generator=g), 1.3),
        "vgg_cnn((16, 32)), 1 image": (cnn, torch.randn(1, 1, 28, 28, generator=g), 3.0),
    }


def main():
    setup()
    report = Report(__file__, "Reading gates: the batch-axis check")
    rows = []
    for name, (model, x, target) in workloads().items():
        ours, base = activation_patterns(model, x), one_pass(model, x)
        differ = float(len(ours) != len(base) or any(not torch.equal(a, b) for a, b in zip(ours, base)))
        report.check(f"gates differ from the one-pass reader's ({name})", differ, 0)
        t = interleaved({"two passes": lambda: activation_patterns(model, x),
                         "one pass": lambda: one_pass(model, x)}, rounds=21 if not SMOKE else 1)
        report.figure(f"batch-axis check, {name}", description=f"activation_patterns on {name}",
                      ours="two passes", baseline="one pass", op="<=", target=target,
                      ratios=ratio_stats(t["two passes"], t["one pass"]),
                      note="a time ratio: the reader with its second pass over the reader without")
        rows.append({"workload": name,
                     "two passes, median (ms)": 1e3 * sorted(t["two passes"])[len(t["two passes"]) // 2],
                     "one pass, median (ms)": 1e3 * sorted(t["one pass"])[len(t["one pass"]) // 2]})
    report.table("times", description="median over rounds", rows=rows)
    report.write()


if __name__ == "__main__":
    main()
