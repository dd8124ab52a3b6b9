"""The engine on CUDA: the same numbers as on the CPU (float64), and the GPU really does the work.

Skipped where ``torch.cuda.is_available()`` is False (CI here has no GPU); run with
``pytest -m gpu`` on a machine with one.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.trainables.fast_paths import assert_on_fast_path
from trainables.config import DatasetConfig, TrialConfig
from trainables.engine import TrialRun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BASE = TrialConfig(
    model="leaky-reset",
    ordering="reps-3",
    dataset=DatasetConfig(categories=3, features=6, train_per_category=50, test_per_category=5),
    hidden=(6, 5),
    learning_rate=0.05,
    leak=0.6,
    reset_threshold=0.8,
    replicates=4,
    epochs=2,
    eval_every=50,
    dtype="float64",
)
CASES = {  # every engine path: fused SGD, gradient buffers + RMSprop, group resets, AE, LSTM
    "leaky-reset": BASE,
    "leaky-threshold-group-unscaled": BASE.replace(model="leaky-threshold", reset_scope="group",
                                                   gradient="leak-unscaled"),
    "minibatch-rmsprop": BASE.replace(model="minibatch", batch_size=None, optimizer="rmsprop",
                                      learning_rate=0.003, momentum=0.9),
    "softmax-ce-streamed": BASE.replace(model="multiscale-reset", output="softmax",
                                        loss="cross-entropy", test_protocol="streamed"),
    "autoencoder": BASE.replace(
        model="multiscale-reset", reset_scope="group", task="reconstruct", ordering="stream",
        epochs=1, dataset=DatasetConfig(name="multiscale-stream", stream_length=200, noise=0.2)),
    "lstm": BASE.replace(model="lstm", bptt_window=3, epochs=1),
}


def _train(config: TrialConfig) -> TrialRun:
    run = TrialRun(config)
    list(run)
    return run


@pytest.mark.parametrize("name", list(CASES))
def test_cuda_run_equals_cpu_run_in_float64(name: str) -> None:
    """Weights, curves and run metrics on CUDA equal the CPU run's to 1e-9 (float64)."""
    config = CASES[name]
    cpu = _train(config.replace(device="cpu"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    gpu = _train(config.replace(device="cuda"))
    # the work happened on the GPU: parameters live there and CUDA memory was used for it
    assert gpu.device.type == "cuda"
    assert all(t.device.type == "cuda" for t in (*gpu.weights, *gpu.biases))
    weight_bytes = sum(t.numel() * t.element_size() for t in (*gpu.weights, *gpu.biases))
    assert torch.cuda.max_memory_allocated() >= weight_bytes
    for mine, theirs in zip([*gpu.weights, *gpu.biases], [*cpu.weights, *cpu.biases],
                            strict=True):
        assert float((mine.cpu() - theirs).abs().max()) < 1e-9
    a, b = gpu.result(), cpu.result()
    np.testing.assert_allclose(a.test_loss, b.test_loss, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.test_accuracy, b.test_accuracy, rtol=0, atol=1e-9)
    assert a.per_replicate.keys() == b.per_replicate.keys()
    for key in a.per_replicate:
        np.testing.assert_allclose(a.per_replicate[key], b.per_replicate[key], rtol=0,
                                   atol=1e-9, err_msg=key)


@pytest.mark.parametrize("name", ["leaky-reset", "autoencoder"])
def test_cuda_fast_paths_equal_cpu(name: str, fast_path: str) -> None:
    """The engine's speed paths (replicate axis innermost, queued updates) on CUDA too."""
    config = CASES[name]
    cpu = _train(config.replace(device="cpu"))
    gpu = _train(config.replace(device="cuda"))
    assert gpu.weights[0].is_cuda
    assert_on_fast_path(gpu, fast_path)
    for mine, theirs in zip([*gpu.weights, *gpu.biases], [*cpu.weights, *cpu.biases],
                            strict=True):
        assert float((mine.cpu() - theirs).abs().max()) < 1e-9
    np.testing.assert_allclose(gpu.result().test_loss, cpu.result().test_loss, rtol=0, atol=1e-9)


def test_auto_device_picks_cuda_and_float32_stays_close() -> None:
    """device='auto' uses CUDA when present; float32 on CUDA stays near float32 on the CPU."""
    config = BASE.replace(dtype="float32", device="auto")
    gpu = _train(config)
    assert gpu.device.type == "cuda" and gpu.weights[0].dtype == torch.float32
    cpu = _train(config.replace(device="cpu"))
    np.testing.assert_allclose(gpu.result().test_loss, cpu.result().test_loss, atol=1e-4)


def test_cuda_checkpoint_resumes_to_the_cpu_numbers() -> None:
    """Half a run on CUDA, state_dict (to host memory), pickle, resume on CUDA: the CPU run's
    numbers (state_dict moves tensors to the CPU, load_state_dict back to the device)."""
    config = BASE.replace(model="minibatch", batch_size=None, optimizer="rmsprop",
                          learning_rate=0.003, eval_every=35)  # 35: stops mid-batch
    whole = _train(config.replace(device="cpu"))
    first = TrialRun(config.replace(device="cuda"))
    points = iter(first)
    next(points), next(points)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert all(t.device.type == "cpu" for t in state["weights"])
    resumed = TrialRun(config.replace(device="cuda"))
    resumed.load_state_dict(state)
    list(resumed)
    for mine, theirs in zip(resumed.weights, whole.weights, strict=True):
        assert float((mine.cpu() - theirs).abs().max()) < 1e-9
