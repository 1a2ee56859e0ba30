"""Models, flat parameter vectors, and local training as a device runs it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedfleet.data.datasets import load_dataset, train_test_split
from fedfleet.device.training import evaluate, train_local
from fedfleet.models.nets import build_model
from fedfleet.models.params import flat_parameters, load_flat_parameters, num_parameters, parameter_layout

MNIST = (1, 28, 28)
DIGITS = (1, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine run far faster on one thread; restore the caller's setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_data() -> tuple[np.ndarray, np.ndarray]:
    """200 MNIST examples, like one device's data (read-only slices of the cached dataset)."""
    ds = load_dataset("mnist5k")
    pick = np.random.default_rng(0).choice(len(ds), size=200, replace=False)
    return ds.x[pick], ds.y[pick]


def _train(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    global_weights: np.ndarray | None = None,
    epochs: int = 2,
    batch_size: int = 10,
    learning_rate: float = 0.05,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """train_local with small defaults, starting from the model's own weights unless told otherwise."""
    return train_local(
        model,
        x,
        y,
        global_weights=flat_parameters(model) if global_weights is None else global_weights,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        proximal_mu=proximal_mu,
        seed=seed,
    ).delta


# --- models ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "shape", "count"),
    [
        ("2nn", MNIST, 199_210),  # McMahan et al. 2017
        ("cnn", MNIST, 1_663_370),  # McMahan et al. 2017
        ("logistic", MNIST, 7_850),
        ("2nn", DIGITS, 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
        ("cnn", DIGITS, 832 + 51_264 + (64 * 2 * 2) * 512 + 512 + 5_130),
        ("logistic", DIGITS, 650),
    ],
)
def test_parameter_counts_and_output_shape(architecture: str, shape: tuple[int, int, int], count: int) -> None:
    model = build_model(architecture, shape, 10)  # type: ignore[arg-type]
    assert num_parameters(model) == count
    assert model(torch.zeros(3, *shape)).shape == (3, 10)


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = flat_parameters(build_model("cnn", MNIST, 10, seed=1))
    b = flat_parameters(build_model("cnn", MNIST, 10, seed=1))
    c = flat_parameters(build_model("cnn", MNIST, 10, seed=2))
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Default PyTorch scale: first-layer weights within ±1/sqrt(fan_in) = ±0.2 for a 5x5x1 conv.
    conv1 = a[: 32 * 25]
    assert 0.15 < np.abs(conv1).max() <= 0.2


def test_bad_model_requests_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), 10)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet", MNIST, 10)  # type: ignore[arg-type]


# --- flat parameters -------------------------------------------------------------------------------------


def test_flat_vector_round_trips_and_is_a_copy() -> None:
    model = build_model("2nn", DIGITS, 10, seed=0)
    vec = np.random.default_rng(0).standard_normal(num_parameters(model)).astype(np.float32)
    load_flat_parameters(model, vec)
    got = flat_parameters(model)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vec)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    np.testing.assert_array_equal(got, vec)  # the earlier copy did not change with the model
    np.testing.assert_array_equal(dict(model.named_parameters())["out.bias"].detach().numpy(), vec[-10:])


def test_layout_names_the_parameters_in_vector_order() -> None:
    model = build_model("2nn", MNIST, 10)
    layout = parameter_layout(model)
    assert layout == [
        ("fc1.weight", (200, 784)),
        ("fc1.bias", (200,)),
        ("fc2.weight", (200, 200)),
        ("fc2.bias", (200,)),
        ("out.weight", (10, 200)),
        ("out.bias", (10,)),
    ]
    assert sum(int(np.prod(s)) for _, s in layout) == flat_parameters(model).size


def test_loading_a_vector_of_the_wrong_length_or_rank_is_a_clear_error() -> None:
    model = build_model("logistic", DIGITS, 10)
    with pytest.raises(ValueError, match="has 649 values but the model has 650 parameters"):
        load_flat_parameters(model, np.zeros(649, dtype=np.float32))
    with pytest.raises(ValueError, match="must be 1-D"):
        load_flat_parameters(model, np.zeros((10, 65), dtype=np.float32))


# --- local training --------------------------------------------------------------------------------------


def test_local_training_reduces_the_loss(local_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = local_data
    model = build_model("2nn", MNIST, 10, seed=0)
    before = evaluate(model, x, y).loss
    result = train_local(
        model, x, y, global_weights=flat_parameters(model), epochs=5, batch_size=10, learning_rate=0.1, seed=0
    )
    after = evaluate(model, x, y).loss
    assert after < 0.5 * before
    assert result.num_examples == 200
    assert result.delta.dtype == np.float32
    assert 0 < result.train_loss < before


def test_delta_is_new_minus_global_and_training_starts_from_global(
    local_data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = local_data
    global_weights = flat_parameters(build_model("2nn", MNIST, 10, seed=5))
    model = build_model("2nn", MNIST, 10, seed=6)  # different weights: train_local must load the global ones
    result = train_local(
        model, x, y, global_weights=global_weights, epochs=1, batch_size=20, learning_rate=0.05, seed=0
    )
    np.testing.assert_allclose(global_weights + result.delta, flat_parameters(model), rtol=0, atol=1e-6)
    assert 0 < np.linalg.norm(result.delta) < 0.1 * np.linalg.norm(global_weights)


def test_same_seed_gives_a_bit_identical_delta(local_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = local_data
    w = flat_parameters(build_model("2nn", MNIST, 10, seed=0))
    a = _train(build_model("2nn", MNIST, 10, seed=1), x, y, global_weights=w, seed=7)
    b = _train(build_model("2nn", MNIST, 10, seed=2), x, y, global_weights=w, seed=7)
    c = _train(build_model("2nn", MNIST, 10, seed=1), x, y, global_weights=w, seed=8)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)  # the seed changes the batch order


def test_one_full_batch_step_is_exactly_minus_lr_times_the_gradient(
    local_data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = local_data
    model = build_model("logistic", MNIST, 10, seed=0)
    w = flat_parameters(model)
    loss = F.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]).numpy()
    result = train_local(model, x, y, global_weights=w, epochs=1, batch_size=0, learning_rate=0.5, seed=0)
    np.testing.assert_allclose(result.delta, -0.5 * grad, rtol=1e-4, atol=1e-7)
    assert result.train_loss == pytest.approx(float(loss.detach()), rel=1e-6)  # loss of the only batch, before its step


def test_fedprox_matches_the_explicit_proximal_loss(local_data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = local_data
    mu, lr, epochs = 0.5, 0.1, 4
    model = build_model("2nn", MNIST, 10, seed=0)
    w = flat_parameters(model)
    # Reference: plain SGD on cross-entropy + μ/2‖w − w_global‖² differentiated by autograd, full batch.
    ref = build_model("2nn", MNIST, 10, seed=0)
    params = list(ref.parameters())
    anchor = [p.detach().clone() for p in params]
    for _ in range(epochs):
        prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
        loss = F.cross_entropy(ref(torch.tensor(x)), torch.tensor(y)) + mu / 2 * prox
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
    result = train_local(
        model, x, y, global_weights=w, epochs=epochs, batch_size=0, learning_rate=lr, proximal_mu=mu, seed=0
    )
    np.testing.assert_allclose(result.delta, flat_parameters(ref) - w, rtol=1e-4, atol=1e-6)


def test_a_huge_proximal_term_keeps_the_update_near_the_global_model(
    local_data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = local_data
    plain = _train(build_model("2nn", MNIST, 10), x, y, epochs=5, proximal_mu=0.0)
    prox = _train(build_model("2nn", MNIST, 10), x, y, epochs=5, proximal_mu=10.0)
    assert np.linalg.norm(prox) < 0.2 * np.linalg.norm(plain)


def test_training_reads_cached_read_only_data_without_warnings() -> None:
    ds = load_dataset("digits")
    model = build_model("cnn", DIGITS, 10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train_local(
            model, ds.x[:64], ds.y[:64], global_weights=flat_parameters(model), epochs=1, batch_size=16,
            learning_rate=0.05, seed=0,
        )  # fmt: skip
    assert np.isfinite(result.delta).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": -1}, "batch_size must be non-negative"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"proximal_mu": -1.0}, "proximal_mu must be non-negative"),
    ],
)
def test_bad_training_arguments_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    model = build_model("logistic", DIGITS, 10)
    x, y = load_dataset("digits").x[:10], load_dataset("digits").y[:10]
    with pytest.raises(ValueError, match=message):
        _train(model, x, y, **kwargs)


def test_training_needs_examples_and_matching_labels() -> None:
    model = build_model("logistic", DIGITS, 10)
    x = load_dataset("digits").x
    with pytest.raises(ValueError, match="at least one local example"):
        _train(model, x[:0], np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="expected \\(10,\\)"):
        _train(model, x[:10], np.zeros(9, dtype=np.int64))


# --- evaluation ------------------------------------------------------------------------------------------


def test_evaluate_matches_a_hand_computed_loss_and_accuracy() -> None:
    ds = load_dataset("digits")
    model = build_model("logistic", DIGITS, 10)
    bias = np.zeros(10, dtype=np.float32)
    bias[3] = 2.0
    load_flat_parameters(model, np.concatenate([np.zeros(640, dtype=np.float32), bias]))  # logits = bias
    result = evaluate(model, ds.x, ds.y, batch_size=256)  # several batches, the last one partial
    log_softmax = bias - np.log(np.exp(bias).sum())
    assert result.num_examples == len(ds)
    assert result.accuracy == pytest.approx(float(np.mean(ds.y == 3)))
    assert result.loss == pytest.approx(float(-log_softmax[ds.y].mean()), rel=1e-6)


def test_a_2nn_trained_centrally_on_mnist5k_passes_85_percent() -> None:
    train, test = train_test_split(load_dataset("mnist5k"), 1000, seed=0)
    model = build_model("2nn", MNIST, 10, seed=0)
    train_local(
        model,
        train.x,
        train.y,
        global_weights=flat_parameters(model),
        epochs=3,
        batch_size=20,
        learning_rate=0.1,
        seed=0,
    )
    assert evaluate(model, test.x, test.y).accuracy > 0.85
