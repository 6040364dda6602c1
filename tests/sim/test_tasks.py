"""flcomp.tasks: datasets, IDX files, partitions, models, local training, evaluation, known optima."""

from __future__ import annotations

import dataclasses
import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flcomp.tasks import MODELS, Task, TaskConfig
from flcomp.tasks import datasets as task_datasets
from flcomp.tasks.datasets import FASHION_MNIST_FILES, load_digits, load_fashion_mnist
from flcomp.tasks.idx import parse_idx, read_idx
from flcomp.tasks.partition import partition_indices
from flcomp.tasks.training import epoch_batches, one_batch

HAVE_FASHION = all(
    (task_datasets.FASHION_MNIST_DIR / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES.values()
)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Debian package dataset-fashion-mnist not installed"
)

LINEAR = TaskConfig(dataset="synthetic-linear", model="linear", num_clients=5, mode="gd", batch_size=0)
LOGISTIC = TaskConfig(dataset="synthetic-logistic", model="logreg", num_clients=5, mode="gd", batch_size=0)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """`array` in the IDX format with type code `code` (big-endian body)."""
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_fashion_like(directory, n_train: int = 6, n_test: int = 4) -> None:
    """The four Fashion-MNIST files, gzipped, holding tiny 5×3 images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 5, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (directory / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
        (directory / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x08)))


def fedavg(task: Task, arrays: list[np.ndarray], server_round: int) -> list[np.ndarray]:
    """One round with every client: w ← w − Σ_k (n_k/n) Δ_k, Δ_k = w − w_k (FedAvg's weighted mean)."""
    results = [task.train(k, arrays, server_round) for k in range(task.config.num_clients)]
    total = sum(n for _, n, _ in results)
    return [w - sum((w - new[i]) * (n / total) for new, n, _ in results) for i, w in enumerate(arrays)]


# ---------------------------------------------------------------- datasets


def test_digits_shapes_and_split() -> None:
    data = load_digits(0)
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert data.num_outputs == 10 and set(np.unique(data.y_test)) == set(range(10))
    np.testing.assert_array_equal(data.y_train, load_digits.__wrapped__(0).y_train)
    assert not np.array_equal(data.y_train, load_digits(1).y_train)


def test_parse_idx_round_trip_and_errors(tmp_path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    np.testing.assert_array_equal(read_idx(path), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    parsed = parse_idx(idx_bytes(floats, 0x0D))
    assert parsed.dtype == np.float32 and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, floats)
    good = idx_bytes(images, 0x08)
    for bad in (b"\x01" + good[1:], good[:2] + b"\x42" + good[3:], good[:-1], good[:6]):
        with pytest.raises(ValueError):
            parse_idx(bad)


def test_fashion_loader_reads_a_data_dir(tmp_path) -> None:
    write_fashion_like(tmp_path)
    data = load_fashion_mnist(str(tmp_path))
    assert data.x_train.shape == (6, 1, 5, 3) and data.x_test.shape == (4, 1, 5, 3)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(data.x_train[:, 0], raw / 255.0, rtol=1e-6)


def test_fashion_missing_names_the_package_and_option(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(task_datasets, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as error:
        load_fashion_mnist.__wrapped__(str(tmp_path))
    assert "data_dir" in str(error.value)


@needs_fashion
def test_real_fashion_mnist() -> None:
    data = load_fashion_mnist(None)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.y_train), np.full(10, 6000))
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
    task = Task(TaskConfig(dataset="fashion-mnist", model="logreg", num_clients=100, lr=0.1))
    arrays, n, _ = task.train(3, task.initial_arrays(), 1)
    assert n == 600
    assert task.evaluate(arrays)["accuracy"] > 0.5


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_every_index_once_and_are_seeded(scheme: str) -> None:
    labels = load_digits(0).y_train
    parts = partition_indices(labels, len(labels), 10, scheme, 0.5, seed=7)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    again = partition_indices(labels, len(labels), 10, scheme, 0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, len(labels), 10, scheme, 0.5, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_small_alpha_is_non_iid() -> None:
    labels = load_digits(0).y_train
    overall = np.bincount(labels, minlength=10) / len(labels)

    def worst_tv(scheme: str) -> float:
        """The largest total-variation distance of a client's label mix from the overall mix."""
        parts = partition_indices(labels, len(labels), 10, scheme, 0.1, seed=0)
        mixes = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
        return max(0.5 * np.abs(mix - overall).sum() for mix in mixes)

    assert worst_tv("iid") < 0.2
    assert worst_tv("dirichlet") > 0.5


def test_dirichlet_refuses_label_free_data() -> None:
    with pytest.raises(ValueError, match="label"):
        partition_indices(None, 100, 4, "dirichlet", 0.5, seed=0)
    with pytest.raises(ValueError):
        Task(TaskConfig(dataset="synthetic-linear", model="linear", partition="dirichlet"))


# ---------------------------------------------------------------- config and models


@pytest.mark.parametrize(
    "fields",
    [
        {"dataset": "mnist"},
        {"model": "resnet"},
        {"partition": "shards"},
        {"mode": "async"},
        {"dataset": "synthetic-linear", "model": "mlp"},
        {"dataset": "digits", "model": "linear"},
        {"batch_size": -1},
        {"lr": 0.0},
        {"weight_decay": -1.0},
    ],
)
def test_config_rejects(fields: dict) -> None:
    with pytest.raises(ValueError):
        TaskConfig(**fields)


def test_weight_decay_defaults_per_dataset() -> None:
    assert TaskConfig().effective_weight_decay == 0.0
    assert LOGISTIC.effective_weight_decay == 1e-3
    assert (
        TaskConfig(dataset="synthetic-logistic", model="logreg", weight_decay=0.0).effective_weight_decay
        == 0.0
    )


@pytest.mark.parametrize(
    "model, input_shape, outputs",
    [
        ("logreg", (1, 8, 8), 10),
        ("mlp", (1, 8, 8), 10),
        ("cnn", (1, 8, 8), 10),
        ("mlp", (1, 28, 28), 10),
        ("cnn", (1, 28, 28), 10),
        ("logreg", (1000,), 1),
        ("linear", (1000,), 1),
    ],
)
def test_model_forward_shapes(model: str, input_shape: tuple[int, ...], outputs: int) -> None:
    torch.manual_seed(0)
    net = MODELS[model].build(input_shape, outputs)
    assert net(torch.zeros(3, *input_shape)).shape == (3, outputs)
    state = net.state_dict()
    assert list(state) == [name for name, _ in net.named_parameters()]
    assert all(t.dtype == torch.float32 for t in state.values())


def test_cnn_refuses_vectors() -> None:
    with pytest.raises(ValueError):
        MODELS["cnn"].build((64,), 10)


# ---------------------------------------------------------------- training


def test_initial_arrays_are_seeded_copies() -> None:
    task = Task(TaskConfig(model="cnn"))
    first = task.initial_arrays()
    first[0][...] = 0
    again, fresh = task.initial_arrays(), Task(TaskConfig(model="cnn")).initial_arrays()
    assert all(np.array_equal(a, b) for a, b in zip(again, fresh))
    assert not np.array_equal(first[0], again[0])
    assert all(a.dtype == np.float32 for a in again)
    assert [a.shape for a in again] == [tuple(task.model.state_dict()[k].shape) for k in task.keys]
    other = Task(TaskConfig(model="cnn", seed=1)).initial_arrays()
    assert not np.array_equal(other[0], again[0])


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_train_is_bit_identical(model: str) -> None:
    config = TaskConfig(model=model, local_epochs=2, batch_size=16, partition="dirichlet", weight_decay=1e-4)
    task = Task(config)
    start = task.initial_arrays()
    first = task.train(2, start, 5)
    second = Task(config).train(2, start, 5)
    assert first[1:] == second[1:] and first[1] == len(task.partitions[2])
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0]))
    other_round = task.train(2, start, 6)[0]
    assert not all(np.array_equal(a, b) for a, b in zip(first[0], other_round))


def test_train_rejects_wrong_arrays() -> None:
    task = Task(TaskConfig(model="logreg"))
    with pytest.raises(ValueError):
        task.train(0, task.initial_arrays()[:1], 1)
    with pytest.raises(ValueError):
        task.train(0, [a.T for a in task.initial_arrays()], 1)
    with pytest.raises(ValueError):
        task.train(10, task.initial_arrays(), 1)


def test_gd_full_batch_is_one_gradient_step() -> None:
    lr, decay = 0.3, 0.01
    task = Task(TaskConfig(model="mlp", mode="gd", batch_size=0, lr=lr, weight_decay=decay))
    rng = np.random.default_rng(1)
    start = [a + 0.1 * rng.standard_normal(a.shape).astype(np.float32) for a in task.initial_arrays()]
    new, n, metrics = task.train(4, start, 3)

    index = task.partitions[4]
    x = torch.from_numpy(task.data.x_train[index])
    y = torch.from_numpy(task.data.y_train[index])
    net = MODELS["mlp"].build((1, 8, 8), 10)
    net.load_state_dict({k: torch.from_numpy(a) for k, a in zip(task.keys, start)})
    loss = F.cross_entropy(net(x), y) + decay / 2 * sum((p**2).sum() for p in net.parameters())
    grads = torch.autograd.grad(loss, list(net.parameters()))
    expected = [a - lr * g.numpy() for a, g in zip(start, grads)]

    assert n == len(index)
    assert metrics["train_loss"] == pytest.approx(loss.item(), rel=1e-6)
    for got, want in zip(new, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_batch_schedules() -> None:
    rng = np.random.default_rng(0)
    batches = epoch_batches(10, 4, 2, rng)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches[:3])), np.arange(10))
    assert [len(b) for b in epoch_batches(10, 0, 3, rng)] == [10, 10, 10]
    (step,) = one_batch(10, 4, 5, rng)
    assert len(np.unique(step)) == 4
    np.testing.assert_array_equal(one_batch(10, 0, 5, rng)[0], np.arange(10))


def test_digits_evaluate_and_fedavg_learns() -> None:
    task = Task(TaskConfig(model="mlp", lr=0.1, local_epochs=2))
    arrays = task.initial_arrays()
    before = task.evaluate(arrays)
    assert set(before) == {"loss", "accuracy"} and 0.0 <= before["accuracy"] <= 1.0
    assert task.optimum is None
    with pytest.raises(ValueError):
        task.smoothness()
    for server_round in range(1, 21):
        arrays = fedavg(task, arrays, server_round)
    after = task.evaluate(arrays)
    assert after["accuracy"] > 0.85 and after["loss"] < before["loss"]


# ---------------------------------------------------------------- synthetic optima


def full_objective_grad(task: Task, arrays: list[np.ndarray]) -> float:
    """‖∇f(w)‖ in float64, f written out here: mean loss over all training samples + λ/2‖w‖²."""
    params = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    weight, bias = params
    x = torch.from_numpy(task.data.x_train).double()
    y = torch.from_numpy(task.data.y_train).double()
    z = x @ weight[0] + bias[0]
    losses = {"synthetic-linear": 0.5 * (z - y) ** 2, "synthetic-logistic": F.softplus(z) - y * z}
    f = losses[task.config.dataset].mean() + task.weight_decay / 2 * sum((p**2).sum() for p in params)
    grads = torch.autograd.grad(f, params)
    assert f.item() == pytest.approx(task.objective(arrays), rel=1e-12)
    return float(torch.sqrt(sum((g**2).sum() for g in grads)))


@pytest.mark.parametrize("config", [LINEAR, LOGISTIC], ids=["linear", "logistic"])
def test_synthetic_data(config: TaskConfig) -> None:
    task = Task(config)
    assert task.data.x_train.shape == (5000, 1000) and task.data.x_test.shape == (1000, 1000)
    assert task.keys == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(task.data.x_train, Task(config).data.x_train)


@pytest.mark.parametrize("config", [LINEAR, LOGISTIC], ids=["linear", "logistic"])
def test_synthetic_optimum_is_stationary(config: TaskConfig) -> None:
    task = Task(config)
    assert full_objective_grad(task, task.optimal_arrays()) < 1e-9
    assert full_objective_grad(task, task.initial_arrays()) > 1e-2
    assert task.optimum == pytest.approx(task.objective(task.optimal_arrays()), rel=1e-15)
    assert task.optimum < task.objective(task.initial_arrays())


@pytest.mark.parametrize("config", [LINEAR, LOGISTIC], ids=["linear", "logistic"])
def test_distributed_gd_closes_the_gap(config: TaskConfig) -> None:
    smoothness = Task(config).smoothness()
    task = Task(dataclasses.replace(config, lr=1.0 / smoothness))
    arrays = task.initial_arrays()
    start = task.evaluate(arrays)
    assert start["gap"] == pytest.approx(1.0)
    expected = {"loss", "objective", "gap"} | ({"accuracy"} if config is LOGISTIC else set())
    assert set(start) == expected
    for server_round in range(1, 201):
        arrays = fedavg(task, arrays, server_round)
    assert -1e-12 < task.evaluate(arrays)["gap"] < 1e-4


def test_digits_logistic_regression_has_a_known_optimum_only_with_weight_decay():
    with_decay = Task(TaskConfig(dataset="digits", model="logreg", weight_decay=0.1))
    optimum = with_decay.optimal_arrays()
    assert with_decay.evaluate(optimum)["gap"] == pytest.approx(0.0, abs=1e-9)
    assert with_decay.evaluate(with_decay.initial_arrays())["gap"] == pytest.approx(1.0)
    assert "gap" not in Task(TaskConfig(dataset="digits", model="logreg")).evaluate(optimum)
    assert Task(TaskConfig(dataset="digits", model="mlp", weight_decay=0.1)).optimum is None
