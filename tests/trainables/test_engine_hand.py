"""One leaky-memory update computed by hand (STYLE 3.5): a 2-2-1 net, sigmoid output, MSE.

Setup (every case): input I = (1, 2), target 1 (one class), learning rate 0.1, leak a = 0.5,
previous hidden state H(n-1) = (0.2, 0.4) loaded through the checkpoint API, and

    W1 = [[0.5, 0.25], [0.5, -0.5]], b1 = (0, 0)  ->  pre = W1 I + b1 = (1.0, -0.5),
                                                      ReLU(pre) = (1, 0): unit 2 is silent
    W2 = [[1, 2]], b2 = -1

leaky (a = 0.5):    H(n) = 0.5 (0.2, 0.4) + 0.5 (1, 0) = (0.6, 0.2)
                    z = 0.6 + 2 * 0.2 - 1 = 0, y = sigmoid(0) = 0.5
leaky-reset (first item of the stream is a category change, so a = 0):
                    H(n) = ReLU(pre) = (1, 0), z = 1 + 0 - 1 = 0, y = 0.5

dL/dz = 2 (y - t) y (1 - y) = 2 (-0.5)(0.25) = -0.25;  lr * dL/dz = -0.025
W2 <- W2 + 0.025 H(n),  b2 <- -1 + 0.025 = -0.975
lr * dL/dH = W2^T (-0.025) = (-0.025, -0.05)
lr * dL/dpre = (1 - a) * that * ReLU'(pre)  [leak-scaled]    = (-0.0125, 0)   (a = 0.5)
             =           that * ReLU'(pre)  [leak-unscaled]  = (-0.025, 0)
W1 row 1 <- (0.5, 0.25) - lr*dL/dpre_1 * (1, 2); row 2 unchanged (ReLU' = 0); b1 <- b1 - lr*dL/dpre
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import Dataset
from trainables.engine import TrialRun

W1 = [[0.5, 0.25], [0.5, -0.5]]
B1 = [0.0, 0.0]
W2 = [[1.0, 2.0]]
B2 = [-1.0]
H_PREVIOUS = [0.2, 0.4]

CASES = {
    # model, gradient: H(n), W1 after, b1 after, W2 after, b2 after
    ("leaky", "leak-scaled"): (
        [0.6, 0.2], [[0.5125, 0.275], [0.5, -0.5]], [0.0125, 0.0], [[1.015, 2.005]], [-0.975]
    ),
    ("leaky", "leak-unscaled"): (
        [0.6, 0.2], [[0.525, 0.30], [0.5, -0.5]], [0.025, 0.0], [[1.015, 2.005]], [-0.975]
    ),
    ("leaky-reset", "leak-scaled"): (
        [1.0, 0.0], [[0.525, 0.30], [0.5, -0.5]], [0.025, 0.0], [[1.025, 2.0]], [-0.975]
    ),
    ("leaky-reset", "leak-unscaled"): (
        [1.0, 0.0], [[0.525, 0.30], [0.5, -0.5]], [0.025, 0.0], [[1.025, 2.0]], [-0.975]
    ),
}


def _hand_run(model: str, gradient: str) -> TrialRun:
    """The docstring's net and memory loaded into a fresh one-replicate run."""
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    y = np.array([0])
    data = Dataset("hand", x, y, x, y, num_classes=1)
    config = TrialConfig(
        model=model, gradient=gradient, hidden=(2,), output="sigmoid", loss="mse",
        learning_rate=0.1, leak=0.5, replicates=1, epochs=1, eval_every=1, dtype="float64",
    )
    run = TrialRun(config, data=data)
    state = run.state_dict()
    as_state = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731  [R=1, ...]
    state["weights"] = [as_state(W1), as_state(W2)]
    state["biases"] = [as_state(B1), as_state(B2)]
    state["hidden"] = [as_state(H_PREVIOUS)]
    run.load_state_dict(state)
    return run


@pytest.mark.parametrize(("model", "gradient"), list(CASES), ids=["-".join(k) for k in CASES])
def test_one_leaky_update_matches_hand_computation(model: str, gradient: str) -> None:
    """H(n) and the first SGD update equal the numbers worked out in the module docstring."""
    hidden, w1, b1, w2, b2 = CASES[(model, gradient)]
    run = _hand_run(model, gradient)
    assert [p.samples_seen for p in run] == [0, 1]
    state = run.state_dict()
    for got, want in (
        (state["hidden"][0][0], hidden),
        (state["weights"][0][0], w1),
        (state["biases"][0][0], b1),
        (state["weights"][1][0], w2),
        (state["biases"][1][0], b2),
    ):
        np.testing.assert_allclose(got.numpy(), np.array(want), rtol=0, atol=1e-12)


def test_hand_case_test_loss_before_training() -> None:
    """Test loss at 0 samples ignores the memory: z = 1 + 0 - 1 = 0, MSE = (0.5 - 1)^2 = 0.25."""
    point = next(iter(_hand_run("leaky", "leak-scaled")))
    assert point.samples_seen == 0
    np.testing.assert_allclose(point.test_loss, [0.25], rtol=0, atol=1e-12)
