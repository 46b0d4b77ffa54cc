"""nbsupport.patterns.grouping against plain loops, int64 arithmetic and torch.unique(dim=0)."""

import pytest
import torch

from nbsupport.patterns import group_by_pattern, pack_patterns, unpack_codes


def _reference_groups(gates):
    """A dictionary loop, then the documented order: count descending, code ascending."""
    codes, members = {}, {}
    for i, row in enumerate(gates.tolist()):
        key = tuple(row)
        members.setdefault(key, []).append(i)
        codes[key] = sum(1 << u for u, bit in enumerate(row) if bit)
    keys = sorted(members, key=lambda k: (-len(members[k]), codes[k]))
    inverse = torch.empty(len(gates), dtype=torch.long)
    for g, k in enumerate(keys):
        inverse[members[k]] = g
    return torch.tensor(keys, dtype=torch.bool).reshape(len(keys), gates.shape[1]), inverse, \
        torch.tensor([len(members[k]) for k in keys])


@pytest.mark.parametrize("m", [1, 5, 62, 63, 64, 130])
def test_group_by_pattern_matches_a_loop(m):
    g = torch.Generator().manual_seed(m)
    base = torch.rand(12, m, generator=g) < 0.5          # 12 distinct-ish patterns ...
    gates = base[torch.randint(0, 12, (400,), generator=g)]  # ... repeated with random counts
    patterns, inverse, counts = group_by_pattern(gates)
    ref_patterns, ref_inverse, ref_counts = _reference_groups(gates)
    assert torch.equal(patterns, ref_patterns)
    assert torch.equal(inverse, ref_inverse)
    assert torch.equal(counts, ref_counts)
    assert torch.equal(patterns[inverse], gates)


def test_same_groups_as_torch_unique():
    g = torch.Generator().manual_seed(1)
    gates = torch.rand(3000, 9, generator=g) < torch.linspace(0.05, 0.95, 9)
    patterns, inverse, counts = group_by_pattern(gates)
    u_patterns, u_inverse, u_counts = torch.unique(gates, dim=0, return_inverse=True, return_counts=True)
    assert len(patterns) == len(u_patterns)
    assert sorted(counts.tolist()) == sorted(u_counts.tolist())
    # the two groupings are the same partition: a bijection maps one set of labels to the other
    pairs = torch.unique(torch.stack([inverse, u_inverse], dim=1), dim=0)
    assert len(pairs) == len(patterns)
    assert bool((counts[:-1] >= counts[1:]).all())


def test_order_ties_by_code_and_high_bits():
    # equal counts: order by code, and units beyond 63 are the most significant
    gates = torch.zeros(4, 70, dtype=torch.bool)
    gates[0, 69] = True      # code 2**69
    gates[1, 0] = True       # code 1
    gates[2, 63] = True      # code 2**63
    patterns, inverse, counts = group_by_pattern(gates)
    assert counts.tolist() == [1, 1, 1, 1]
    assert inverse.tolist() == [3, 1, 2, 0]  # the zero pattern (code 0) first


def test_pack_patterns_codes():
    gates = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert pack_patterns(gates)[:, 0].tolist() == [5, 0, 7]
    wide = torch.ones(2, 126, dtype=torch.bool)
    assert pack_patterns(wide).tolist() == [[2**63 - 1] * 2] * 2


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(4, dtype=torch.bool), [[True]]])
def test_bad_gates(bad):
    with pytest.raises(ValueError, match="gates"):
        group_by_pattern(bad)
    with pytest.raises(ValueError, match="gates"):
        group_by_pattern(torch.zeros(0, 3, dtype=torch.bool))


@pytest.mark.parametrize("m", [0, 8, 13, 63, 70, 130])
def test_pack_patterns_across_row_blocks_matches_arithmetic(m):
    """Byte-wise packing in row blocks against sum_i a_i 2^i in int64 arithmetic, past a block boundary
    and for non-contiguous input."""
    from nbsupport.patterns.grouping import _PACK_ROWS

    g = torch.Generator().manual_seed(m)
    gates = torch.rand(m, _PACK_ROWS + 37, generator=g).t() < 0.5        # a transposed (non-contiguous) view
    n_words = max(1, -(-m // 63))
    padded = torch.zeros(len(gates), n_words * 63, dtype=torch.int64)
    padded[:, :m] = gates
    expected = (padded.view(-1, n_words, 63) << torch.arange(63)).sum(2)
    assert torch.equal(pack_patterns(gates), expected)
    if m:
        few = gates[:, :12]
        patterns, inverse, counts = group_by_pattern(few)
        u_patterns, u_inverse, u_counts = torch.unique(few, dim=0, return_inverse=True, return_counts=True)
        assert len(patterns) == len(u_patterns) and sorted(counts.tolist()) == sorted(u_counts.tolist())
        assert torch.equal(patterns[inverse], few)


@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 62])
def test_unpack_codes_inverts_pack_patterns_and_matches_a_loop(m):
    """unpack_codes against a bit-by-bit loop, and pack_patterns(unpack_codes(c)) == c."""
    codes = torch.tensor([0, 2**m - 1, *torch.randint(0, 2**m, (20,), generator=torch.Generator().manual_seed(m)).tolist()]
                         if m else [0])
    bits = unpack_codes(codes, m)
    loop = torch.tensor([[(int(c) >> i) & 1 == 1 for i in range(m)] for c in codes], dtype=torch.bool).reshape(len(codes), m)
    assert torch.equal(bits, loop)
    assert torch.equal(pack_patterns(bits)[:, 0], codes)


def test_unpack_codes_refuses_bad_input_by_name():
    for codes, m, name in [(torch.tensor([4]), 2, "codes"), (torch.tensor([-1]), 2, "codes"),
                           (torch.tensor([0.5]), 2, "codes"), (torch.tensor([0]), 63, "m"),
                           (torch.tensor([0]), -1, "m"), ([0], 2, "codes")]:
        with pytest.raises(ValueError, match=name):
            unpack_codes(codes, m)
