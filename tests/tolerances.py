"""The one table of numerical tolerances used by the tests (STYLE.md: loosening one needs a reason).

Keys are (what is compared, dtype); values are (rtol, atol) for np.testing.assert_allclose.
"""

TOL: dict[tuple[str, str], tuple[float, float]] = {
    # f32 paths that should agree to rounding: different summation orders over K <= 1024.
    ("f32_reorder", "float32"): (1e-5, 1e-5),
}


def tol(name: str, dtype: str = "float32") -> dict[str, float]:
    """Keyword arguments for np.testing.assert_allclose."""
    rtol, atol = TOL[(name, dtype)]
    return {"rtol": rtol, "atol": atol}
