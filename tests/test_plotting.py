import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from capsule_lib import dynamic_routing, efficient_squash  # noqa: E402
from capsule_lib.capsnet import CapsNet  # noqa: E402
from capsule_lib.plotting import (PAPER_DELTAS, perturbed_reconstructions,  # noqa: E402
                                  plot_capsule_lengths, plot_coupling_heatmap,
                                  plot_digits_with_lengths, plot_dimension_perturbations,
                                  plot_primary_coupling_maps, plot_reconstructions,
                                  plot_squash_curves, plot_training_curves, squash_curves)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def capsnet():
    torch.manual_seed(0)
    return CapsNet()


def test_squash_curves_are_sane():
    curves = squash_curves(max_norm=5.0, n_points=501)
    r = curves["input_length"]
    assert torch.allclose(curves["squash"], r ** 2 / (1 + r ** 2))
    assert torch.allclose(curves["efficient_squash"], 1 - torch.exp(-r))
    # Autograd slopes agree with the derivatives written out by hand.
    assert torch.allclose(curves["squash_slope"], 2 * r / (1 + r ** 2) ** 2)
    assert torch.allclose(curves["efficient_squash_slope"], torch.exp(-r))
    assert curves["efficient_squash_slope"][0].item() == pytest.approx(1.0)
    assert curves["squash_slope"][0].item() == pytest.approx(0.0)
    # The projection used as the length is the norm of the squashed vector.
    s = torch.randn(16, dtype=torch.float64)
    assert efficient_squash(s).norm().item() == pytest.approx(1 - torch.exp(-s.norm()).item())


def test_plot_squash_curves():
    fig = plot_squash_curves(max_norm=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_plot_reconstructions():
    images, reconstructions = torch.rand(5, 1, 28, 28), torch.rand(5, 28, 28)
    fig = plot_reconstructions(images, reconstructions, labels=[1, 2, 3, 4, 5],
                               predictions=torch.tensor([1, 2, 0, 4, 5]), n=4)
    assert len(fig.axes) == 8
    assert fig.axes[2].title.get_color() == "red"                      # wrong prediction
    with pytest.raises(ValueError, match="same shape"):
        plot_reconstructions(images, torch.rand(5, 1, 14, 14))


def test_perturbed_reconstructions_shape_and_zero_delta(capsnet):
    model = capsnet
    image = torch.rand(1, 28, 28)
    grid = perturbed_reconstructions(model, image, label=3, dims=[0, 5, 15], deltas=PAPER_DELTAS)
    assert grid.shape == (3, 11, 28, 28)
    model.eval()
    output = model(image[None], torch.tensor([3]))
    model.train()
    zero = int(PAPER_DELTAS.abs().argmin())
    for row in range(3):                                  # delta 0 = plain reconstruction
        assert torch.allclose(grid[row, zero], output.reconstructions[0, 0].detach(), atol=1e-6)
    assert not torch.allclose(grid[0, 0], grid[0, -1])
    assert model.training
    with pytest.raises(ValueError, match="dims"):
        perturbed_reconstructions(model, image, 3, dims=[16])
    with pytest.raises(ValueError, match="ONE image"):
        perturbed_reconstructions(model, torch.rand(2, 1, 28, 28), 3)
    with pytest.raises(ValueError, match="decoder"):
        perturbed_reconstructions(CapsNet(with_decoder=False), image, 3)


def test_plot_dimension_perturbations(capsnet):
    fig = plot_dimension_perturbations(capsnet, torch.rand(1, 1, 28, 28), dims=range(4))
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_xticks()) == 11 and len(fig.axes[0].get_yticks()) == 4


def test_plot_coupling_heatmap():
    couplings = dynamic_routing(torch.randn(2, 12, 10, 16)).couplings       # [3, 2, 12, 10]
    fig = plot_coupling_heatmap(couplings[-1].mean(0))
    assert len(fig.axes) == 2                                          # heatmap + colorbar
    fig = plot_coupling_heatmap(couplings[-1, 0], vmax=1)
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    with pytest.raises(ValueError, match="reduce first"):
        plot_coupling_heatmap(couplings)


def test_plot_primary_coupling_maps():
    couplings = torch.softmax(torch.randn(1152, 10), dim=1)
    fig = plot_primary_coupling_maps(couplings)
    assert len(fig.axes) == 11                                         # 10 maps + colorbar
    with pytest.raises(ValueError, match="1152"):
        plot_primary_coupling_maps(couplings[:100])


@pytest.mark.parametrize("validation", [True, False])
def test_plot_training_curves(validation):
    class History:
        train_loss = [0.5, 0.3, 0.2]
        train_accuracy = [0.8, 0.9, 0.95]
        validation_loss = [0.4, 0.35, 0.3] if validation else []
        validation_accuracy = [0.85, 0.9, 0.93] if validation else []

    fig = plot_training_curves(History())
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == (2 if validation else 1)
    fig = plot_training_curves({"train_loss": [1.0], "train_accuracy": [0.5]})
    assert len(fig.axes[1].lines) == 1
    with pytest.raises(ValueError, match="train_accuracy"):
        plot_training_curves({"train_loss": [1.0]})


def test_plot_training_curves_of_training_history():
    history = {"loss": [0.5, 0.3], "accuracy": [0.8, 0.9], "validation_accuracy": [0.85, 0.9],
               "learning_rate": [1e-3, 9.6e-4]}     # the fields of capsule_lib.training.History
    fig = plot_training_curves(history)
    assert [len(ax.lines) for ax in fig.axes] == [1, 2]


def test_plot_capsule_lengths():
    lengths = torch.rand(3, 10)
    assert len(plot_capsule_lengths(lengths, labels=[0, 1, 2]).axes) == 3
    assert len(plot_capsule_lengths(lengths[0]).axes) == 1


def test_plot_digits_with_lengths():
    lengths = torch.rand(4, 10)
    fig = plot_digits_with_lengths(torch.rand(4, 1, 28, 28), lengths, labels=[0, 1, 2, 3])
    assert len(fig.axes) == 8
    with pytest.raises(ValueError, match="same number"):
        plot_digits_with_lengths(torch.rand(3, 1, 28, 28), lengths, labels=[0, 1, 2, 3])


def test_functions_draw_into_given_axes():
    fig, axes = plt.subplots(1, 3)
    assert plot_squash_curves(axes=axes[:2]) is fig
    assert plot_coupling_heatmap(torch.full((4, 3), 1 / 3), ax=axes[2]) is fig
    assert len(fig.axes) == 4                                          # + the heatmap's colorbar
    with pytest.raises(ValueError, match="expected 2 axes"):
        plot_squash_curves(axes=axes)
