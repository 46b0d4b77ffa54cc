"""nbsupport.gating as a package: conventions every part keeps (bad input named, one randomness
rule, the global random state untouched, NumPy scalars accepted). The parts' own tests mirror its files:
test_gating_core.py, test_gating_variational.py, test_gating_information.py."""

from copy import deepcopy

import numpy as np
import pytest
import torch

from nbsupport.gating import all_patterns, elbo, log_marginal_likelihood, sample_gates, soft_gates
from nbsupport.models import mlp

from gating_reference import _net


def test_bad_input():
    net, x, y = _net()
    with pytest.raises(ValueError, match="method"):
        log_marginal_likelihood(net, x, y, 1.0, method="vi")
    with pytest.raises(ValueError, match="Linear, ReLU, Linear"):
        log_marginal_likelihood(mlp([3, 4, 4, 2]).double(), x, y, 1.0)
    with pytest.raises(ValueError, match="x must"):
        log_marginal_likelihood(net, x, y[:-1], 1.0)
    with pytest.raises(ValueError, match="m must"):
        all_patterns(17)
    with pytest.raises(ValueError, match="q_probs"):
        elbo(net, x, y, 1.0, torch.full((len(x), 5), 1.5, dtype=torch.float64))


def _global_rng_states():
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available():
        states += [s.clone() for s in torch.cuda.get_rng_state_all()]
    return states


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_sampling_functions_leave_the_global_random_state_untouched(device):
    """CPU and (where present) every CUDA generator: explicit generators only, nothing reseeded."""
    from nbsupport.gating import (ESTIMATORS, GatePosterior, elbo_surrogate, fit_variational,
                                  gate_information_sampled, logit_gradient_estimates,
                                  sampled_gate_grads, train_latent_gates)
    net, x, y = _net((3, 5, 4, 3), n=6, seed=11)
    net, x, y = net.to(device), x.to(device), y.to(device)
    torch.manual_seed(123)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(456)
    before = _global_rng_states()
    sample_gates(torch.full((4,), 0.5, dtype=torch.float64, device=device), 3)
    log_marginal_likelihood(net[:3], x, y, 0.5, method="mc", n_samples=10)
    elbo_surrogate(net[:3], x, y, 0.5, torch.zeros(6, 5, dtype=torch.float64, device=device))
    gate_information_sampled(net[0](x), y, 0.5, 20)
    for estimator in ESTIMATORS:
        logit_gradient_estimates(net[:3], x, y, torch.zeros(6, 5, dtype=torch.float64, device=device),
                                 estimator, n_samples=4, n_repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, _global_rng_states()))
    sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=1)
    sampled_gate_grads(net, x, y, 0.5, n_draws=3, rng=torch.Generator(device=device).manual_seed(3))
    one, x1, y1 = _net((3, 4, 3), n=8, seed=12)
    one, x1, y1 = one.to(device), x1.to(device), y1.to(device)
    log_marginal_likelihood(one, x1, y1, 0.5, method="mc", n_samples=10,
                            generator=torch.Generator(device=device).manual_seed(0))
    q = GatePosterior(3, 4, n_classes=3).double().to(device)
    before_q = _global_rng_states()
    fit_variational(one, q, x1, y1, 0.5, steps=2, batch_size=4, rng=0)
    train_latent_gates(one, x1, y1, 0.5, epochs=1, batch_size=4)
    after = _global_rng_states()
    assert all(torch.equal(a, b) for a, b in zip(before_q, after)) and len(before_q) == len(after)
    assert len(before) == len(before_q)


# --- one randomness convention (issue 25) -------------------------------------------------------

def _sampling_calls(net, x, y):
    """Every sampling function of the package, as f(rng) -> a tensor of its draws or results."""
    from nbsupport.gating import (elbo_surrogate, gate_information_sampled, importance_log_weights,
                                  logit_gradient_estimates, sampled_gate_grads, train_latent_gates)
    z = net[0](x).detach()
    logits = torch.zeros_like(z)

    def trained(rng):
        copy = deepcopy(net)                                              # no fresh initialisation
        result = train_latent_gates(copy, x, y, 0.5, epochs=2, batch_size=3, rng=rng)
        return torch.tensor([r["loss"] for r in result.history])

    return {
        "sample_gates": lambda rng: sample_gates(soft_gates(z, 0.5), 5, rng=rng),
        "mc": lambda rng: log_marginal_likelihood(net, x, y, 0.5, "mc", 20, rng=rng).estimate,
        "is": lambda rng: importance_log_weights(net, x, y, 0.5, torch.full_like(z, 0.5), 20, rng=rng),
        "elbo_surrogate": lambda rng: elbo_surrogate(net, x, y, 0.5, logits, rng=rng),
        "gate_information_sampled": lambda rng: torch.tensor(
            gate_information_sampled(z, y, 0.5, 50, rng=rng).H_A),
        "logit_gradient_estimates": lambda rng: logit_gradient_estimates(
            net, x, y, logits, "disarm", 4, 3, rng=rng),
        "sampled_gate_grads": lambda rng: sampled_gate_grads(net, x, y, 0.5, 3, rng=rng)[0],
        "train_latent_gates": trained,
    }


def test_every_sampling_function_takes_rng_as_int_or_generator_and_never_the_global_state():
    net, x, y = _net((3, 5, 4), n=7, seed=21)
    for name, call in _sampling_calls(net, x, y).items():
        torch.manual_seed(99)
        before = torch.random.get_rng_state()
        same = call(4), call(4)
        assert torch.equal(*same), name                                   # an int seed: reproducible
        assert not torch.equal(call(4), call(5)), name                    # ... and it matters
        g = torch.Generator().manual_seed(4)
        assert torch.equal(call(g), same[0]), name                        # int k = Generator seeded k
        assert not torch.equal(call(g), same[0]), name                    # the generator advanced
        assert torch.equal(call(np.random.default_rng(1)), call(np.random.default_rng(1))), name
        assert torch.equal(torch.random.get_rng_state(), before), name    # global state untouched
        for bad in (None, -1, 1.5, "0"):
            with pytest.raises(ValueError, match="rng"):
                call(bad)


def test_generator_keyword_is_an_alias_of_rng():
    net, x, y = _net((3, 5, 4), n=7, seed=22)
    a = log_marginal_likelihood(net, x, y, 0.5, "mc", 20, generator=torch.Generator().manual_seed(3))
    b = log_marginal_likelihood(net, x, y, 0.5, "mc", 20, rng=3)
    assert torch.equal(a.estimate, b.estimate)
    with pytest.raises(ValueError, match="generator"):
        sample_gates(torch.tensor([0.5]), 2, generator=3)
    assert sample_gates(torch.tensor([0.5]), np.int64(3)).shape == (3, 1)   # numpy counts accepted
    with pytest.raises(ValueError, match="n_samples"):
        sample_gates(torch.tensor([0.5]), True)


def test_numpy_and_tensor_scalars_are_real_temperatures():
    import numpy as np
    net, x, y = _net()
    reference = log_marginal_likelihood(net, x, y, 0.3)
    for tau in (np.float64(0.3), torch.tensor(0.3, dtype=torch.float64)):
        assert torch.equal(log_marginal_likelihood(net, x, y, tau), reference)
    with pytest.raises(ValueError, match="tau must be a finite real number > 0"):
        log_marginal_likelihood(net, x, y, True)
