"""The shared argument checks accept every kind of real scalar and name the argument otherwise."""

import numpy as np
import pytest
import torch
from torch import nn

from nbsupport._validate import (check_input, check_target, checked_forward, eval_mode, flag, integer, labels,
                                 numpy_rng, pair, real, rows, torch_rng)


@pytest.mark.parametrize("value", [0.5, 1, np.float64(0.5), np.float32(0.5), np.int64(2), torch.tensor(0.5),
                                   torch.tensor(3, dtype=torch.int32), np.array(0.5)])
def test_real_accepts_every_real_scalar(value):
    out = real(value, "tau", low=0)
    assert isinstance(out, float) and out == float(np.asarray(value))


@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor(True), "0.5", None, 1 + 2j, float("nan"),
                                   float("inf"), torch.ones(1), np.ones(2), torch.tensor(1 + 1j)])
def test_real_refuses_what_is_not_a_finite_real_scalar(value):
    with pytest.raises(ValueError, match="tau must be a finite real number"):
        real(value, "tau")


def test_real_bounds_and_message():
    assert real(0.0, "c", low=0, low_inclusive=True) == 0.0
    with pytest.raises(ValueError, match=r"c must be a finite real number > 0, got 0.0"):
        real(0.0, "c", low=0)
    with pytest.raises(ValueError, match=r"p must be a finite real number >= 0 and < 1, got 1"):
        real(1, "p", low=0, low_inclusive=True, high=1, high_inclusive=False)


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3), np.array(3)])
def test_integer_accepts_integer_scalars(value):
    assert integer(value, "n", minimum=1) == 3 and type(integer(value, "n")) is int


@pytest.mark.parametrize("value", [3.0, True, torch.tensor(3.0), 0, "3"])
def test_integer_refuses_floats_bools_and_small_values(value):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        integer(value, "n", minimum=1)


def test_pair():
    assert pair(2, "kernel_size") == (2, 2)
    assert pair((2, np.int64(3)), "kernel_size") == (2, 3)
    with pytest.raises(ValueError, match="kernel_size must be an integer or a pair"):
        pair((1, 2, 3), "kernel_size")


def test_numpy_rng_and_torch_rng_follow_one_rule():
    """An int seeds a fresh generator (same int, same stream), a generator of the right library is
    used as is, one of the other library gives one seed (and advances); None, negative, float and
    bool seeds are refused by name; the global RNGs are never touched."""
    np.random.seed(1)
    torch.manual_seed(1)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    assert numpy_rng(5).random() == np.random.default_rng(5).random()
    assert torch.equal(torch.rand(3, generator=torch_rng(5)),
                       torch.rand(3, generator=torch.Generator().manual_seed(5)))
    g, t = np.random.default_rng(2), torch.Generator().manual_seed(2)
    assert numpy_rng(g) is g and torch_rng(t) is t
    a, b = torch_rng(np.random.default_rng(9)), torch_rng(np.random.default_rng(9))
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    before = t.get_state().clone()
    numpy_rng(t)
    assert not torch.equal(before, t.get_state())  # the torch generator advanced
    assert numpy_rng(torch.Generator().manual_seed(4)).random() == \
        numpy_rng(torch.Generator().manual_seed(4)).random()
    for bad in (None, -1, 0.5, True, "a"):
        with pytest.raises(ValueError, match="seed"):
            numpy_rng(bad, "seed")
        with pytest.raises(ValueError, match="rng"):
            torch_rng(bad)
    assert torch_rng(7, generator=t) is t  # generator= (DESIGN.md's keyword) takes rng's place
    with pytest.raises(ValueError, match="generator"):
        torch_rng(0, generator=3)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_torch_rng_refuses_a_generator_on_another_device():
    with pytest.raises(ValueError, match="rng"):
        torch_rng(torch.Generator(), "cuda")


def test_rows_and_labels_accept_their_shapes_and_name_what_is_wrong():
    x = torch.ones(3, 2, dtype=torch.float32)
    assert rows(x).dtype == torch.float64 and torch.equal(rows(x), x.double())
    assert torch.equal(labels(torch.tensor([0, 2, 1], dtype=torch.int32), 3), torch.tensor([0, 2, 1]))
    for bad in (torch.ones(3, dtype=torch.float64), torch.ones(3, 2, dtype=torch.long), np.ones((3, 2)),
                torch.tensor([[1.0, float("nan")]])):
        with pytest.raises(ValueError, match="grads"):
            rows(bad, "grads")
    for bad, n in ((torch.tensor([0.0, 1.0]), 2), (torch.tensor([True, False]), 2), (torch.tensor([0, 1]), 3),
                   (torch.tensor([0, -1]), 2), ([0, 1], 2)):
        with pytest.raises(ValueError, match="strata"):
            labels(bad, n, "strata")


def _sweep_cases():
    """Every drawing public function of the modules that follow the rng rule here, on small input:
    name -> (call(rng) -> result, the argument's name)."""
    from nbsupport import nulls, orthant, propagation, stats, subspaces
    from nbsupport.data import make_moons
    from nbsupport.models import init_normal_, mlp

    g = torch.Generator().manual_seed(0)
    values = torch.randn(40, 3, generator=g, dtype=torch.float64)
    inverse = torch.arange(40) % 4
    gram = values @ values.T
    # three units in three dimensions: orthant probabilities of dimension 3, by quasi-Monte Carlo
    w, b = np.array([[1.0, 0.5, 0.2], [-0.3, 1.0, 0.4], [0.2, -0.6, 1.0]]), np.array([0.1, -0.2, 0.3])
    mean, cov = np.zeros(3), np.eye(3) + 0.3
    ws, bs = [w, np.ones((1, 3))], [b, np.zeros(1)]
    sup = orthant.support_search(ws, bs, mean, cov, rng=0)
    x = values[:4]

    def params(seed):
        with torch.random.fork_rng():  # nn.Linear's own default initialisation draws from the global RNG
            model = mlp([3, 4, 2])
        return torch.cat([p.detach().flatten() for p in init_normal_(model, 2.0, 0.1, seed=seed).parameters()])
    return {
        "subspaces.random_subset_angles": (lambda r: subspaces.random_subset_angles(values, 10, 1, 5, rng=r), "rng"),
        "subspaces.random_subset_largest_angles": (
            lambda r: subspaces.random_subset_largest_angles(values, 10, [1], 5, rng=r), "rng"),
        "nulls.random_grouping_null": (lambda r: nulls.random_grouping_null(values, inverse, 5, rng=r), "rng"),
        "nulls.random_grouping_null_gram": (lambda r: nulls.random_grouping_null_gram(gram, inverse, 5, rng=r), "rng"),
        "nulls.hyperplane_partition": (lambda r: nulls.hyperplane_partition(values, 4, rng=r), "rng"),
        "nulls.kmeans_partition": (lambda r: nulls.kmeans_partition(values, 4, rng=r), "rng"),
        "nulls.random_subset_top_fraction": (
            lambda r: nulls.random_subset_top_fraction(gram, 10, 1, 5, rng=r), "rng"),
        "propagation.empirical_kernels": (lambda r: propagation.empirical_kernels(x, 2, 8, 1.0, n_networks=3, rng=r), "rng"),
        "propagation.preactivations": (lambda r: propagation.preactivations(x, 2, 8, 1.0, n_networks=3, rng=r), "rng"),
        "propagation.gradient_norms": (lambda r: propagation.gradient_norms(x, 2, 8, 1.0, n_networks=3, rng=r), "rng"),
        "propagation.linear_kernels_wishart": (lambda r: propagation.linear_kernels_wishart(
            torch.eye(2, dtype=torch.float64), 2, 8, n_networks=3, rng=r), "rng"),
        "stats.hierarchical_bootstrap": (
            lambda r: tuple(stats.hierarchical_bootstrap(values[:8], n_boot=100, rng=r)), "rng"),
        "stats.equivalence": (lambda r: tuple(stats.equivalence(values[:8], 1.0, n_boot=100, rng=r)), "rng"),
        "orthant.orthant_probability": (
            lambda r: orthant.orthant_probability(np.zeros(3), np.eye(3) + 0.5, method="polytope", rng=r), "rng"),

        "orthant.pattern_pmf": (lambda r: orthant.pattern_pmf(w, b, mean, cov, method="orthant", rng=r), "rng"),
        "orthant.output_cdf": (lambda r: orthant.output_cdf(ws, bs, mean, cov, [0.0, 1.0], sup, rng=r), "rng"),
        "orthant.mc_pattern_pmf": (lambda r: orthant.mc_pattern_pmf(w, b, mean, cov, 200, r), "seed"),
        "orthant.mc_network_pmf": (lambda r: orthant.mc_network_pmf(ws, bs, mean, cov, 200, r), "seed"),
        "data.make_moons": (lambda r: make_moons(20, 0.1, r), "seed"),
        "models.init_normal_": (params, "seed"),
    }


def _same(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_every_drawing_function_follows_the_rng_rule():
    """Issue 25, per function: an int seed gives the same result twice, a numpy or a torch generator
    is accepted and advanced, None is refused naming the argument, and neither the global torch,
    numpy nor Python random state moves."""
    import random
    import warnings

    for name, (call, arg) in _sweep_cases().items():
        states = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MassWarning of a small support search is not the point
            first = call(0)
            assert _same(first, call(0)), name
            for make in (lambda: np.random.default_rng(3), lambda: torch.Generator().manual_seed(3)):
                gen = make()
                one = call(gen)
                assert not _same(one, call(gen)), f"{name}: the generator was not advanced"
            with pytest.raises(ValueError, match=arg):
                call(None)
        after = (torch.random.get_rng_state(), np.random.get_state()[1], random.getstate())
        assert torch.equal(states[0], after[0]) and np.array_equal(states[1], after[1]) and states[2] == after[2], name


def test_public_functions_name_a_wrong_argument_with_a_valueerror():
    """Issue 25: what a fuzz of the public functions found surfacing as AttributeError or TypeError
    (a string where a tensor, a model, an array or a frame belongs) is a ValueError naming it."""
    from nbsupport import models, orthant, propagation, report, subspaces
    from nbsupport.orthant import mlp_layers
    from nbsupport.plotting import forest, pattern_regions
    from nbsupport.patterns import path_correlation

    cases = [(lambda: subspaces.basis_angles("a", torch.eye(2)), "basis_a"),
             (lambda: subspaces.basis_angles(torch.eye(3), torch.eye(2)), "basis_a"),
             (lambda: path_correlation("ab", "ab"), "gates_a"),
             (lambda: propagation.relu_correlation_map("x"), "c"),
             (lambda: propagation.fit_decay("abc", [1, 2, 3]), "layers"),
             (lambda: propagation.fit_decay([1, 2, 3], ["a", "b", "c"]), "values"),
             (lambda: propagation.fit_next_order([1, 2, [3]], [1, 2, 3]), "layers"),
             (lambda: models.auto_method("mlp"), "model"),
             (lambda: models.config_hash("mlp", []), "model"),
             (lambda: models.module_code_key(None), "model"),
             (lambda: mlp_layers("mlp"), "model"),
             (lambda: models.vgg_cnn("ab"), "channels"),
             (lambda: models.vgg_cnn((4, 0)), "channels"),
             (lambda: models.small_resnet((4,), n_classes=True), "n_classes"),
             (lambda: models.vgg_cnn((4, 4, 4), image_size=4), "image_size"),
             (lambda: report.table_html("frame", "t"), "frame"),
             (lambda: report.check(None, "m"), "row_ids"),
             (lambda: models.mlp(None), "widths"),
             (lambda: forest(None), "verdicts"),
             (lambda: pattern_regions(None, None, (0, 1, 0, 1)), "model"),
             (lambda: pattern_regions(None, models.mlp([2, 3]), "abcd"), "extent"),
             (lambda: orthant.support_search(None, None, [0.0], [[1.0]]), "weights"),
             (lambda: orthant.region(np.eye(2), np.zeros(2), [True, False]), "weights")]
    for call, word in cases:
        with pytest.raises(ValueError, match=word):
            call()
    # and what they accept still works: numpy ints, lists, tensors
    assert models.vgg_cnn(np.array([4, 8]), n_classes=np.int64(3), image_size=8)(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    torch.testing.assert_close(propagation.relu_correlation_map([1.0, 0.0]).double(),
                               torch.tensor([1.0, 1 / torch.pi], dtype=torch.float64))


def test_eval_mode_names_the_layer_and_the_fix():
    """BatchNorm and dropout (p > 0) in training mode are refused, naming the layer and
    model.eval(); a train-mode model without them, a p = 0 dropout and eval mode pass."""
    for layer, kind in ((nn.BatchNorm1d(3), "BatchNorm1d"), (nn.Dropout(0.2), "Dropout"),
                        (nn.AlphaDropout(0.1), "AlphaDropout"), (nn.Dropout2d(0.3), "Dropout2d")):
        net = nn.Sequential(nn.Linear(2, 3), layer)
        with pytest.raises(ValueError, match=rf"{kind} layer '1'.*net\.eval\(\)"):
            eval_mode(net, "net")
        assert eval_mode(net.eval()) is net
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(0.0))  # training, but nothing mode-dependent
    assert plain.training and eval_mode(plain) is plain
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        eval_mode("net")


@pytest.mark.parametrize("target", [2, np.int64(2), np.int32(2), np.uint8(2), torch.tensor(2), np.array(2),
                                    torch.tensor([2, 2, 2], dtype=torch.int32), np.array([2, 2, 2])])
def test_check_target_accepts_python_numpy_and_torch_integers(target):
    got = check_target(target, 3, 5)
    assert got.dtype == torch.long and torch.equal(got, torch.tensor([2, 2, 2]))


@pytest.mark.parametrize("target", [True, np.bool_(False), 2.0, np.float64(2.0), torch.tensor(2.0),
                                    torch.tensor([1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.0]),
                                    torch.tensor([True, False, True]), np.array([True, False, True]),
                                    [1, 2, 0], "1", None, 1 + 0j])
def test_check_target_refuses_booleans_floats_and_the_rest(target):
    with pytest.raises(ValueError, match="label must be an int"):
        check_target(target, 3, 5, name="label")


def test_check_target_shape_and_range_and_check_input():
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        check_target(torch.tensor([1, 2]), 3, 5)
    for bad in (5, -1, np.array([0, 1, 5])):
        with pytest.raises(ValueError, match=r"target must lie in \[0, 5\)"):
            check_target(bad, 3, 5)
    x = torch.zeros(2, 3)
    assert check_input(x) is x
    for bad in (torch.zeros(3), torch.zeros(2, 3, dtype=torch.long), np.zeros((2, 3)), [[0.0]]):
        with pytest.raises(ValueError, match="images must be a floating tensor"):
            check_input(bad, "images")


def test_checked_forward_translates_only_shape_errors():
    net = nn.Linear(4, 2)
    torch.testing.assert_close(checked_forward(net, torch.ones(3, 4)), net(torch.ones(3, 4)))
    with pytest.raises(ValueError, match=r"x of shape \(3, 5\) does not fit the model"):
        checked_forward(net, torch.ones(3, 5))

    class Fails(nn.Module):
        def __init__(self, err):
            super().__init__()
            self.err = err

        def forward(self, x):
            raise self.err

    for err in (RuntimeError("CUDA out of memory"), NotImplementedError("no rule"), KeyError("k")):
        with pytest.raises(type(err)):
            checked_forward(Fails(err), torch.ones(1, 1))


def test_flag_takes_python_and_numpy_booleans_only():
    assert flag(True, "f") is True and flag(np.bool_(False), "f") is False
    for bad in (0, 1, "True", None, torch.tensor(True)):
        with pytest.raises(ValueError, match="detach must be True or False"):
            flag(bad, "detach")
