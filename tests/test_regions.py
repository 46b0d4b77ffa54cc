"""``nbsupport.orthant.regions``: Lemma 1 regions and affine maps against torch, pattern codes against a loop,
affine-map grouping against pairwise comparison, LP ranges against vertex enumeration.

Bounds and seeds: see ``orthant_reference``."""

import numpy as np
import pytest
import torch

from nbsupport.models import mlp
from nbsupport.orthant import (affine_maps, jacobian_singular_values, mc_jacobian_singular_values, mc_network,
                               mlp_layers, network_patterns, output_range, pattern_codes, region, support_search)
from nbsupport.orthant.regions import region_rows
from orthant_reference import _gaussian, _network


@pytest.mark.parametrize("widths", [(3, 5, 4, 2), (3, 4, 5, 3, 2)])
def test_region_is_lemma_1_and_gives_the_affine_map(widths):
    net, ws, bs = _network(widths, seed=0)
    x = torch.randn(200, 3, dtype=torch.float64)
    bits = network_patterns(ws, bs, x.numpy())
    jac = torch.vmap(torch.func.jacrev(net))(x)
    for i in range(0, 200, 20):
        G, h, J, c = region(ws, bs, bits[i])
        assert np.all(G @ x[i].numpy() + h > 0)  # the sample lies in its own polytope
        np.testing.assert_allclose(J @ x[i].numpy() + c, net(x[i]).detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(J, jac[i].detach().numpy(), atol=1e-12)
        other = bits[i].copy()
        other[3] = not other[3]
        G2, h2, _, _ = region(ws, bs, other)
        assert not np.all(G2 @ x[i].numpy() + h2 > 0)
    with pytest.raises(ValueError, match="pattern"):
        region(ws, bs, bits[0][:5])
    with pytest.raises(ValueError, match="biases"):
        region(ws, bs[:-1] + [np.zeros(3)], bits[0])


def test_mlp_layers_and_network_patterns():
    net, ws, bs = _network((2, 3, 1), seed=6)
    assert [w.shape for w in ws] == [(3, 2), (1, 3)] and ws[0].dtype == np.float64
    x = np.random.default_rng(0).standard_normal((10, 2))
    expected = (x @ ws[0].T + bs[0]) > 0
    assert np.array_equal(network_patterns(ws, bs, x), expected)
    with pytest.raises(ValueError, match="bias"):
        mlp_layers(mlp([2, 3, 1], bias=False))
    with pytest.raises(ValueError, match="hidden"):
        support_search(ws[:1], bs[:1], np.zeros(2), np.eye(2))


def test_jacobian_singular_values_match_torch():
    net, ws, bs = _network((3, 6, 5, 2), seed=5)
    mean, cov = _gaussian(3, seed=14)
    mc = mc_jacobian_singular_values(net, mean, cov, n=300, seed=8)
    x, bits, _ = mc_network(ws, bs, mean, cov, n=300, seed=8)  # the same draws
    np.testing.assert_allclose(jacobian_singular_values(ws, bs, bits), mc, atol=1e-12)
    reference = torch.autograd.functional.jacobian(net, torch.from_numpy(x[0]))
    np.testing.assert_allclose(mc[0], torch.linalg.svdvals(reference).numpy(), atol=1e-12)
    assert mc.shape == (300, 2)


def test_pattern_codes_against_a_loop():
    bits = np.random.default_rng(0).random((50, 10)) < 0.5
    loop = [sum(2**i for i in range(10) if row[i]) for row in bits]
    assert pattern_codes(bits).dtype == np.int64 and pattern_codes(bits).tolist() == loop
    wide = np.random.default_rng(1).random((5, 70)) < 0.5
    assert pattern_codes(wide).tolist() == [sum(2**i for i in range(70) if row[i]) for row in wide]
    assert int(pattern_codes(bits[3])) == loop[3]
    _, ws, bs = _network((2, 4, 3, 1), seed=0)
    sup = support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0)
    assert pattern_codes(sup.patterns).tolist() == sup.codes
    with pytest.raises(ValueError, match="patterns"):
        pattern_codes(np.full((2, 2), 2))


def test_affine_maps_against_pairwise_grouping():
    """A 2-3-1-1 network: wherever the single layer-2 unit is off, every layer-1 pattern gives f = b_3."""
    _, ws, bs = _network((2, 3, 1, 1), seed=3)
    sup = support_search(ws, bs, np.zeros(2), np.eye(2), eps=0.0)
    maps = affine_maps(ws, bs, sup.patterns, sup.probs)
    # reference: group by pairwise np.allclose in a loop
    reps, totals = [], []
    for bits, p in zip(sup.patterns, sup.probs):
        _, _, J, c = region(ws, bs, bits)
        key = np.concatenate([J.ravel(), c])
        for k, other in enumerate(reps):
            if np.allclose(key, other, atol=1e-9):
                totals[k] += p
                break
        else:
            reps.append(key)
            totals.append(p)
    assert len(maps.probs) == len(reps) < len(sup.probs)
    np.testing.assert_allclose(np.sort(maps.probs), np.sort(totals), atol=1e-15)
    np.testing.assert_allclose(np.bincount(maps.inverse, weights=sup.probs), maps.probs, atol=1e-15)
    for k, bits in enumerate(sup.patterns):
        _, _, J, c = region(ws, bs, bits)
        np.testing.assert_allclose(maps.J[maps.inverse[k]], J, atol=1e-12)
        np.testing.assert_allclose(maps.c[maps.inverse[k]], c, atol=1e-12)
    constant = np.flatnonzero(np.abs(maps.J).sum((1, 2)) == 0)
    assert len(constant) == 1 and np.allclose(maps.c[constant[0]], bs[-1])


def test_output_range_against_vertex_enumeration():
    rng = np.random.default_rng(5)
    for _ in range(20):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
        G = -np.column_stack([np.cos(angles), np.sin(angles)])  # x . n_i <= r_i: bounded when normals surround 0
        h = rng.uniform(0.5, 2.0, 6)
        v = rng.standard_normal(2)
        vertices = [np.linalg.solve(G[[i, j]], -h[[i, j]]) for i in range(6) for j in range(i)
                    if abs(np.linalg.det(G[[i, j]])) > 1e-12]
        inside = [x for x in vertices if np.all(G @ x + h >= -1e-9)]
        lo, hi = output_range(G, h, v)
        if max(np.diff(np.append(angles, angles[0] + 2 * np.pi))) < np.pi:
            assert lo == pytest.approx(min(v @ x for x in inside), abs=1e-8)
            assert hi == pytest.approx(max(v @ x for x in inside), abs=1e-8)
        else:
            assert not (np.isfinite(lo) and np.isfinite(hi))
    assert output_range([[1.0, 0.0]], [1.0], [1.0, 0.0]) == (-1.0, np.inf)
    assert np.isnan(output_range([[1.0, 0.0], [-1.0, 0.0]], [-2.0, 1.0], [1.0, 0.0])[0])
    with pytest.raises(ValueError, match="direction"):
        output_range(np.eye(2), np.zeros(2), np.zeros(3))


def test_region_rows_operand_scales_bound_the_rows_and_follow_the_units():
    """The operand magnitudes of region_rows bound their rows (|W A| <= |W| |A| entrywise, so the
    row norms too), equal them for the first layer, and scale with the network: multiplying the
    first layer's weights and bias by s multiplies every row and every scale by s."""
    _, ws, bs = _network((3, 5, 4, 2), seed=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        bits = rng.random(9) < 0.5
        rows = region_rows(ws, bs, bits)
        G, h, J, c = region(ws, bs, bits)
        assert np.array_equal(rows.G, G) and np.array_equal(rows.J, J)
        assert np.all(np.linalg.norm(G, axis=1) <= rows.G_scale * (1 + 1e-12))
        assert np.all(np.abs(h) <= rows.h_scale * (1 + 1e-12))
        assert np.all(np.linalg.norm(J, axis=1) <= rows.J_scale * (1 + 1e-12))
        np.testing.assert_allclose(rows.G_scale[:5], np.linalg.norm(ws[0], axis=1))
        for s in (1e-11, 1e8):
            scaled = region_rows([s * ws[0], *ws[1:]], [s * bs[0], *bs[1:]], bits)
            np.testing.assert_allclose(scaled.G_scale[:5], s * rows.G_scale[:5], rtol=1e-12)
            np.testing.assert_allclose(scaled.G[:5], s * rows.G[:5], rtol=1e-12)
