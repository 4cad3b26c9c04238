"""The explanatory diagrams of chapters 1-4 draw what they say they draw."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from riverbank.diagrams.bank import weighted_sum  # noqa: E402


def test_weighted_sum_draws_the_sum_it_names():
    fig = weighted_sum(["a", "b"], [0.25, 0.75], [[1.0, 0.0], [0.0, 2.0]], "a")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"× 0.2500", "× 0.7500", "0.2500", "1.5000", "output of a"} <= texts


def test_weighted_sum_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        weighted_sum(["a"], [0.5, 0.5], [[1.0], [2.0]], "a")
