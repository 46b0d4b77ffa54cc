"""K training seeds at once (``train_seeds``, vmap) against K separate ``train`` calls.

Claims about trained networks rest on 5-10 seeds (issue 21), so the book trains its small models
several times. ``train_seeds(..., method="vmap")`` stacks the K models' parameters and runs each step
as one vmapped forward and backward over the K minibatches and one optimiser step over the stacked
tensors; the baseline is what a chapter would otherwise write, K separate ``train`` calls (the
``"loop"`` route). Both do the same arithmetic per seed (own initial weights, own minibatch order,
own Adam state, the same per-epoch test evaluation), checked first in float64.

Problems, with the chapters' settings (K = 8 seeds, Adam, lr 1e-3, float32):

- chapter 1's MLP 784-64-64-10 on all 60 000 Fashion-MNIST training images, batch 128, test loss and
  accuracy on the 10 000 test images after the epoch; one epoch timed (the chapter trains four,
  each the same work);
- chapter 4's CNNs ``vgg_cnn((8, 16))`` and ``small_resnet((8, 16))`` (BatchNorm), batch 64, one
  epoch on 5 000 training images and evaluation on 2 500 test images (the chapter's 20 000 and
  10 000 in the same proportion, a quarter of the size so that the rounds fit the time).

Figures: the speed-up (8 train calls' time / train_seeds' time) per model, target >= 2; a curve of
time per seed against K for the MLP. ``method="auto"`` takes vmap only where it measured faster.
"""

from __future__ import annotations

import torch

from _timing import SMOKE, Report, interleaved, ratio_stats, setup
from nbsupport.models import auto_method, mlp, small_resnet, train, train_seeds, vgg_cnn


def fashion_mnist(flatten: bool, n_train: int, n_test: int):
    """The first n_train / n_test Fashion-MNIST images (random images of the same shape in smoke mode)."""
    if SMOKE:
        g = torch.Generator().manual_seed(0)
        shape = (784,) if flatten else (1, 28, 28)
        return ((torch.rand(n_train, *shape, generator=g), torch.randint(0, 10, (n_train,), generator=g)),
                (torch.rand(n_test, *shape, generator=g), torch.randint(0, 10, (n_test,), generator=g)))
    from nbsupport.data import fashion_mnist_tensors
    x, y = fashion_mnist_tensors(train=True, flatten=flatten)
    xt, yt = fashion_mnist_tensors(train=False, flatten=flatten)
    return (x[:n_train], y[:n_train]), (xt[:n_test], yt[:n_test])


def seeded(builder):
    def make(seed):
        torch.manual_seed(seed)
        return builder()
    return make


def routes(make, data, seeds, kwargs):
    """The two routes; each call stores its models in ``last`` for the agreement check."""
    last = {}

    def together():
        last["vmap"] = [m for m, _ in train_seeds(make, data, seeds, method="vmap", cache=False, progress=False,
                                                  **kwargs)]

    def separately():
        models = [make(s) for s in seeds]
        for s, m in zip(seeds, models):
            train(m, data, rng=s, cache=False, progress=False, **kwargs)
        last["loop"] = models

    return {"train_seeds (vmap)": together, f"{len(seeds)} train calls": separately}, last


def max_gap(models_a, models_b) -> float:
    return max((a.state_dict()[k].double() - b.state_dict()[k].double()).abs().max().item()
               for a, b in zip(models_a, models_b) for k in a.state_dict())


def main():
    setup()
    report = Report(__file__, "Training K = 8 seeds at once (train_seeds, vmap) against 8 separate train calls")
    K = 8 if not SMOKE else 2
    seeds = list(range(K))
    rounds = 3 if not SMOKE else 1

    # correctness first, in float64 where both routes must agree to rounding (tests/test_models.py
    # derives the 1e-10 tolerance): the MLP and a small VGG with BatchNorm, a few steps each
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(192, 784, generator=g, dtype=torch.float64), torch.randint(0, 10, (192,), generator=g)
    xi = torch.randn(96, 1, 28, 28, generator=g, dtype=torch.float64)
    for name, make, data in (("MLP 784-64-64-10", seeded(lambda: mlp([784, 64, 64, 10]).double()), (xs, ys)),
                             ("vgg_cnn((8, 16))", seeded(lambda: vgg_cnn((8, 16)).double()), (xi, ys[:96]))):
        kw = dict(epochs=2, lr=1e-3, batch_size=32)
        fns, last = routes(make, data, seeds[:3], kw)
        for fn in fns.values():
            fn()
        report.check(f"max |vmap - loop| weights, {name}, 3 seeds, float64", max_gap(last["vmap"], last["loop"]), 1e-10)

    n_mlp, n_mlp_test = (60_000, 10_000) if not SMOKE else (512, 128)
    n_cnn, n_cnn_test = (5_000, 2_500) if not SMOKE else (128, 64)
    problems = {
        "chapter 1 MLP 784-64-64-10": (seeded(lambda: mlp([784, 64, 64, 10])), True, n_mlp, n_mlp_test, 128),
        "chapter 4 vgg_cnn((8, 16))": (seeded(lambda: vgg_cnn((8, 16))), False, n_cnn, n_cnn_test, 64),
        "chapter 4 small_resnet((8, 16))": (seeded(lambda: small_resnet((8, 16))), False, n_cnn, n_cnn_test, 64),
    }
    rows = []
    for name, (make, flatten, n_train, n_test, batch) in problems.items():
        data, test = fashion_mnist(flatten, n_train, n_test)
        kw = dict(epochs=1, lr=1e-3, batch_size=batch, test_data=test)
        fns, last = routes(make, data, seeds, kw)
        t = interleaved(fns, rounds=rounds, warmup=False)
        together, separately = t["train_seeds (vmap)"], t[f"{K} train calls"]
        shape = (f"K = {K}, one epoch on {n_train} images (batch {batch}), test evaluation on {n_test}, "
                 f"Adam lr 1e-3, float32")
        chosen = auto_method(make(0))
        stats = ratio_stats(separately, together)
        report.figure(f"speed-up of vmap, {name}", description=shape, ours=f"{K} train calls",
                      baseline="train_seeds (vmap)", op=">=", target=2.0, ratios=stats,
                      note=f"a speed-up: the loop's time / vmap's time; method='auto' picks {chosen!r} for this model")
        gap = max_gap(last["vmap"], last["loop"])
        scale = max(p.abs().max().item() for m in last["loop"] for p in m.parameters())
        rows.append({"model": name, f"{K} train calls, median (s)": sorted(separately)[len(separately) // 2],
                     "train_seeds vmap, median (s)": sorted(together)[len(together) // 2],
                     "speed-up (median)": stats["median"], "auto picks": chosen,
                     "max |vmap - loop| weight (float32)": gap, "largest |weight|": scale})
    report.table("times per model", description=f"seconds over {rounds} interleaved rounds; float32 weight gap "
                 "after the timed epoch (rounding differences, grown over the epoch)", rows=rows)

    # time per seed against K, chapter 1's MLP on 12 800 images (a fifth of an epoch), no evaluation
    (x, y), _ = fashion_mnist(True, 12_800 if not SMOKE else 256, 16)
    ks = [1, 2, 4, 8, 16] if not SMOKE else [1, 2]
    series = {"train_seeds (vmap)": [], "K train calls": []}
    for k in ks:
        fns, _ = routes(seeded(lambda: mlp([784, 64, 64, 10])), (x, y), list(range(k)),
                        dict(epochs=1, lr=1e-3, batch_size=128))
        tk = interleaved(fns, rounds=3 if not SMOKE else 1, warmup=False)
        for label, times in zip(series, tk.values()):
            series[label].append(sorted(times)[len(times) // 2] / k)
    report.curve("time per seed vs K", description=f"MLP 784-64-64-10, one epoch on {len(x)} images, batch 128, "
                 "median of 3 rounds", x_label="seeds trained (K)", y_label="time per seed (s)", x=ks, series=series)
    report.write()


if __name__ == "__main__":
    main()
