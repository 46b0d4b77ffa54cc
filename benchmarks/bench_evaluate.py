"""Evaluating chapter 4's CNNs: ``evaluate``'s batch size, 512 images per forward pass against 4096,
and the max-pooling module, ``nbsupport.models.MaxPool2d`` against ``nn.MaxPool2d``.

``nbsupport.models.evaluate`` runs the test set through a model in batches. Chapter 4 evaluates
ten small CNNs on the 10 000 Fashion-MNIST test images and, during training, each VGG on 1 000
images after every epoch; batches of 4096 images spill the CNNs' activations (8 channels of
28 x 28 per image) out of the cache, batches of 512 do not.

Figures: the time of ``evaluate(..., batch_size=4096)`` over ``evaluate(..., batch_size=512)``
(a speed-up, target >= 1.3) for chapter 4's ``vgg_cnn((8, 16))`` and ``small_resnet((8, 16))``.
A table gives the median times, also for chapter 1's MLP 784-64-64-10, which loses a little with
the smaller batches (its whole test set takes milliseconds either way). Both batch sizes count
the same correct predictions, checked first.

Second, the CNNs' own ``MaxPool2d``, which pools in channels-last memory order when autograd is
off, against the same network with ``nn.MaxPool2d`` (PyTorch's kernel for contiguous inputs):
the time of ``evaluate`` (batches of 512) with ``nn.MaxPool2d`` over the time with ours, target
>= 1.15 for each CNN; the logits must agree bit for bit, checked first.
"""

from __future__ import annotations

import torch

from _timing import SMOKE, Report, interleaved, ratio_stats, setup
import copy

from torch import nn

from nbsupport.models import MaxPool2d, evaluate, mlp, small_resnet, vgg_cnn


def test_images(flatten: bool, n: int):
    """The first n Fashion-MNIST test images (random images of the same shape in smoke mode)."""
    if SMOKE:
        g = torch.Generator().manual_seed(0)
        shape = (784,) if flatten else (1, 28, 28)
        return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    from nbsupport.data import fashion_mnist_tensors
    x, y = fashion_mnist_tensors(train=False, flatten=flatten)
    return x[:n], y[:n]


def with_nn_pools(model):
    """A copy of model with every MaxPool2d replaced by an nn.MaxPool2d of the same geometry."""
    model = copy.deepcopy(model)
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride, child.padding, child.dilation,
                                                   ceil_mode=child.ceil_mode))
    return model


def main():
    setup()
    report = Report(__file__, "evaluate's batch size: 512 against 4096")
    n = 10_000 if not SMOKE else 600
    models = {  # name: (model, flattened input, speed-up target or None: table only)
        "chapter 4 vgg_cnn((8, 16))": (vgg_cnn((8, 16)), False, 1.3),
        "chapter 4 small_resnet((8, 16))": (small_resnet((8, 16)), False, 1.3),
        "chapter 1 MLP 784-64-64-10": (mlp([784, 64, 64, 10]), True, None),
    }
    rows = []
    for name, (model, flatten, target) in models.items():
        torch.manual_seed(0)
        model.eval()
        x, y = test_images(flatten, n)
        small, large = evaluate(model, x, y, batch_size=512), evaluate(model, x, y, batch_size=4096)
        report.check(f"accuracy, batch 512 minus batch 4096, {name}", abs(small[1] - large[1]), 0.0)
        t = interleaved({"4096": lambda: evaluate(model, x, y, batch_size=4096),
                         "512": lambda: evaluate(model, x, y, batch_size=512)},
                        rounds=5 if not SMOKE else 1)
        stats = ratio_stats(t["4096"], t["512"])
        rows.append({"model": name, "batch 4096, median (ms)": 1e3 * sorted(t["4096"])[len(t["4096"]) // 2],
                     "batch 512, median (ms)": 1e3 * sorted(t["512"])[len(t["512"]) // 2],
                     "speed-up (median)": stats["median"]})
        if target is None:
            continue
        report.figure(f"evaluate, batch 4096 / batch 512, {name}", description=f"{n} test images, float32",
                      ours="batch_size=512", baseline="batch_size=4096", op=">=", target=target,
                      ratios=stats, note="a speed-up: batch 4096's time / batch 512's time")
    report.table("times per model", description=f"{n} test images, medians over the interleaved rounds",
                 rows=rows)

    for name in ("chapter 4 vgg_cnn((8, 16))", "chapter 4 small_resnet((8, 16))"):
        ours = models[name][0]
        theirs = with_nn_pools(ours)
        x, y = test_images(False, n)
        with torch.no_grad():
            report.check(f"max |logits, MaxPool2d - nn.MaxPool2d|, {name}", float((ours(x[:512]) -
                         theirs(x[:512])).abs().max()), 0.0)
        t = interleaved({"nn": lambda: evaluate(theirs, x, y), "ours": lambda: evaluate(ours, x, y)},
                        rounds=5 if not SMOKE else 1)
        report.figure(f"evaluate, nn.MaxPool2d / MaxPool2d, {name}", description=f"{n} test images, batches of 512",
                      ours="nbsupport.models.MaxPool2d", baseline="nn.MaxPool2d", op=">=", target=1.15,
                      ratios=ratio_stats(t["nn"], t["ours"]), note="a speed-up: nn.MaxPool2d's time / ours")
    report.write()


if __name__ == "__main__":
    main()
