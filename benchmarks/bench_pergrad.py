"""Per-sample gradients as an N x P matrix: ours against the peers, the loop and the memory floor.

Figures (all ratios of times measured round by round in one run; the median over rounds decides):

* ours / fastest peer (Opacus ``GradSampleModule``, BackPACK ``BatchGrad``), 784-64-64-10, N = 1024,
  float32, same model weights, same output (the N x P matrix in ``model.parameters()`` order):
  target <= 0.7 (issue 17). Peers are optional (``pip install '.[bench]'``) and skipped with a note.
* ours / memory floor, where the floor is allocating N x P floats and writing each once
  (``torch.empty(N, P).fill_(1)``): target <= 2 (issue 17); and the same with a preallocated buffer
  (``out=``) against ``buffer.fill_(1)``.
* speed-up over the source's per-sample loop: >= 4x at 784-64-64-10 and >= 20x for a 2-16-16-2
  toy net, N = 1024 (issue 4).

Correctness: ours equals both peers and the loop to 1e-6 (float32) before anything is timed.
Scaling curves: time against N (784-64-64-10) and against the hidden width (N = 1024).
"""

import warnings

import torch
import torch.nn.functional as F
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.models import mlp
from nbsupport.pergrad import per_sample_grads, per_sample_grads_loop

warnings.filterwarnings("ignore")  # the peers warn about their own defaults; nothing here depends on it


def peers():
    """Constructors of the installed peers: name -> f(net, x, y) returning a zero-argument N x P route."""
    found, missing = {}, {}
    try:
        from opacus import GradSampleModule

        def opacus_route(net, x, y):
            gsm = GradSampleModule(mlp_like(net), loss_reduction="sum")

            def run():
                for p in gsm.parameters():
                    p.grad, p.grad_sample = None, None
                F.cross_entropy(gsm(x), y, reduction="sum").backward()
                return torch.cat([p.grad_sample.reshape(len(x), -1) for p in gsm.parameters()], 1)
            return run
        found["Opacus"] = opacus_route
    except ImportError as err:
        missing["Opacus"] = f"not installed ({err}); pip install '.[bench]'"
    try:
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        def backpack_route(net, x, y):
            model, loss = extend(mlp_like(net)), extend(torch.nn.CrossEntropyLoss(reduction="sum"))

            def run():
                for p in model.parameters():
                    p.grad = None
                with backpack(BatchGrad()):
                    loss(model(x), y).backward()
                return torch.cat([p.grad_batch.reshape(len(x), -1) for p in model.parameters()], 1)
            return run
        found["BackPACK"] = backpack_route
    except ImportError as err:
        missing["BackPACK"] = f"not installed ({err}); pip install '.[bench]'"
    return found, missing


def mlp_like(net):
    """A fresh copy of ``net`` with the same weights (each peer wraps or extends its own copy)."""
    widths = [net[0].in_features] + [m.out_features for m in net if isinstance(m, torch.nn.Linear)]
    copy = mlp(widths).to(next(net.parameters()).dtype)
    copy.load_state_dict(net.state_dict())
    return copy


def problem(widths, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp(widths)
    x = torch.randn(n, widths[0], generator=g)
    y = torch.randint(0, widths[-1], (n,), generator=g)
    return net, x, y


def routes(net, x, y, peer_makers, with_floor=True, with_vmap=False):
    n, p = len(x), sum(q.numel() for q in net.parameters())
    fns = {"ours": lambda: per_sample_grads(net, F.cross_entropy, x, y)}
    if with_vmap:
        fns["torch.func vmap"] = lambda: per_sample_grads(net, F.cross_entropy, x, y, method="vmap")
    for name, make in peer_makers.items():
        fns[name] = make(net, x, y)
    if with_floor:
        fns["write N x P (floor)"] = lambda: torch.empty(n, p).fill_(1.0)
    return fns


def main():
    setup()
    report = Report(__file__, "Per-sample gradients (N x P) against Opacus, BackPACK, the loop and the memory floor")
    peer_makers, missing = peers()
    for name, reason in missing.items():
        report.skip(f"{name} comparison", reason)
    widths, n = ([784, 64, 64, 10], 1024) if not SMOKE else ([20, 8, 8, 3], 64)
    rounds = 7 if not SMOKE else 2
    net, x, y = problem(widths, n)
    ours = per_sample_grads(net, F.cross_entropy, x, y)
    shape = f"{'-'.join(map(str, widths))}, N = {n}, P = {ours.shape[1]}, float32"

    # correctness first: the same matrix from every route
    loop_ref = per_sample_grads_loop(net, F.cross_entropy, x, y)
    report.check(f"max |ours - loop| ({shape})", (ours - loop_ref).abs().max().item(), 1e-6)
    for name, make in peer_makers.items():
        report.check(f"max |ours - {name}| ({shape})", (ours - make(net, x, y)()).abs().max().item(), 1e-6)

    # main point: ours, the peers, the floor, and ours / floor with a preallocated buffer
    buf, floor_buf = torch.empty_like(ours), torch.empty_like(ours)
    fns = routes(net, x, y, peer_makers, with_vmap=True)
    fns["ours, out= buffer"] = lambda: per_sample_grads(net, F.cross_entropy, x, y, out=buf)
    fns["fill a buffer (floor)"] = lambda: floor_buf.fill_(1.0)
    del ours, loop_ref
    t = interleaved(fns, rounds=rounds)
    if peer_makers:
        fastest = [min(t[name][r] for name in peer_makers) for r in range(rounds)]
        report.figure("ours vs the fastest peer", description=f"N x P per-sample gradients, {shape}",
                      ours="ours", baseline="fastest of " + " and ".join(peer_makers), op="<=", target=0.7,
                      ratios=ratio_stats(t["ours"], fastest),
                      note="per round, the faster peer of that round; peers' times include concatenating "
                           "their per-parameter tensors into the N x P matrix")
    report.figure("ours vs writing N x P floats", description=f"fresh output, {shape}", ours="ours",
                  baseline="torch.empty(N, P).fill_(1)", op="<=", target=2.0,
                  ratios=ratio_stats(t["ours"], t["write N x P (floor)"]))
    report.figure("ours (out= buffer) vs filling the buffer", description=f"preallocated output, {shape}",
                  ours="ours, out= buffer", baseline="buffer.fill_(1)", op="<=", target=2.0,
                  ratios=ratio_stats(t["ours, out= buffer"], t["fill a buffer (floor)"]),
                  note="our own target; reusing a buffer avoids the operating system's zero fill of new pages")
    report.table("times at the main point", description=f"seconds over {rounds} interleaved rounds, {shape}",
                 rows=[{"route": k, "median (s)": sorted(v)[len(v) // 2], "min (s)": min(v)} for k, v in t.items()])
    del buf, floor_buf

    # the source's loop (issue 4's figures): fewer rounds, it is slow
    for w in ([784, 64, 64, 10], [2, 16, 16, 2]) if not SMOKE else ([20, 8, 8, 3], [2, 4, 4, 2]):
        net_w, x_w, y_w = problem(w, n)
        tl = interleaved({"loop": lambda: per_sample_grads_loop(net_w, F.cross_entropy, x_w, y_w),
                          "ours": lambda: per_sample_grads(net_w, F.cross_entropy, x_w, y_w)},
                         rounds=3 if not SMOKE else 1, warmup=False)
        report.figure(f"speed-up over the loop, {'-'.join(map(str, w))}", description=f"N = {n}, float32",
                      ours="loop", baseline="ours", op=">=", target=4.0 if w[0] > 2 else 20.0,
                      ratios=ratio_stats(tl["loop"], tl["ours"]), note="a speed-up: loop time / our time")

    # scaling curves (5 rounds per point, median)
    def curve(name, description, x_label, xs, make):
        series = {}
        for xv in xs:
            fns = make(xv)
            tt = interleaved(fns, rounds=5 if not SMOKE else 1)
            for label, v in tt.items():
                series.setdefault(label, [None] * len(xs))[xs.index(xv)] = sorted(v)[len(v) // 2]
        report.curve(name, description=description, x_label=x_label, x=list(xs), series=series)

    ns = [64, 128, 256, 512, 1024, 2048] if not SMOKE else [16, 32]
    curve("time vs N", f"{'-'.join(map(str, widths))}, float32, median of 5", "N", ns,
          lambda nv: routes(*problem(widths, nv), peer_makers, with_vmap=True))
    hidden = [16, 32, 64, 128, 256] if not SMOKE else [4, 8]
    curve("time vs width", f"{widths[0]}-w-w-{widths[-1]}, N = {n}, float32, median of 5", "hidden width w",
          hidden, lambda wv: routes(*problem([widths[0], wv, wv, widths[-1]], n), peer_makers))
    report.write()


if __name__ == "__main__":
    main()
