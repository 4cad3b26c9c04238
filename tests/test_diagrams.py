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


def test_split_and_merge_draws_where_view_and_transpose_put_each_number():
    import matplotlib.pyplot as plt
    import torch

    from riverbank.diagrams.heads import split_and_merge

    labels = 10 * torch.arange(3)[:, None] + torch.arange(6)   # word t, feature f: 10t + f
    fig, shapes = split_and_merge(labels, 2)
    assert shapes == {"input": (3, 6), "view": (3, 2, 3), "transpose": (2, 3, 3),
                      "attention per head": (2, 3, 3), "concatenate": (3, 6), "W_O": (3, 6)}
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert all(texts.count(str(v)) == 3 for v in labels.flatten().tolist())  # input, view, transpose
    assert "(h × n × d_head) = (2, 3, 3)" in texts
    plt.close(fig)


def test_qkv_flow_returns_the_shapes_of_the_tensors_it_draws():
    import matplotlib.pyplot as plt
    import torch

    from riverbank.diagrams import qkv

    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 4, generator=g)
    Q, K, V = (X @ torch.randn(4, 4, generator=g) for _ in range(3))
    scores = Q @ K.T / 2
    weights = scores.softmax(-1)
    fig, shapes = qkv.flow(["a", "b", "c"], X, Q, K, V, scores, weights, weights @ V)
    assert [tuple(s) for s in shapes.values()][:4] == [(3, 4)] * 4
    assert any(tuple(s) == (3, 3) for s in shapes.values())
    plt.close(fig)


def test_qkv_masks_draws_causal_padding_and_their_conjunction():
    import matplotlib.pyplot as plt
    import torch

    from riverbank.diagrams import qkv

    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    padding = torch.tensor([True, True, True, False])
    fig, drawn = qkv.masks(["x", "y", "z", "<pad>"], causal, padding)
    assert torch.equal(drawn["both"], causal & padding[None, :])
    assert drawn["both"].sum() == 9 and drawn["padding"].sum() == 12
    plt.close(fig)
