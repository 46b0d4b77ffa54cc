"""``nbsupport.orthant`` re-exports the four modules' public names.

Bounds and seeds: see ``orthant_reference``."""

from nbsupport.orthant import (MassWarning, affine_maps, mc_pattern_pmf, orthant_probability, output_cdf,
                               output_range, pattern_codes, pattern_pmf, polytope_probability, region, support_search)


def test_orthant_reexports_the_split_modules():
    """nbsupport.orthant keeps every public name (DESIGN.md's and the chapter's) as the very objects of
    the modules that define them: polytope, regions, pattern_law, mc."""
    import nbsupport.orthant as orthant
    from nbsupport.orthant import mc, pattern_law, polytope, regions

    homes = {}
    for module in (polytope, regions, pattern_law, mc):
        for name in module.__all__:
            homes.setdefault(name, getattr(module, name))
    for name in ("orthant_probability", "pattern_pmf", "mc_pattern_pmf", "polytope_probability", "support_search",
                 "region", "output_cdf", "Support", "MassWarning", "pattern_codes", "affine_maps", "output_range"):
        assert name in orthant.__all__
    for name in orthant.__all__:
        assert getattr(orthant, name) is homes[name], name
