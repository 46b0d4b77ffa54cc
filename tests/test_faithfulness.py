"""nbsupport.faithfulness against plain loops, closed forms on linear models, scipy and Captum."""

import math

import numpy as np
import pytest
import scipy.sparse.linalg
import scipy.stats
import torch
from torch import nn

from nbsupport.attribution import gradient_x_input, image_map, integrated_gradients, random_map
from nbsupport.faithfulness import (contribution, curve_auc, deletion_insertion, dot_scores, evaluate_methods,
                                    explained_share, faithfulness_correlation, infidelity, linear_imputation,
                                    max_sensitivity, road)
from nbsupport.map_statistics import gaussian_blur, rank_correlation
from nbsupport.randomisation import randomise_top_layers
from nbsupport.saliency import input_gradient
from attribution_nets import _images, _linear, _seeded_cnn


def _loop_curves(model, x, target, attribution, n_steps, baseline):
    """One image and one step at a time, pixels sorted in Python; ``baseline`` a number or a
    tensor shaped like ``x`` (one baseline image per sample)."""
    n, c, h, w = x.shape
    dele = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    ins = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    for i in range(n):
        base = baseline[i] if isinstance(baseline, torch.Tensor) else torch.full_like(x[i], baseline)
        score = attribution[i].sum(0).flatten().tolist()
        order = sorted(range(h * w), key=lambda p: -score[p])  # stable: ties keep pixel order
        for j in range(n_steps + 1):
            k = round(j * h * w / n_steps)
            xd, xi = x[i].clone(), base.clone()
            for p in order[:k]:
                xd[:, p // w, p % w] = base[:, p // w, p % w]
                xi[:, p // w, p % w] = x[i][:, p // w, p % w]
            with torch.no_grad():
                dele[i, j] = model(xd[None]).softmax(1)[0, target[i]]
                ins[i, j] = model(xi[None]).softmax(1)[0, target[i]]
    return dele, ins


def _loop_auc(curve):
    """The trapezoid rule on an evenly spaced grid from 0 to 1, in plain Python."""
    values = curve.tolist()
    step = 1 / (len(values) - 1)
    return sum((a + b) / 2 * step for a, b in zip(values[:-1], values[1:]))


def _hand_randomised(model, n_layers, seed):
    """A copy whose last ``n_layers`` Linear/Conv2d layers (definition order) get weights and bias
    uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)], drawn in float64 from one seeded generator in
    definition order, weight before bias: the law randomise_top_layers documents, by hand."""
    import copy

    clone = copy.deepcopy(model)
    layers = [m for m in clone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-n_layers:]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.weight[0].numel()
            for param in (p for p in (layer.weight, layer.bias) if p is not None):
                u = torch.rand(param.shape, generator=g, dtype=torch.float64)
                param.copy_((2 * u - 1) / math.sqrt(fan_in))
    return clone


def _spearman_rows(a, b):
    """scipy's Spearman correlation of |a[n]| and |b[n]|, sample by sample."""
    return torch.tensor([scipy.stats.spearmanr(a[n].abs().flatten().numpy(), b[n].abs().flatten().numpy()).statistic
                         for n in range(len(a))], dtype=torch.float64)


def test_deletion_insertion_match_a_loop():
    cnn = _seeded_cnn(4)
    x = _images(2, c=1, side=8)
    target = torch.tensor([2, 7])
    attribution = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    attribution[0, 0, :2] = 0.0  # ties
    curves = deletion_insertion(cnn, x, target, attribution, n_steps=5, baseline=0.25)
    dele, ins = _loop_curves(cnn, x, target, attribution, 5, 0.25)
    torch.testing.assert_close(curves.deletion, dele)
    torch.testing.assert_close(curves.insertion, ins)
    torch.testing.assert_close(curves.deletion[:, -1], curves.insertion[:, 0])  # all deleted == nothing inserted
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1
    with pytest.raises(ValueError, match="attribution"):
        deletion_insertion(cnn, x, target, attribution[:, :, :4])
    with pytest.raises(ValueError, match="n_steps"):
        deletion_insertion(cnn, x, target, attribution, n_steps=0)


def test_curve_auc_is_the_trapezoid():
    f = torch.linspace(0, 1, 11, dtype=torch.float64)
    curves = torch.stack([f, f**2, torch.ones_like(f)])
    torch.testing.assert_close(curve_auc(f, curves), torch.tensor([0.5, 0.335, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="curves"):
        curve_auc(f, curves[:, :5])


def test_infidelity_closed_form_on_a_linear_model():
    # f_c(x) = w.x + b: with I ~ N(0, s^2), the optimal beta gives s^2 (|w|^2 - (a.w)^2 / |a|^2) per sample
    lin = _linear(side=3)
    x = _images(2, side=3)
    w = lin[1].weight[1].detach()
    grad = input_gradient(lin, x, 1)
    exact0 = infidelity(lin, x, 1, grad, noise_std=0.2, n_samples=64)
    scale = 0.04 * float(w @ w)  # E[(f(x) - f(x - I))^2]
    assert float(exact0.abs().max()) < 1e-12 * scale
    assert float(infidelity(lin, x, 1, 3.0 * grad, noise_std=0.2).abs().max()) < 1e-12 * scale
    a = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    n = 4000
    got = infidelity(lin, x, 1, a, noise_std=0.2, n_samples=n, rng=1)
    af = a.flatten(1)
    expected = 0.04 * (w @ w - (af @ w) ** 2 / (af * af).sum(1))
    # the residual beta I.a - I.w is Gaussian, so its square has relative sd sqrt(2): 5 standard errors
    tol = 5 * math.sqrt(2 / n)
    assert bool(((got / expected - 1).abs() < tol).all()), (got, expected, tol)
    with pytest.raises(ValueError, match="noise_std"):
        infidelity(lin, x, 1, a, noise_std=0.0)
    with pytest.raises(ValueError, match="attribution"):
        infidelity(lin, x, 1, a[:1])


def test_max_sensitivity_bounds_on_a_linear_model():
    lin = _linear(side=3)
    x = _images(3, side=3) + 0.5
    assert float(max_sensitivity(lin, x, 0, input_gradient, radius=0.1).abs().max()) < 1e-12  # constant gradient
    # gradient x input: a(x + d) - a(x) = w * d, so the ratio is <= r |w| / |w * x| and close to it for many draws
    r = 0.1
    w = lin[1].weight[0].detach()
    bound = r * w.norm() / (w * x.flatten(1)).norm(dim=1)
    got = max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, rng=2)
    assert bool((got <= bound + 1e-12).all() and (got >= 0.6 * bound).all()), (got, bound)
    assert torch.equal(got, max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, rng=2))
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(lin, x, 0, input_gradient, radius=0.0)


def test_deletion_insertion_with_tensor_baselines_match_a_loop():
    cnn = _seeded_cnn(1)
    x = _images(2, c=1, side=8)
    target = torch.tensor([3, 1])
    attribution = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    mean_image = _images(1, side=8, seed=9)[0]
    blurred = gaussian_blur(x, 1.0)
    for base in (mean_image, blurred):
        curves = deletion_insertion(cnn, x, target, attribution, n_steps=4, baseline=base)
        for i in range(2):
            b = base if base.ndim == 3 else base[i]
            order = sorted(range(64), key=lambda p: -float(attribution[i, 0].flatten()[p]))
            for j, k in enumerate([0, 16, 32, 48, 64]):
                mask = torch.zeros(64, dtype=torch.bool)
                mask[order[:k]] = True
                mask = mask.reshape(1, 8, 8)
                xd, xi = torch.where(mask, b, x[i]), torch.where(mask, x[i], b)
                with torch.no_grad():
                    assert math.isclose(float(curves.deletion[i, j]), float(cnn(xd[None]).softmax(1)[0, target[i]]),
                                        rel_tol=1e-12)
                    assert math.isclose(float(curves.insertion[i, j]), float(cnn(xi[None]).softmax(1)[0, target[i]]),
                                        rel_tol=1e-12)
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(cnn, x, target, attribution, baseline=torch.zeros(3, 5))


def test_evaluate_methods_equals_the_metrics_called_one_by_one():
    """Every removal AUC against the plain loop (one image and one step at a time, the trapezoid
    in Python) for both baselines and every map type; the randomisation statistic against a copy
    randomised by hand and scipy's Spearman; ROAD and infidelity against their own functions (each
    tested against a loop or a closed form above); the metric names exactly."""
    cnn = _seeded_cnn(2)
    x = _images(3, side=8, seed=11)
    target = torch.tensor([1, 4, 8])
    methods = {"gradient": input_gradient, "image": image_map, "IG": integrated_gradients}
    types = {"gradient": "gradient", "image": "score", "IG": "path"}
    blurred = gaussian_blur(x, 1.0)
    baselines = {"zero": 0.0, "blur": blurred}
    got = evaluate_methods(cnn, x, target, methods, map_types=types, baselines=baselines, n_steps=4,
                           road_fractions=(0.25, 0.5), infidelity_samples=5, sensitivity_samples=3,
                           randomise_layers=2, rng=3)
    randomised = _hand_randomised(cnn, 2, seed=3)  # an int rng is the seed itself
    names = {f"{kind} AUC ({b})" for kind in ("deletion", "insertion") for b in baselines}
    names |= {"ROAD", "infidelity", "max-sensitivity", "randomisation Spearman"}
    assert set(got) == set(methods)
    for name, fn in methods.items():
        assert set(got[name]) == names, name
        a = fn(cnn, x, target)
        for b_name, b in baselines.items():
            if types[name] == "gradient":  # the contribution a * (x - b), written out
                score = a * (x - (b if isinstance(b, torch.Tensor) else torch.full_like(x, b)))
            elif types[name] == "path":
                score = fn(cnn, x, target, baseline=b)
            else:
                score = a
            dele, ins = _loop_curves(cnn, x, target, score, 4, b)
            for kind, curve in (("deletion", dele), ("insertion", ins)):
                expected = torch.tensor([_loop_auc(curve[i]) for i in range(3)], dtype=torch.float64)
                torch.testing.assert_close(got[name][f"{kind} AUC ({b_name})"], expected, rtol=1e-12, atol=1e-14)
        road_score = a * x if types[name] == "gradient" else a
        torch.testing.assert_close(got[name]["ROAD"], road(cnn, x, target, road_score, fractions=(0.25, 0.5),
                                                           rng=3).score)
        torch.testing.assert_close(got[name]["infidelity"], infidelity(cnn, x, target, a, n_samples=5, rng=3))
        torch.testing.assert_close(got[name]["randomisation Spearman"],
                                   _spearman_rows(a, fn(randomised, x, target)), rtol=1e-12, atol=1e-14)
    # the hand-randomised copy is randomise_top_layers' copy, to rounding (1/sqrt vs times the bound)
    for p, q in zip(randomised.parameters(), randomise_top_layers(cnn, 2, rng=3).parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=0.0)
    assert bool((got["image"]["max-sensitivity"] > 0).all())  # the image map moves with the image
    assert bool((got["gradient"]["randomisation Spearman"] < 0.99).all())  # randomising changed the gradient
    with pytest.raises(ValueError, match="methods"):
        evaluate_methods(cnn, x, target, {})
    with pytest.raises(ValueError, match="map_types"):
        evaluate_methods(cnn, x, target, methods, map_types={"gradient": "raw"})
    only = evaluate_methods(cnn, x, target, methods, map_types=types, baselines=baselines, n_steps=4,
                            infidelity_samples=5, sensitivity_samples=3, sensitivity_for={"gradient"}, rng=3)
    assert "max-sensitivity" in only["gradient"] and "max-sensitivity" not in only["IG"]
    torch.testing.assert_close(only["IG"]["deletion AUC (blur)"], got["IG"]["deletion AUC (blur)"])
    bare = evaluate_methods(cnn, x, target, methods, map_types=types, baselines=baselines, n_steps=4,
                            infidelity_samples=0, sensitivity_samples=3, rng=3)
    assert "infidelity" not in bare["IG"] and "infidelity" in got["IG"]
    torch.testing.assert_close(bare["IG"]["deletion AUC (blur)"], got["IG"]["deletion AUC (blur)"])


def test_metrics_print_nothing_to_stderr_in_a_notebook_kernel():
    # captum imports tqdm.auto, which warns "IProgress not found" inside a kernel without ipywidgets
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import torch\n"
        "from torch import nn\n"
        "from nbsupport.faithfulness import infidelity, max_sensitivity\n"
        "from nbsupport.saliency import input_gradient\n"
        "m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()\n"
        "x = torch.randn(2, 1, 2, 2, dtype=torch.float64)\n"
        "infidelity(m, x, 0, input_gradient(m, x, 0), n_samples=2)\n"
        "max_sensitivity(m, x, 0, input_gradient, n_samples=2)\n")]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    stderr = [o["text"] for o in nb.cells[0].outputs if o.get("name") == "stderr"]
    assert stderr == []


def test_contribution_is_the_map_times_the_distance_to_the_baseline():
    x = _images(2, side=3)
    a = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = _images(1, side=3, seed=4)[0]
    for i in range(2):
        for j in range(3):
            for k in range(3):
                assert contribution(a, x, b)[i, 0, j, k] == a[i, 0, j, k] * (x[i, 0, j, k] - b[0, j, k])
    lin = _linear(side=3)
    # for a linear model the contributions of the gradient sum to f(x) - f(b) (first order is exact)
    got = contribution(input_gradient(lin, x, 1), x, b).flatten(1).sum(1)
    with torch.no_grad():
        expected = lin(x)[:, 1] - lin(b[None])[0, 1]
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="attribution"):
        contribution(a[:1], x)
    with pytest.raises(ValueError, match="baseline"):
        contribution(a, x, torch.zeros(2, 2))


def _dense_imputation(image, removed):
    """The ROAD equations solved directly: u_i = sum_j w_ij u_j / sum_j w_ij on removed pixels."""
    h, w = image.shape
    idx = {(i, j): n for n, (i, j) in enumerate((i, j) for i in range(h) for j in range(w))}
    rows, cols, vals, rhs = [], [], [], np.zeros(h * w)
    for (i, j), n in idx.items():
        if not removed[i, j]:
            rows.append(n), cols.append(n), vals.append(1.0)
            rhs[n] = image[i, j]
            continue
        total = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) == (0, 0) or (i + di, j + dj) not in idx:
                    continue
                wt = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                rows.append(n), cols.append(idx[i + di, j + dj]), vals.append(-wt)
                total += wt
        rows.append(n), cols.append(n), vals.append(total)
    matrix = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(h * w, h * w))
    return scipy.sparse.linalg.spsolve(matrix, rhs).reshape(h, w)


def test_linear_imputation_solves_the_road_equations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 7, 9, dtype=torch.float64, generator=g)
    removed = torch.rand(3, 1, 7, 9, generator=g) < torch.tensor([0.3, 0.8, 0.97]).reshape(3, 1, 1, 1)
    removed[2, 0, 0, 0] = False  # one kept pixel: the whole image is interpolated from it
    got = linear_imputation(x, removed)
    for n in range(3):
        for c in range(2):
            expected = _dense_imputation(x[n, c].numpy(), removed[n, 0].numpy())
            np.testing.assert_allclose(got[n, c].numpy(), expected, rtol=0, atol=1e-8)
    assert torch.equal(got[~removed.expand_as(x)], x[~removed.expand_as(x)])  # kept pixels untouched
    with pytest.raises(ValueError, match="at least one pixel"):
        linear_imputation(x, torch.ones(3, 1, 7, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="removed"):
        linear_imputation(x, removed.float())


def test_road_matches_a_loop_and_orders():
    cnn = _seeded_cnn(6)
    x = _images(2, side=8, seed=3)
    target = torch.tensor([4, 6])
    a = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fractions = (0.25, 0.5)
    got = road(cnn, x, target, a, fractions=fractions, noise_std=0.05, rng=2)
    g = torch.Generator().manual_seed(2)
    noise = [0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in fractions]
    for i in range(2):
        order = sorted(range(64), key=lambda p: -float(a[i, 0].flatten()[p]))
        for j, f in enumerate(fractions):
            k = round(f * 64)
            for name, chosen in (("morf", order[:k]), ("lerf", order[64 - k:])):
                removed = torch.zeros(64, dtype=torch.bool)
                removed[chosen] = True
                removed = removed.reshape(1, 1, 8, 8)
                filled = torch.from_numpy(_dense_imputation(x[i, 0].numpy(), removed[0, 0].numpy()))
                image = torch.where(removed[0], filled + noise[j][i], x[i])
                with torch.no_grad():
                    p = float(cnn(image[None]).softmax(1)[0, target[i]])
                assert math.isclose(float(getattr(got, name)[i, j]), p, rel_tol=1e-6), (name, i, j)
    torch.testing.assert_close(got.score, (got.lerf - got.morf).mean(1))
    # a looser imputation tolerance moves the probabilities by far less than the noise does
    loose = road(cnn, x, target, a, fractions=fractions, noise_std=0.05, rng=2, tol=1e-5)
    assert float((loose.morf - got.morf).abs().max()) < 1e-4
    assert float((loose.lerf - got.lerf).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="fractions"):
        road(cnn, x, target, a, fractions=(1.0,))
    with pytest.raises(ValueError, match="tol"):
        road(cnn, x, target, a, fractions=fractions, tol=0.0)


def test_explained_share_is_one_minus_normalised_infidelity():
    lin = _linear(side=3)
    x = _images(2, side=3)
    grad = input_gradient(lin, x, 1)
    a = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    shares = explained_share(lin, x, 1, {"gradient": grad, "random": a, "scaled": -2 * grad},
                             noise_std=0.2, n_samples=4000, rng=1)
    # linear model: the gradient explains every perturbation, -2 x gradient too (scale-free)
    torch.testing.assert_close(shares["gradient"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(shares["scaled"], torch.ones(2, dtype=torch.float64))
    # closed form for a random map: rho^2 = (a.w)^2 / (|a|^2 |w|^2), within Monte Carlo error
    w = lin[1].weight[1].detach()
    af = a.flatten(1)
    expected = (af @ w) ** 2 / ((af * af).sum(1) * (w @ w))
    assert bool(((shares["random"] - expected).abs() < 6 / math.sqrt(4000)).all()), (shares["random"], expected)
    # on a CNN, by definition with the same draws: min over beta of mean (beta I.a - Delta)^2
    # equals mean(Delta^2) (1 - share)
    cnn = _seeded_cnn(1)
    xc = _images(3, side=8, seed=2)
    t = torch.tensor([1, 2, 3])
    g = input_gradient(cnn, xc, t)
    n = 6
    share = explained_share(cnn, xc, t, {"g": g}, noise_std=0.1, n_samples=n, rng=7)["g"]
    gen = torch.Generator().manual_seed(7)
    draws = [0.1 * torch.randn(xc.shape, generator=gen, dtype=xc.dtype) for _ in range(n)]
    with torch.no_grad():
        f0 = cnn(xc).gather(1, t[:, None])[:, 0]
        delta = torch.stack([f0 - cnn(xc - d).gather(1, t[:, None])[:, 0] for d in draws])
    proj = torch.stack([(d * g).flatten(1).sum(1) for d in draws])
    for i in range(3):  # the least-squares beta, then the mean squared residual
        beta = float((proj[:, i] * delta[:, i]).sum() / (proj[:, i] ** 2).sum())
        best = float(((beta * proj[:, i] - delta[:, i]) ** 2).mean())
        assert math.isclose(best, float((delta[:, i] ** 2).mean() * (1 - share[i])), rel_tol=1e-9,
                            abs_tol=1e-15)
        for other in (0.9 * beta, 1.1 * beta):  # and it is the minimum
            assert float(((other * proj[:, i] - delta[:, i]) ** 2).mean()) >= best
    # square removal: the perturbation is the image on one square patch
    sq = explained_share(cnn, xc, t, {"g": g}, perturbation="square", square=3, n_samples=5, rng=0)["g"]
    assert bool(((sq >= 0) & (sq <= 1)).all())
    with pytest.raises(ValueError, match="perturbation"):
        explained_share(cnn, xc, t, {"g": g}, perturbation="blur")
    with pytest.raises(ValueError, match="attributions"):
        explained_share(cnn, xc, t, {"g": g[:1]})


def test_dot_scores_match_a_loop_and_the_logits_without_bias():
    cnn = _seeded_cnn(3)
    x = _images(3, side=8, seed=1)
    got = dot_scores(cnn, x, input_gradient)
    for c in range(10):
        for n in range(3):
            g = input_gradient(cnn, x[n:n + 1], c)
            assert math.isclose(float(got[n, c]), float((g * x[n:n + 1]).sum()), rel_tol=1e-10, abs_tol=1e-12)
    # a bias-free ReLU MLP is positively homogeneous: <x, grad f_c> = f_c(x) (Euler)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 12, bias=False), nn.ReLU(), nn.Linear(12, 5, bias=False)).double()
    with torch.no_grad():
        logits = mlp(x)
    torch.testing.assert_close(dot_scores(mlp, x, input_gradient), logits)


def _rng_calls():
    cnn, x = _seeded_cnn(4), _images(3, side=8, seed=5)
    a = input_gradient(cnn, x, 2)
    return {
        "infidelity": lambda rng: infidelity(cnn, x, 2, a, n_samples=3, rng=rng),
        "max_sensitivity": lambda rng: max_sensitivity(cnn, x, 2, input_gradient, n_samples=2, rng=rng),
        "explained_share": lambda rng: explained_share(cnn, x, 2, {"g": a}, n_samples=3, rng=rng)["g"],
        "road": lambda rng: road(cnn, x, 2, a, fractions=(0.5,), rng=rng).score,
        "evaluate_methods": lambda rng: evaluate_methods(
            cnn, x, 2, {"gradient": input_gradient}, n_steps=2, infidelity_samples=2,
            sensitivity_samples=2, rng=rng)["gradient"]["max-sensitivity"],
    }


@pytest.mark.parametrize("name", ["infidelity", "max_sensitivity", "explained_share", "road", "evaluate_methods"])
def test_rng_same_gives_same_other_gives_other_bad_is_refused(name):
    call = _rng_calls()[name]
    first = call(6)
    assert torch.equal(first, call(6))
    assert torch.equal(first, call(torch.Generator().manual_seed(6))) or name == "evaluate_methods"
    assert not torch.equal(first, call(7))
    for bad in (None, -1, 0.5, "6"):
        with pytest.raises(ValueError, match="rng"):
            call(bad)


# ---------------------------------------------------------------------------------------------
# Faithfulness correlation
# ---------------------------------------------------------------------------------------------

def _loop_faithfulness_correlation(model, x, target, attribution, subsets, baseline):
    """One image and one subset at a time; scipy's Pearson correlation."""
    out = []
    for i in range(len(x)):
        with torch.no_grad():
            f0 = float(model(x[i:i + 1])[0, target[i]])
        sums, drops = [], []
        for subset in subsets[i]:
            flat = x[i].flatten().clone()
            base = baseline[i].flatten() if isinstance(baseline, torch.Tensor) else None
            for j in subset.tolist():
                flat[j] = baseline if base is None else base[j]
            with torch.no_grad():
                drops.append(f0 - float(model(flat.reshape(x[i].shape)[None])[0, target[i]]))
            sums.append(float(sum(attribution[i].flatten()[j] for j in subset.tolist())))
        out.append(scipy.stats.pearsonr(sums, drops)[0])
    return np.array(out)


@pytest.mark.parametrize("blur", [False, True])
def test_faithfulness_correlation_matches_a_loop(blur):
    model, x = _seeded_cnn(), _images(n=3, side=8)
    target = torch.tensor([0, 2, 1])
    baseline = gaussian_blur(x, 1.0) if blur else 0.25
    maps = {"gradient x input": gradient_x_input(model, x, target), "random": random_map(model, x, target)}
    g = torch.Generator().manual_seed(3)
    subsets = torch.rand(3, 6, 64, generator=g).argsort(-1)[..., :9]
    got = faithfulness_correlation(model, x, target, maps, subset_size=9, n_subsets=6, baseline=baseline,
                                   subsets=subsets)
    for name, a in maps.items():
        want = _loop_faithfulness_correlation(model, x, target, a, subsets, baseline)
        assert np.allclose(got[name].numpy(), want, rtol=0, atol=1e-10), name
    # drawn subsets: distinct entries, the same for every map, reproducible from rng
    again = faithfulness_correlation(model, x, target, maps, subset_size=9, n_subsets=6, baseline=baseline,
                                     rng=5)
    alone = faithfulness_correlation(model, x, target, {"random": maps["random"]}, subset_size=9, n_subsets=6,
                                     baseline=baseline, rng=5)
    assert torch.equal(again["random"], alone["random"])
    assert torch.isfinite(again["gradient x input"]).all()


def test_faithfulness_correlation_of_a_linear_model_is_one_for_its_contribution():
    # f_c(x) - f_c(x with S at b) = sum_{i in S} w_ci (x_i - b_i) exactly: the contribution scores 1
    model, x = _linear(), _images()
    target = torch.tensor([0, 1, 2, 0])
    v = input_gradient(model, x, target)
    got = faithfulness_correlation(model, x, target, {"c": contribution(v, x, 0.3), "v": v}, subset_size=4,
                                   n_subsets=20, baseline=0.3, rng=0)
    assert torch.allclose(got["c"], torch.ones(4, dtype=x.dtype), atol=1e-12)
    assert (got["v"] < 1 - 1e-3).all()


def test_faithfulness_correlation_is_quantus():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed (pip install "
                                  "'nbsupport[test]' brings it)")
    model, x = _seeded_cnn().float(), _images(n=4, side=8).float()
    target = torch.tensor([0, 3, 1, 2])
    a = gradient_x_input(model, x, target)
    drawn = []
    choice = np.random.choice

    def recording_choice(*args, **kwargs):
        out = choice(*args, **kwargs)
        drawn.append(out)
        return out

    np.random.seed(0)
    metric = quantus.FaithfulnessCorrelation(nr_runs=8, subset_size=10, perturb_baseline=0.0, normalise=False,
                                             return_aggregate=False, disable_warnings=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np.random, "choice", recording_choice)
        theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=a.detach().numpy(),
                        device="cpu", batch_size=4)
    # Quantus draws run by run, image by image
    subsets = torch.from_numpy(np.stack(drawn).reshape(8, 4, 10).transpose(1, 0, 2).astype(np.int64))
    ours = faithfulness_correlation(model, x, target, {"a": a}, subset_size=10, n_subsets=8, subsets=subsets)
    assert np.allclose(ours["a"].numpy(), theirs, rtol=0, atol=1e-5)


def test_faithfulness_correlation_refuses_bad_input_naming_it():
    model, x = _linear(), _images()
    maps = {"a": torch.ones_like(x)}
    for kwargs, name in [(dict(subset_size=16), "subset_size"), (dict(subset_size=0), "subset_size"),
                         (dict(subset_size=2, n_subsets=2), "n_subsets"),
                         (dict(subset_size=2, rng=None), "rng"),
                         (dict(subset_size=2, n_subsets=3, subsets=torch.zeros(4, 3, 3, dtype=torch.long)),
                          "subsets"),
                         (dict(subset_size=2, n_subsets=3, subsets=torch.full((4, 3, 2), 16)), "subsets")]:
        with pytest.raises(ValueError, match=name):
            faithfulness_correlation(model, x, 0, maps, **kwargs)
    with pytest.raises(ValueError, match="attributions"):
        faithfulness_correlation(model, x, 0, {"a": torch.ones(4, 16)}, subset_size=2)
    with pytest.raises(ValueError, match="attributions"):
        faithfulness_correlation(model, x, 0, {}, subset_size=2)
    with pytest.raises(ValueError, match="target"):
        faithfulness_correlation(model, x, 7, maps, subset_size=2)
