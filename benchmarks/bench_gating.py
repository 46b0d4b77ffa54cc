"""Exact log marginal likelihood over all 2**m gate patterns: batched vs a Python loop over patterns.

Figure (issue 5; ratio measured in one run): log P(y|x) for m = 16 hidden units on N = 1 000
samples, 784 inputs, 10 classes, float64, batched over patterns and data (the class normaliser is
factorised over the low and high halves of the pattern code) against a per-pattern loop with a
running log-sum-exp, the obvious reference: speed-up >= 4. Both agree to 1e-10 (checked).
Scaling curve: time against the number of units m (the loop grows as 2**m, so does the batch).

Cost: one thread (the loop's 2**16 small steps wait for a descheduled second thread on a shared
machine: 4x slower with two threads there), the loop's output for the check is its warm-up, and the
curve's last point reuses the figure's rounds, so the loop runs 1 + ROUNDS times at m = 16 (about 25 s
each on one core): a few minutes in all. The spread of the rounds' ratios is in the result.
"""

import torch
import torch.nn.functional as F
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.gating import all_patterns, log_marginal_likelihood
from nbsupport.models import mlp

D, K, TAU = 784, 10, 0.5
N, M = (1000, 16) if not SMOKE else (100, 8)
CURVE_M = (8, 10, 12, 14, 16) if not SMOKE else (4, 6)
ROUNDS = 3 if not SMOKE else 1


def loop(net: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """One pattern at a time, accumulating a running log-sum-exp over patterns: the obvious reference."""
    z = net[0](x)
    log_on, log_off = F.logsigmoid(z / TAU), F.logsigmoid(-z / TAU)
    total = torch.full((len(x),), -torch.inf, dtype=x.dtype)
    for a in all_patterns(m):
        log_prior = (log_on * a + log_off * (1 - a)).sum(1)
        log_lik = F.log_softmax(net[2](z * a), 1).gather(1, y.view(-1, 1)).squeeze(1)
        total = torch.logaddexp(total, log_lik + log_prior)
    return total


def problem(m: int, n: int):
    g = torch.Generator().manual_seed(m)
    torch.manual_seed(m)
    net = mlp([D, m, K]).double()
    return net, torch.randn(n, D, dtype=torch.float64, generator=g), torch.randint(0, K, (n,), generator=g)


@torch.no_grad()
def main():
    setup(threads=1)
    report = Report(__file__, "Exact marginal likelihood of the latent-gate model")
    net, x, y = problem(M, N)
    # the check's calls are the warm-up of both routes
    report.check(f"max |batched - loop| of log P(y|x), m = {M}, N = {N}",
                 float((log_marginal_likelihood(net, x, y, TAU) - loop(net, x, y, M)).abs().max()), 1e-10)
    main_t = interleaved({"loop": lambda: loop(net, x, y, M),
                          "batched": lambda: log_marginal_likelihood(net, x, y, TAU)}, rounds=ROUNDS, warmup=False)
    report.figure(f"exact log P(y|x), m = {M}, N = {N}", description=(
        f"all 2^{M} patterns, {D} inputs, {K} classes, float64: per-pattern loop over batched enumeration"),
        ours="batched", baseline="per-pattern loop", op=">=", target=4.0, ratios=ratio_stats(main_t["loop"], main_t["batched"]))
    series = {"batched": [], "per-pattern loop": []}
    for m in CURVE_M:
        if m == M:  # measured above
            series["batched"].append(min(main_t["batched"]))
            series["per-pattern loop"].append(min(main_t["loop"]))
            continue
        net, x, y = problem(m, N)
        t = interleaved({"loop": lambda: loop(net, x, y, m), "batched": lambda: log_marginal_likelihood(net, x, y, TAU)},
                        rounds=1)
        series["batched"].append(min(t["batched"]))
        series["per-pattern loop"].append(min(t["loop"]))
    report.curve("time vs hidden units", description=f"exact log P(y|x) on N = {N} samples, float64",
                 x_label="hidden units m (2^m patterns)", x=list(CURVE_M), series=series)
    report.write()


if __name__ == "__main__":
    main()
