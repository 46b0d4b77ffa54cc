"""nbsupport.attribution against closed forms on linear models, plain loops, scipy and Captum."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from nbsupport.attribution import (cascading_randomisation, class_average_map, curve_auc, deletion_insertion,
                                   evaluate_methods, gaussian_blur, gradient_x_input, image_map, infidelity,
                                   linear_cka, max_sensitivity, mean_ci, pearson_rows, random_map,
                                   randomise_top_layers, rank_correlation, roughness, smoothgrad)
from nbsupport.models import vgg_cnn
from nbsupport.pullbacks import input_gradient


def _linear(c=1, side=4, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, k)).double().eval()


def _images(n=4, c=1, side=4, seed=1):
    return torch.rand(n, c, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gradient_x_input_matches_captum():
    from captum.attr import InputXGradient

    cnn = _seeded_cnn(0)
    x = _images(3, side=8)
    target = torch.tensor([0, 5, 9])
    torch.testing.assert_close(gradient_x_input(cnn, x, target), InputXGradient(cnn).attribute(x, target=target))


def test_smoothgrad_of_one_relu_is_the_normal_cdf():
    # f(x) = relu(x): E[1(x + eps > 0)] = Phi(x / sigma), sigma = noise_level * range(x)
    class Relu1(nn.Module):
        def forward(self, x):
            return torch.relu(x[:, :1])

    x = torch.tensor([[-0.3, 0.7], [0.2, -0.5]], dtype=torch.float64)
    n = 600
    got = smoothgrad(Relu1(), x, 0, n_samples=n, noise_level=0.5, seed=3)[:, 0]
    sigma = 0.5 * torch.tensor([1.0, 0.7], dtype=torch.float64)
    p = torch.from_numpy(scipy.stats.norm.cdf((x[:, 0] / sigma).numpy()))
    assert bool(((got - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all())
    again = [smoothgrad(Relu1(), x, 0, n_samples=5, noise_level=0.5, seed=s) for s in (3, 3, 4)]
    assert torch.equal(again[0], again[1]) and not torch.equal(again[0], again[2])  # seeded
    lin, xi = _linear(), _images()
    torch.testing.assert_close(smoothgrad(lin, xi, 1, n_samples=3), input_gradient(lin, xi, 1))
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(lin, xi, 1, n_samples=0)
    with pytest.raises(ValueError, match="noise_level"):
        smoothgrad(lin, xi, 1, noise_level=-1.0)


def _loop_curves(model, x, target, attribution, n_steps, baseline):
    """One image and one step at a time, pixels sorted in Python."""
    n, c, h, w = x.shape
    dele = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    ins = torch.zeros(n, n_steps + 1, dtype=x.dtype)
    for i in range(n):
        score = attribution[i].sum(0).flatten().tolist()
        order = sorted(range(h * w), key=lambda p: -score[p])  # stable: ties keep pixel order
        for j in range(n_steps + 1):
            k = round(j * h * w / n_steps)
            xd, xi = x[i].clone(), torch.full_like(x[i], baseline)
            for p in order[:k]:
                xd[:, p // w, p % w] = baseline
                xi[:, p // w, p % w] = x[i][:, p // w, p % w]
            with torch.no_grad():
                dele[i, j] = model(xd[None]).softmax(1)[0, target[i]]
                ins[i, j] = model(xi[None]).softmax(1)[0, target[i]]
    return dele, ins


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
    got = infidelity(lin, x, 1, a, noise_std=0.2, n_samples=n, seed=1)
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
    got = max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, seed=2)
    assert bool((got <= bound + 1e-12).all() and (got >= 0.6 * bound).all()), (got, bound)
    assert torch.equal(got, max_sensitivity(lin, x, 0, gradient_x_input, radius=r, n_samples=400, seed=2))
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(lin, x, 0, input_gradient, radius=0.0)


def test_randomise_top_layers():
    cnn = _seeded_cnn(5).float()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    rand = randomise_top_layers(cnn, 2, seed=0)
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in before.items())  # original untouched
    names = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    changed = {n for n, m in rand.named_modules() if n in names and not torch.equal(m.weight, cnn.get_submodule(n).weight)}
    assert changed == set(names[-2:]) and not rand.training
    again = randomise_top_layers(cnn, 2, seed=0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in rand.state_dict().items())
    for bad in (0, len(names) + 1, True):
        with pytest.raises(ValueError, match="n_layers"):
            randomise_top_layers(cnn, bad)


def test_rank_correlation_is_scipys_spearman():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2, 3, 3, generator=g)
    b = a + 0.5 * torch.randn(5, 2, 3, 3, generator=g)
    b[0, 0, 0] = 0.0  # ties
    a[1] = a[1].round()
    got = rank_correlation(a, b)
    for i in range(5):
        expected = scipy.stats.spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic
        assert math.isclose(float(got[i]), expected, rel_tol=1e-12)
    signed = rank_correlation(a, b, absolute=False)
    assert math.isclose(float(signed[2]), scipy.stats.spearmanr(a[2].flatten(), b[2].flatten()).statistic, rel_tol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        rank_correlation(a, b[:2])


def test_mean_ci_coverage():
    rng = np.random.default_rng(0)
    trials, n = 2000, 12
    covered = 0
    for _ in range(trials):
        mean, half = mean_ci(rng.normal(1.0, 2.0, n), level=0.9)
        covered += abs(mean - 1.0) <= half
    assert abs(covered / trials - 0.9) < 4 * math.sqrt(0.09 / trials)
    with pytest.raises(ValueError, match="values"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=1.0)


# ---------------------------------------------------------------------------------------------
# Baseline maps, blur, roughness, correlations, CKA, the metrics table, randomisation without global RNG
# ---------------------------------------------------------------------------------------------

def _seeded_cnn(seed=0, side=8):
    """A small CNN whose weights come from a private generator (no dependence on the global RNG)."""
    cnn = vgg_cnn((3, 4), image_size=side).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cnn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return cnn


def test_image_and_random_maps():
    x = _images(3, side=5)
    lin = _linear(side=5)
    assert torch.equal(image_map(lin, x, 0), x)
    a, b = random_map(lin, x, 0), random_map(_linear(side=5, seed=3), x + 1, 2)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype  # input-, model- and target-free
    assert not torch.equal(a, random_map(lin, x, 0, seed=1))
    # standard normal entries: mean within 5 standard errors of 0
    big = random_map(lin, torch.zeros(200, 1, 10, 10), 0)
    assert abs(float(big.mean())) < 5 / math.sqrt(big.numel()) and abs(float(big.var()) - 1) < 5 * math.sqrt(2 / big.numel())


def test_class_average_map_is_the_per_class_mean_of_a_loop():
    cnn = _seeded_cnn()
    x_ref = _images(12, side=8, seed=5)
    y_ref = torch.tensor([0, 1, 2] * 4)
    fn = class_average_map(input_gradient, x_ref, y_ref)
    x = _images(4, side=8, seed=6)
    target = torch.tensor([2, 0, 2, 1])
    got = fn(cnn, x, target)
    for n, c in enumerate(target.tolist()):
        members = [input_gradient(cnn, x_ref[i:i + 1], c)[0] for i in range(12) if y_ref[i] == c]
        torch.testing.assert_close(got[n], sum(members) / len(members))
    torch.testing.assert_close(got, fn(cnn, x + 0.3, target))  # independent of the input
    with pytest.raises(ValueError, match="class 5"):
        fn(cnn, x, 5)
    with pytest.raises(ValueError, match="y_ref"):
        class_average_map(input_gradient, x_ref, y_ref.double())


def test_gaussian_blur_is_scipys_mirror_filter():
    import scipy.ndimage

    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 1.5):
        expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma, mode="mirror", axes=(2, 3))
        np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), expected, rtol=0, atol=1e-12)
    assert gaussian_blur(x.float(), 1.0).dtype == torch.float32
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, 0.0)
    with pytest.raises(ValueError, match="half-width"):
        gaussian_blur(x, 5.0)


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


def test_roughness_and_pearson_rows_match_loops():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    for n in range(3):
        m = maps[n].numpy()
        tv = sum((m[c, i + 1, j] - m[c, i, j]) ** 2 for c in range(2) for i in range(3) for j in range(5))
        tv += sum((m[c, i, j + 1] - m[c, i, j]) ** 2 for c in range(2) for i in range(4) for j in range(4))
        assert math.isclose(float(roughness(maps)[n]), math.sqrt(tv) / np.linalg.norm(m), rel_tol=1e-12)
    torch.testing.assert_close(roughness(-3 * maps), roughness(maps))
    a, b = torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(4, 7, generator=g, dtype=torch.float64)
    for n in range(4):
        assert math.isclose(float(pearson_rows(a, b)[n]), np.corrcoef(a[n].numpy(), b[n].numpy())[0, 1], rel_tol=1e-12)
    assert pearson_rows(a > 0, b > 0).dtype == torch.float32 and pearson_rows(a > 0, b).dtype == torch.float64
    with pytest.raises(ValueError, match="same shape"):
        pearson_rows(a, b[:, :3])
    with pytest.raises(ValueError, match="maps"):
        roughness(maps[0])


def test_linear_cka_against_the_hsic_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 4)), rng.normal(size=(15, 6))
    y[:, :2] += x[:, :2]
    h = np.eye(15) - 1 / 15

    def hsic(k, l_):
        return np.trace(k @ h @ l_ @ h)

    kx, ky = x @ x.T, y @ y.T
    expected = hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert math.isclose(float(got), expected, rel_tol=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert math.isclose(float(linear_cka(torch.from_numpy(x), torch.from_numpy(2.5 * y @ q + 1.0))), expected,
                        rel_tol=1e-10)
    assert math.isclose(float(linear_cka(torch.from_numpy(x), torch.from_numpy(x))), 1.0, rel_tol=1e-12)
    gates = torch.from_numpy(rng.random((15, 30)) > 0.5)
    assert 0 <= float(linear_cka(gates, torch.from_numpy(y))) <= 1
    with pytest.raises(ValueError, match="same N"):
        linear_cka(torch.from_numpy(x), torch.from_numpy(y[:5]))


def test_randomise_top_layers_uses_no_global_random_state():
    cnn = vgg_cnn((3, 4), image_size=8).eval()
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    rand = randomise_top_layers(cnn, 3, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    if cuda_state is not None:
        assert all(torch.equal(a, b) for a, b in zip(cuda_state, torch.cuda.get_rng_state_all()))
    # the default law of nn.Conv2d / nn.Linear: uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]
    for layer in [m for m in rand.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-3:]:
        w = layer.weight.detach().double().flatten()
        bound = 1 / math.sqrt(layer.weight[0].numel())
        assert float(w.abs().max()) <= bound
        n = len(w)
        assert abs(float(w.var()) - bound**2 / 3) < 6 * bound**2 * math.sqrt(4 / 45 / n)  # Var(U^2) = 4 b^4/45
    assert not torch.equal(rand[2].weight, randomise_top_layers(cnn, 3, seed=5)[2].weight)


def test_evaluate_methods_equals_the_metrics_called_one_by_one():
    cnn = _seeded_cnn(2)
    x = _images(3, side=8, seed=11)
    target = torch.tensor([1, 4, 8])
    methods = {"gradient": input_gradient, "image": image_map}
    baselines = {"zero": 0.0, "blur": gaussian_blur(x, 1.0)}
    got = evaluate_methods(cnn, x, target, methods, baselines=baselines, n_steps=4, infidelity_samples=5,
                           sensitivity_samples=3, randomise_layers=2, seed=3)
    randomised = randomise_top_layers(cnn, 2, seed=3)
    for name, fn in methods.items():
        a = fn(cnn, x, target)
        for b_name, b in baselines.items():
            loop_del, loop_ins = [], []
            for i in range(3):
                d, ins = _loop_curves(cnn, x[i:i + 1], target[i:i + 1], a[i:i + 1], 4, 0.0) if b_name == "zero" else \
                    (None, None)
                loop_del.append(d), loop_ins.append(ins)
            curves = deletion_insertion(cnn, x, target, a, n_steps=4, baseline=b)
            torch.testing.assert_close(got[name][f"deletion AUC ({b_name})"], curve_auc(curves.fractions, curves.deletion))
            if b_name == "zero":
                f = torch.linspace(0, 1, 5, dtype=torch.float64)
                torch.testing.assert_close(got[name]["insertion AUC (zero)"],
                                           torch.trapezoid(torch.cat(loop_ins), f, dim=1))
        torch.testing.assert_close(got[name]["infidelity"], infidelity(cnn, x, target, a, n_samples=5, seed=3))
        torch.testing.assert_close(got[name]["randomisation Spearman"], rank_correlation(a, fn(randomised, x, target)))
    assert bool((got["image"]["max-sensitivity"] > 0).all())  # the image map moves with the image
    with pytest.raises(ValueError, match="methods"):
        evaluate_methods(cnn, x, target, {})


def test_cascading_randomisation_layer_by_layer():
    cnn = _seeded_cnn(3)
    x = _images(4, side=8, seed=12)
    out = cascading_randomisation(cnn, x, 2, input_gradient, seeds=(0, 1))
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in cnn.modules())
    assert out.shape == (2, n_layers, 4)
    ref = input_gradient(cnn, x, 2)
    for s, seed in enumerate((0, 1)):
        for k in (1, n_layers):
            torch.testing.assert_close(out[s, k - 1],
                                       rank_correlation(ref, input_gradient(randomise_top_layers(cnn, k, seed), x, 2)))
    # the image map ignores the model: perfectly correlated at every depth
    torch.testing.assert_close(cascading_randomisation(cnn, x, 2, image_map), torch.ones(1, n_layers, 4,
                                                                                       dtype=torch.float64))


def test_metrics_print_nothing_to_stderr_in_a_notebook_kernel():
    # captum imports tqdm.auto, which warns "IProgress not found" inside a kernel without ipywidgets
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import torch\n"
        "from torch import nn\n"
        "from nbsupport.attribution import infidelity, max_sensitivity\n"
        "from nbsupport.saliency import input_gradient\n"
        "m = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()\n"
        "x = torch.randn(2, 1, 2, 2, dtype=torch.float64)\n"
        "infidelity(m, x, 0, input_gradient(m, x, 0), n_samples=2)\n"
        "max_sensitivity(m, x, 0, input_gradient, n_samples=2)\n")]
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    stderr = [o["text"] for o in nb.cells[0].outputs if o.get("name") == "stderr"]
    assert stderr == []
