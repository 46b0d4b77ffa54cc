"""Spectra of Cov(G) without G: the Gram route against materialising G, and against the source's loop.

The question (chapter 1): traces and top eigenvalues of the total, within- and between-pattern
covariances of per-sample gradients of a 784-64-64-10 MLP (P = 55 050) over N = 2048 samples, float64.

Figures (ratios measured in one run, median over rounds):

* Gram route (``gradient_gram`` + ``gram_decomposition``, never N x P) vs the source's loop plus the
  explicit centred matrices (eigenvalues in the dual N x N space): speed-up >= 20x (issue 4);
* Gram route vs the *materialised* route (the fastest N x P matrix, ``per_sample_grads``, then
  ``G Gᵀ`` and the same ``gram_decomposition``), time and peak memory: our own targets <= 0.5x
  each (issue 17 asks for the measurement);
* for a CNN (``vgg_cnn`` in eval mode), where only the ``"blocks"`` route applies, its memory
  against materialising G with vmap (a table: it trades time for memory).

Every route's traces and eigenvalues agree to 1e-8 (relative to the trace of Cov(G)).
Scaling curves: time and peak memory against N, and time against the hidden width.
"""

import torch
import torch.nn.functional as F
from _timing import SMOKE, Report, interleaved, peak_memory_mib, ratio_stats, setup

from nbsupport.models import mlp, vgg_cnn
from nbsupport.patterns import activation_patterns, group_by_pattern
from nbsupport.pergrad import gradient_gram, gram_decomposition, per_sample_grads, per_sample_grads_loop

K = 5


def explicit(net, x, y, inverse, k=K):
    """The source's loop, then the three centred matrices and eigenvalues in the dual space."""
    g = per_sample_grads_loop(net, F.cross_entropy, x, y)
    n, n_groups = len(g), int(inverse.max()) + 1
    counts = torch.bincount(inverse).to(g.dtype)
    means = torch.zeros(n_groups, g.shape[1], dtype=g.dtype).index_add_(0, inverse, g) / counts[:, None]
    centred = {"total": g - g.mean(0), "within": g - means[inverse],
               "between": (means - g.mean(0)) * counts.sqrt()[:, None]}
    return {name: ((c * c).sum() / n, torch.linalg.eigvalsh(c @ c.T).flip(0)[:k] / n) for name, c in centred.items()}


def gram_route(net, x, y, inverse, k=K, method="auto"):
    return gram_decomposition(gradient_gram(net, F.cross_entropy, x, y, method=method), inverse, k=k)


def materialised(net, x, y, inverse, k=K, method="auto"):
    g = per_sample_grads(net, F.cross_entropy, x, y, method=method)
    return gram_decomposition(g @ g.T, inverse, k=k)


def as_dict(spectra):
    return {name: (getattr(spectra.traces, name), getattr(spectra.eigenvalues, name))
            for name in ("total", "within", "between")}


def difference(a, b):
    return max(max(abs(a[name][0] - b[name][0]).item(), (a[name][1] - b[name][1]).abs().max().item()) for name in a)


def problem(widths, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp(widths).double()
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, widths[-1], (n,), generator=g)
    inverse = group_by_pattern(activation_patterns(net, x)[0][:, :8]).inverse  # coarse: shared groups
    return net, x, y, inverse


def median(v):
    return sorted(v)[len(v) // 2]


def main():
    setup()
    report = Report(__file__, "Spectra of the gradient covariance through the Gram matrix, without G")
    widths, n = ([784, 64, 64, 10], 2048) if not SMOKE else ([20, 8, 8, 3], 96)
    net, x, y, inverse = problem(widths, n)
    p = sum(q.numel() for q in net.parameters())
    shape = f"{'-'.join(map(str, widths))}, N = {n}, P = {p}, {int(inverse.max()) + 1} groups, float64"

    ours = as_dict(gram_route(net, x, y, inverse))
    scale = ours["total"][0].item()
    report.check(f"max |Gram route - loop + explicit| / tr Cov(G) ({shape})",
                 difference(ours, explicit(net, x, y, inverse)) / scale, 1e-8)
    report.check(f"max |Gram route - materialised| / tr Cov(G) ({shape})",
                 difference(ours, as_dict(materialised(net, x, y, inverse))) / scale, 1e-8)

    t = interleaved({"loop + explicit": lambda: explicit(net, x, y, inverse),
                     "Gram route": lambda: gram_route(net, x, y, inverse)}, rounds=2 if not SMOKE else 1, warmup=False)
    report.figure("Gram route vs loop + explicit", description=shape, ours="loop + explicit", baseline="Gram route",
                  op=">=", target=20.0, ratios=ratio_stats(t["loop + explicit"], t["Gram route"]),
                  note="a speed-up: loop time / Gram-route time")
    t = interleaved({"materialised": lambda: materialised(net, x, y, inverse),
                     "Gram route": lambda: gram_route(net, x, y, inverse)}, rounds=3 if not SMOKE else 1)
    report.figure("Gram route vs materialised G: time", description=shape, ours="Gram route",
                  baseline="per_sample_grads, G Gᵀ", op="<=", target=0.5,
                  ratios=ratio_stats(t["Gram route"], t["materialised"]), note="our own target")
    mem_gram = peak_memory_mib(lambda: gram_route(net, x, y, inverse))
    mem_mat = peak_memory_mib(lambda: materialised(net, x, y, inverse))
    if mem_gram is not None and mem_mat:
        report.figure("Gram route vs materialised G: peak memory", description=shape, ours="Gram route",
                      baseline="per_sample_grads, G Gᵀ", op="<=", target=0.5, ratios=mem_gram / mem_mat,
                      note=f"peak resident memory added by one call: {mem_gram:.0f} MiB vs {mem_mat:.0f} MiB; "
                           f"our own target")
    else:
        report.skip("peak memory", "/proc/self/clear_refs is not available on this system")

    # a CNN: only the blocks route applies; it trades passes (one per parameter-owning module) for memory
    cnn_n = 256 if not SMOKE else 16
    torch.manual_seed(0)
    chans, side = ((8, 16), 28) if not SMOKE else ((2, 2), 8)
    cnn = vgg_cnn(chans, image_size=side).double().eval()
    gen = torch.Generator().manual_seed(1)
    xc = torch.randn(cnn_n, 1, side, side, generator=gen, dtype=torch.float64)
    yc = torch.randint(0, 10, (cnn_n,), generator=gen)
    inv_c = torch.arange(cnn_n) % 4
    a, b = as_dict(gram_route(cnn, xc, yc, inv_c)), as_dict(materialised(cnn, xc, yc, inv_c))
    report.check(f"CNN: max |blocks route - materialised (vmap)| / tr Cov(G) (N = {cnn_n})",
                 difference(a, b) / a["total"][0].item(), 1e-8)
    tc = interleaved({"blocks": lambda: gram_route(cnn, xc, yc, inv_c),
                      "vmap, G Gᵀ": lambda: materialised(cnn, xc, yc, inv_c)}, rounds=3 if not SMOKE else 1)
    p_cnn = sum(q.numel() for q in cnn.parameters())
    report.table("CNN: Gram without G vs materialised G", description=f"vgg_cnn({chans}), eval mode, N = {cnn_n}, "
                 f"P = {p_cnn}, float64, median of the rounds",
                 rows=[{"route": "gradient_gram (blocks)", "time (s)": median(tc["blocks"]),
                        "peak memory (MiB)": peak_memory_mib(lambda: gram_route(cnn, xc, yc, inv_c))},
                       {"route": "per_sample_grads (vmap), G Gᵀ", "time (s)": median(tc["vmap, G Gᵀ"]),
                        "peak memory (MiB)": peak_memory_mib(lambda: materialised(cnn, xc, yc, inv_c))}])

    # scaling curves
    ns = [128, 256, 512, 1024, 2048] if not SMOKE else [24, 48]
    series = {k: [None] * len(ns) for k in ("Gram route", "materialised", "loop + explicit",
                                            "Gram route, memory (MiB)", "materialised, memory (MiB)")}
    for i, nv in enumerate(ns):
        args = problem(widths, nv)
        fns = {"Gram route": lambda: gram_route(*args), "materialised": lambda: materialised(*args)}
        if nv <= 512:
            fns["loop + explicit"] = lambda: explicit(*args)
        for label, v in interleaved(fns, rounds=3 if not SMOKE else 1).items():
            series[label][i] = median(v)
        series["Gram route, memory (MiB)"][i] = peak_memory_mib(lambda: gram_route(*args))
        series["materialised, memory (MiB)"][i] = peak_memory_mib(lambda: materialised(*args))
    report.curve("time vs N", description=f"{'-'.join(map(str, widths))}, float64, median of 3", x_label="N", x=ns,
                 series={k: v for k, v in series.items() if "memory" not in k})
    report.curve("peak memory vs N", description=f"{'-'.join(map(str, widths))}, float64, one call each", x_label="N",
                 x=ns, y_label="peak memory (MiB)",
                 series={k.split(",")[0]: v for k, v in series.items() if "memory" in k})
    hidden = [32, 64, 128, 256] if not SMOKE else [4, 8]
    nw = 512 if not SMOKE else 32
    series = {"Gram route": [], "materialised": []}
    for wv in hidden:
        args = problem([widths[0], wv, wv, widths[-1]], nw)
        tt = interleaved({"Gram route": lambda: gram_route(*args), "materialised": lambda: materialised(*args)},
                         rounds=3 if not SMOKE else 1)
        for label, v in tt.items():
            series[label].append(median(v))
    report.curve("time vs width", description=f"{widths[0]}-w-w-{widths[-1]}, N = {nw}, float64, median of 3",
                 x_label="hidden width w", x=hidden, series=series)
    report.write()


if __name__ == "__main__":
    main()
