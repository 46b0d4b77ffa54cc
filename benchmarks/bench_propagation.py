"""Monte Carlo kernels of random networks: batched over networks vs a Python loop over networks.

Figures (issue 8; ratios measured in one run, median over rounds):

* batched ``empirical_kernels`` against one network and one layer at a time: speed-up >= 10;
* the default sampler (each layer drawn from its exact Gaussian law given the previous one) against
  drawing the Gaussian weight matrices (``sampler="gaussian"``, which chapter 5 uses to *measure*
  the independence of neurons): same law, so their kernels agree within Monte Carlo error (checked,
  at most 4.5 standard errors), and the conditional sampler is faster (>= 2).

Scaling curve: time against the number of networks.
"""

import math

import torch
from _timing import SMOKE, Report, interleaved, ratio_stats, setup

from nbsupport.propagation import empirical_kernels

DEPTH, WIDTH = (20, 64) if not SMOKE else (4, 16)
N_NETWORKS = 1000 if not SMOKE else 50
CURVE = (100, 300, 1000, 3000) if not SMOKE else (10, 20)
ROUNDS = 3 if not SMOKE else 1


def loop(x: torch.Tensor, n_networks: int, C_W: float = 2.0) -> torch.Tensor:
    """One network at a time, one layer at a time: the obvious reference."""
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(DEPTH + 1, len(x), len(x), dtype=torch.float64)
    for _ in range(n_networks):
        h = x
        total[0] += x @ x.T / x.shape[1]
        for layer in range(DEPTH):
            w = torch.randn(WIDTH, h.shape[1], generator=generator, dtype=torch.float64) * math.sqrt(C_W / h.shape[1])
            z = h @ w.T
            total[layer + 1] += z @ z.T / WIDTH
            h = torch.relu(z)
    return total / n_networks


def batched(x, n_networks, **kwargs):
    return empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=n_networks, **kwargs)


def main():
    setup()
    report = Report(__file__, "Monte Carlo kernels of random networks")
    x = torch.randn(4, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(12345))  # not the loop's seed
    per_c = batched(x, N_NETWORKS, per_network=True)
    per_g = batched(x, N_NETWORKS, per_network=True, sampler="gaussian", rng=1)
    se = torch.sqrt(per_c.var(0) / N_NETWORKS + per_g.var(0) / N_NETWORKS)
    t_max = ((per_c.mean(0) - per_g.mean(0)).abs() / se.clamp(min=1e-300))[1:].max().item()
    report.check("max |conditional - drawn weights| of the kernels, in standard errors", t_max, 4.5)
    se_loop = torch.sqrt(2 * per_c.var(0) / N_NETWORKS)
    z_loop = ((loop(x, N_NETWORKS) - per_c.mean(0)).abs() / se_loop.clamp(min=1e-300))[1:].max().item()
    report.check("max |loop - batched| of the kernels, in standard errors", z_loop, 4.5)

    t = interleaved({"loop": lambda: loop(x, N_NETWORKS), "batched": lambda: batched(x, N_NETWORKS)}, rounds=ROUNDS)
    report.figure(f"{N_NETWORKS} ReLU networks, depth {DEPTH}, width {WIDTH}", description=(
        "Monte Carlo kernels G^(l) of 4 inputs: a loop over networks and layers over the batched sampler"),
        ours="batched", baseline="loop over networks", op=">=", target=10.0, ratios=ratio_stats(t["loop"], t["batched"]))
    t = interleaved({"weights": lambda: batched(x, N_NETWORKS, sampler="gaussian"),
                     "conditional": lambda: batched(x, N_NETWORKS)}, rounds=ROUNDS)
    report.figure("conditional sampler vs drawn weight matrices", description=(
        "the same law of the kernels; drawing each layer given the previous one skips the weight matrices"),
        ours="conditional sampler", baseline="drawn Gaussian weights", op=">=", target=2.0,
        ratios=ratio_stats(t["weights"], t["conditional"]))
    series = {"batched": [], "drawn weights": [], "loop": []}
    for n in CURVE:
        t = interleaved({"batched": lambda: batched(x, n), "drawn weights": lambda: batched(x, n, sampler="gaussian"),
                         "loop": lambda: loop(x, n)}, rounds=1, warmup=False)
        for name in series:
            series[name].append(min(t[name]))
    report.curve("time vs networks", description=f"ReLU, depth {DEPTH}, width {WIDTH}, 4 inputs",
                 x_label="networks", x=list(CURVE), series=series)
    report.write()


if __name__ == "__main__":
    main()
