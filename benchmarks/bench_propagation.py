"""Monte Carlo kernels of random networks: batched over networks vs a Python loop over networks.

Target (issue #8): batched ``empirical_kernels`` >= 10x faster than the loop, in one run.
Also: the default sampler (each layer from its exact Gaussian law given the previous one) against
drawing the Gaussian weight matrices (``sampler="gaussian"``, which chapter 5 uses to *measure* the
independence of neurons); same law, so their kernels agree within Monte Carlo error.
"""

import math

import torch
from _timing import best_of, setup

from nbsupport.propagation import empirical_kernels

DEPTH, WIDTH, N_NETWORKS = 20, 64, 1000


def loop(x: torch.Tensor, C_W: float = 2.0) -> torch.Tensor:
    """One network at a time, one layer at a time: the obvious reference."""
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(DEPTH + 1, len(x), len(x), dtype=torch.float64)
    for _ in range(N_NETWORKS):
        h = x
        total[0] += x @ x.T / x.shape[1]
        for layer in range(DEPTH):
            w = torch.randn(WIDTH, h.shape[1], generator=generator, dtype=torch.float64) * math.sqrt(C_W / h.shape[1])
            z = h @ w.T
            total[layer + 1] += z @ z.T / WIDTH
            h = torch.relu(z)
    return total / N_NETWORKS


if __name__ == "__main__":
    setup()
    x = torch.randn(4, 784, dtype=torch.float64)
    batched = empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS)
    reference = loop(x)
    rel = (torch.linalg.matrix_norm(batched[-1] - reference[-1]) / torch.linalg.matrix_norm(reference[-1])).item()
    t_loop = best_of(lambda: loop(x), repeat=1)
    t_batched = best_of(lambda: empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS))
    print(f"{N_NETWORKS} ReLU networks, depth {DEPTH}, width {WIDTH}, 4 inputs: loop {t_loop:.2f}s, "
          f"batched {t_batched:.3f}s, speed-up {t_loop / t_batched:.1f}x (target >= 10x); "
          f"the two Monte Carlo estimates of G^(L) differ by {rel:.1%} (independent draws)")
    per_c = empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS, per_network=True)
    per_g = empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS, per_network=True,
                              sampler="gaussian", seed=1)
    se = torch.sqrt(per_c.var(0) / N_NETWORKS + per_g.var(0) / N_NETWORKS)
    t_max = ((per_c.mean(0) - per_g.mean(0)).abs() / se.clamp(min=1e-300))[1:].max().item()
    t_cond = best_of(lambda: empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS))
    t_weights = best_of(lambda: empirical_kernels(x, DEPTH, WIDTH, 2.0, activation="relu", n_networks=N_NETWORKS,
                                                  sampler="gaussian"), repeat=1)
    print(f"conditional sampler {t_cond:.3f}s, drawn Gaussian weights {t_weights:.2f}s: "
          f"speed-up {t_weights / t_cond:.1f}x; kernels agree within {t_max:.1f} standard errors")
