"""The ``lstm`` model: an LSTM over the sample stream trained with truncated BPTT (paper A.8-A.10).

The paper compares its leaky-memory nets, which are trained without backpropagation through time,
with "an LSTM trained with BPTT" on the same data, network size, learning rate and optimizer
(A.8), tested on isolated items and on streams (A.9), in the training ordering or another (A.10).
The paper gives no further detail; this module fixes one reading and says so.

Network. ``hidden = (H_1, ..., H_d)`` gives d stacked LSTM layers; layer l has the gate
equations of ``torch.nn.LSTM`` (gate order i, f, g, o) with one bias per layer (torch's
``b_ih + b_hh`` as a single vector; b_hh does not exist here):

    [i, f, g, o] = W_ih x(n) + W_hh h(n-1) + b
    c(n) = sigmoid(f) * c(n-1) + sigmoid(i) * tanh(g)
    h(n) = sigmoid(o) * tanh(c(n))

x(n) is the item (layer 1) or the layer below's h(n). A linear readout z = W_out h_d(n) + b_out
feeds the configured output and loss, exactly as in the other models (sigmoid/softmax, MSE/cross-
entropy; ``reconstruct``: target = input). Init: Xavier-uniform on each whole matrix (W_ih
[4H, in], W_hh [4H, H], W_out [O, H], as ``torch.nn.init.xavier_uniform_`` would), drawn from each
replicate's init generator in that order, layer by layer; zero biases (no forget-gate bias).
Memory is never reset: the gates decide what the cell keeps.

Training: one update per sample (batch size 1, incremental, as every model of the paper), by
truncated BPTT with k1 = 1, k2 = ``bptt_window`` = K. On step n:

  1. start from the stored state s(m), m = n - K (the zero state when m < 0), detached;
  2. run the window's items x(m+1), ..., x(n) through the LSTM with the *current* weights;
  3. loss on step n's output only; autograd gives the gradient through the K window steps;
  4. store the window's final state as s(n) (detached), the network's state after item n;
  5. the engine applies the gradient (sgd, or rmsprop / ``batch_size`` through its buffers).

s(m) was computed on step m, with the weights of that time: the standard TBPTT approximation
(the state entering the window is not recomputed with the current weights). With K = 1 this is
plain online training with the previous state as a constant. The last K states live in a ring
buffer of K slots (s(m) in slot m mod K), so a checkpoint resumes exactly.

Evaluation. ``isolated``: each test item alone from the zero state, h = o * tanh(i * g), through
all layers. ``streamed``: the test stream from the zero state with the state carried, no learning.

Batched over R replicates with autograd: every weight has a leading replicate axis, the loss
gradient of replicate r depends only on replicate r's weights, so one backward of
sum_r dL_r/dz_r . z_r gives all R per-replicate gradients at once.

Shape letters: R replicates, L window (or stream) steps, N test items, I inputs, H hidden units of
a layer, O outputs, K window (ring) slots.

Example:
    >>> from trainables.config import DatasetConfig, TrialConfig
    >>> from trainables.engine import TrialRun
    >>> config = TrialConfig(model="lstm", ordering="reps-3", replicates=2, eval_every=60,
    ...                      bptt_window=3, dataset=DatasetConfig(train_per_category=30,
    ...                                                           test_per_category=10))
    >>> run = TrialRun(config)
    >>> [tuple(w.shape) for w in run.weights], [tuple(b.shape) for b in run.biases]
    ([(2, 32, 16), (2, 32, 8), (2, 4, 8)], [(2, 32), (2, 4)])
    >>> [p.samples_seen for p in run]
    [0, 60, 120]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

OutputGradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits z [R, O], targets [R, O]) -> dL/dz [R, O] of the per-sample loss (engine's)."""


class LSTMNetwork:
    """Forward, gradient and evaluation of R stacked-LSTM replicates; holds no tensors.

    Weights and state belong to the engine (``TrialRun.weights``, ``.biases``, ``._hidden``) and
    are passed in on every call, so checkpoints and optimizer steps stay the engine's:

    - ``weights``: per layer l, W_ih [R, 4H, in] and W_hh [R, 4H, H]; last W_out [R, O, H_d];
    - ``biases``: per layer l, b [R, 4H]; last b_out [R, O];
    - ``state``: per layer l, the ring of h [K, R, H] and of c [K, R, H].

    The engine calls :meth:`init_params` and :meth:`init_state` once when a run is built,
    :meth:`gradients` once per training sample (it writes the new state into the ring), and
    :meth:`isolated_logits` / :meth:`stream` when it evaluates (no mutation).
    """

    def __init__(self, sizes: Sequence[int], window: int, output_grad: OutputGradient) -> None:
        self.sizes = list(sizes)  # I, H_1, ..., H_d, O
        self.window = window
        self.output_grad = output_grad
        self.depth = len(self.sizes) - 2

    # --- construction -------------------------------------------------------------------------
    def init_params(
        self, generators: Sequence[torch.Generator], dtype: torch.dtype, device: torch.device
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Xavier-uniform weights (replicate r from ``generators[r]``) and zero biases."""
        shapes = []
        for fan_in, hidden in zip(self.sizes[:-2], self.sizes[1:-1], strict=True):
            shapes += [(4 * hidden, fan_in), (4 * hidden, hidden)]  # W_ih, W_hh
        shapes.append((self.sizes[-1], self.sizes[-2]))  # W_out
        per_replicate = []
        for g in generators:
            # RNG draw in float64 on CPU, so init is identical for every dtype and device
            per_replicate.append([
                (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1)
                * math.sqrt(6.0 / sum(shape))
                for shape in shapes
            ])
        weights = [  # [R, out, in] per matrix
            torch.stack(list(matrix)).to(dtype).to(device)
            for matrix in zip(*per_replicate, strict=True)
        ]
        r = len(generators)
        biases = [torch.zeros(r, 4 * h, dtype=dtype, device=device) for h in self.sizes[1:-1]]
        biases.append(torch.zeros(r, self.sizes[-1], dtype=dtype, device=device))
        return weights, biases

    def init_state(self, r: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Zero rings: per layer, h and c of the last K steps, [K, R, H] each."""
        return [
            torch.zeros(self.window, r, h, dtype=dtype, device=device)
            for h in self.sizes[1:-1]
            for _ in ("h", "c")
        ]

    # --- the network ---------------------------------------------------------------------------
    def _run(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        x: torch.Tensor,
        start: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """x [R, L, I] through the layers from ``start`` (h, c) per layer (None = zero state).

        Returns the top layer's h over the window [R, L, H_d], the final (h, c) of every layer,
        and the first layer's h over the window [R, L, H_1]. Layer by layer: layer l's whole
        input sequence is known before its time loop runs.
        """
        seq, final, first = x, [], x
        for layer in range(self.depth):
            w_ih, w_hh, b = weights[2 * layer], weights[2 * layer + 1], biases[layer]
            # input part of every step's gates at once: [R, L, in] @ [R, in, 4H] -> [R, L, 4H]
            x_gates = torch.baddbmm(b[:, None, :], seq, w_ih.transpose(1, 2))
            w_hh_t = w_hh.transpose(1, 2)  # [R, H, 4H]
            h, c = start[layer] if start[layer] is not None else (None, None)
            outputs = []
            for t in range(seq.shape[1]):
                gates = x_gates[:, t]  # [R, 4H]
                if h is not None:  # h W_hh^T as a row vector (bmm's fast path, see engine)
                    gates = torch.baddbmm(gates[:, None, :], h[:, None, :], w_hh_t)[:, 0]
                i, f, g, o = gates.chunk(4, dim=1)  # [R, H] each, torch.nn.LSTM's order
                cell = torch.sigmoid(i) * torch.tanh(g)
                c = cell if c is None else torch.sigmoid(f) * c + cell
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            seq = torch.stack(outputs, dim=1)  # [R, L, H]
            final.append((h, c))
            if layer == 0:
                first = seq
        return seq, final, first

    def gradients(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        state: list[torch.Tensor],
        step: int,
        x: torch.Tensor,
        target: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Truncated-BPTT gradient of step ``step``'s loss for every replicate.

        ``x`` [R, L, I] holds items step-L+1 .. step (L = min(step + 1, K)); ``target`` [R, O]
        is step's target. Returns dL/dp for p in (*weights, *biases), and stores the window's
        final state as s(step) in the ring ``state`` (in place, detached).
        """
        k = self.window
        slot = step % k  # holds s(step - K) now, s(step) after this call
        start = [  # the zero state while step - K < 0 (then L = step + 1)
            None if step < k else (state[2 * layer][slot], state[2 * layer + 1][slot])
            for layer in range(self.depth)
        ]
        params = [p.detach().requires_grad_() for p in (*weights, *biases)]  # leaves, shared data
        w, b = params[: len(weights)], params[len(weights) :]
        with torch.enable_grad():
            seq, final, _ = self._run(w, b, x, start)
            h_top = seq[:, -1]  # [R, H_d], step's state
            # readout as a row vector: [R, 1, H] @ [R, H, O] -> [R, O]
            z = torch.baddbmm(b[-1][:, None, :], h_top[:, None, :], w[-1].transpose(1, 2))[:, 0]
            # sum_r dL_r/dz_r . z_r: one backward gives each replicate its own gradient
            grad_z = self.output_grad(z.detach(), target)  # [R, O]
            # W_hh is unused on step 0 (zero start state): its gradient is then zero
            grads = torch.autograd.grad(z, params, grad_outputs=grad_z, materialize_grads=True)
        for layer, (h, c) in enumerate(final):
            state[2 * layer][slot] = h.detach()
            state[2 * layer + 1][slot] = c.detach()
        return list(grads)

    def _readout(
        self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], h: torch.Tensor
    ) -> torch.Tensor:
        """z = W_out h + b_out over a sequence: [R, L, H] @ [R, H, O] -> [R, L, O]."""
        return torch.baddbmm(biases[-1][:, None, :], h, weights[-1].transpose(1, 2))

    def isolated_logits(
        self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Each item of x [N, I] alone from the zero state: logits [R, N, O]."""
        h = x  # [N, I], shared by all replicates, then [R, N, H]
        for layer in range(self.depth):
            w_ih, b = weights[2 * layer], biases[layer]
            gates = torch.matmul(h, w_ih.transpose(1, 2)) + b[:, None, :]  # [R, N, 4H]
            i, _, g, o = gates.chunk(4, dim=2)  # f multiplies c(n-1) = 0
            h = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
        return self._readout(weights, biases, h)

    def stream(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        x: torch.Tensor,
        record: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [R, N, I] as one stream from the zero state, no learning: logits [R, N, O] and, if
        ``record``, the first layer's h [R, N, H_1]."""
        seq, _, first = self._run(weights, biases, x, [None] * self.depth)
        return self._readout(weights, biases, seq), first if record else None
