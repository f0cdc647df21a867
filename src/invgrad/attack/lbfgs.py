"""L-BFGS over a batch of independent problems, each element exactly as ``torch.optim.LBFGS`` would run it alone.

L-BFGS is not element-wise (its curvature history mixes every coordinate of a problem), so one
``torch.optim.LBFGS`` over a stacked tensor would couple the experiments and restarts. Here the leading
``batch_dims`` axes of every parameter index independent problems: each keeps its own history, step, counters
and stopping state, while the arithmetic runs vectorised over the batch. Per element the control flow is
torch's with ``line_search_fn=None`` (torch 2.x ``torch/optim/lbfgs.py``): first-iteration step
``min(1, 1/|g|_1)·lr``, history update only when ``y·s > 1e-10``, ``H_diag = y·s / y·y``, the two-loop recursion,
and the same break conditions. Elements that stopped within a step() are frozen (masked) while the others go on;
only dot products are reduced in a different order, so results agree with torch to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# integer per-element state (the rest as torch keeps it: d, t, history = old_dirs and old_stps, ro, H_diag,
# prev_flat_grad, prev_loss)
COUNTERS = ("func_evals", "n_iter", "length", "head")  # exact below 2**24 even after a float32 round trip
CURVATURE_EPS = 1e-10  # torch's threshold on y·s for a history update


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


class BatchedLBFGS(torch.optim.Optimizer):
    """``torch.optim.LBFGS`` (no line search) for B independent problems at once.

    ``params``: tensors whose first ``batch_dims`` axes are the batch (the same batch shape for all); one
    element's problem spans its slice of every tensor. ``step(closure)``: the closure re-evaluates all elements,
    sets ``.grad`` and returns the per-element losses (shape = batch shape); step() returns those of its first
    evaluation, like torch.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        batch_dims: int = 1,
    ):
        if not lr >= 0:
            raise ValueError(f"invalid learning rate {lr}")
        max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
        )
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("BatchedLBFGS takes one parameter group")
        self._params = self.param_groups[0]["params"]
        self.batch_shape = self._params[0].shape[:batch_dims]
        if any(p.shape[:batch_dims] != self.batch_shape for p in self._params):
            raise ValueError("every parameter must share the leading batch shape")
        self.batch = math.prod(self.batch_shape)

    # -- flat [B, n] views over all parameters -------------------------------------------------------------
    def _flat_grad(self) -> torch.Tensor:
        views = [
            p.new_zeros(self.batch, p.numel() // self.batch)
            if p.grad is None
            else p.grad.reshape(self.batch, -1)
            for p in self._params
        ]
        return torch.cat(views, dim=1)

    def _add(self, scaled_update: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            flat = p.view(self.batch, -1)
            numel = flat.shape[1]
            flat.add_(scaled_update[:, offset : offset + numel])
            offset += numel

    def _evaluate(self, closure: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            loss = closure()
        return loss.detach().reshape(self.batch), self._flat_grad()

    def _state(self, grad: torch.Tensor) -> dict:
        state = self.state[self._params[0]]
        if not state:
            like = _like(grad)
            count = dict(dtype=torch.long, device=grad.device)
            b, n = grad.shape
            state.update(
                func_evals=torch.zeros(b, **count),
                n_iter=torch.zeros(b, **count),
                d=torch.zeros(b, n, **like),
                t=torch.zeros(b, **like),
                old_dirs=torch.zeros(b, 0, n, **like),  # torch's names: y (gradient changes) ...
                old_stps=torch.zeros(b, 0, n, **like),  # ... and s (steps), one slot per history entry
                ro=torch.zeros(b, 0, **like),
                sy=torch.zeros(b, 0, 0, **like),  # sy[b, i, j] = s_i·y_j between slots i and j
                length=torch.zeros(b, **count),  # history entries held, from slot `head` on (a ring)
                head=torch.zeros(b, **count),
                H_diag=torch.ones(b, **like),
                prev_flat_grad=torch.zeros(b, n, **like),
                prev_loss=torch.zeros(b, **like),  # the closure's dtype: lossless (torch keeps a float)
            )
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every saved state tensor to the parameter's dtype: the counters become integers again.
        A state saved before the history was kept as two tensors plus their products (one ``history`` tensor
        of (y, s) pairs) is converted."""
        super().load_state_dict(state_dict)
        state = self.state[self._params[0]]
        for key in COUNTERS:
            if key in state:
                state[key] = state[key].round().long()
        if "history" in state:
            history = state.pop("history")
            state["old_dirs"], state["old_stps"] = (
                history[:, :, 0].contiguous(),
                history[:, :, 1].contiguous(),
            )
            state["sy"] = torch.bmm(state["old_stps"], state["old_dirs"].transpose(1, 2))

    @torch.no_grad()
    def step(self, closure: Callable) -> torch.Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        lr, max_iter, max_eval = float(group["lr"]), group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]

        loss, flat_grad = self._evaluate(closure)
        orig_loss = loss.clone()
        state = self._state(flat_grad)
        state["func_evals"] += 1
        current_evals = 1
        # elements already optimal return at once, as torch's step() does
        running = flat_grad.abs().amax(dim=1) > tol_grad
        n_iter = 0
        while n_iter < max_iter and bool(running.any()):
            n_iter += 1
            state["n_iter"] += running.long()
            first = running & (state["n_iter"] == 1)
            later = running & ~first
            d = self._direction(state, flat_grad, first, later, history_size)
            state["d"] = torch.where(running[:, None], d, state["d"])
            state["prev_flat_grad"] = torch.where(running[:, None], flat_grad, state["prev_flat_grad"])
            state["prev_loss"] = torch.where(running, loss.to(state["prev_loss"].dtype), state["prev_loss"])
            prev_loss = loss.double()

            first_t = torch.clamp(1.0 / flat_grad.abs().sum(dim=1), max=1.0) * lr
            t = torch.where(first, first_t, torch.full_like(first_t, lr))
            state["t"] = torch.where(running, t, state["t"])
            gtd = _dot(flat_grad, state["d"])
            running = running & ~(gtd > -tol_change)  # directional derivative below tolerance
            if not bool(running.any()):
                break
            step = state["d"] * state["t"][:, None]
            self._add(torch.where(running[:, None], step, torch.zeros_like(step)))
            opt_cond = torch.zeros_like(running)
            if n_iter != max_iter:  # torch skips the re-evaluation after the last iteration
                new_loss, new_grad = self._evaluate(closure)
                loss = torch.where(running, new_loss, loss)
                flat_grad = torch.where(running[:, None], new_grad, flat_grad)
                opt_cond = flat_grad.abs().amax(dim=1) <= tol_grad
                current_evals += 1
                state["func_evals"] += running.long()
            if n_iter == max_iter or current_evals >= max_eval:
                break
            stop = opt_cond | (step.abs().amax(dim=1) <= tol_change)
            stop |= (loss.double() - prev_loss).abs() < tol_change
            running = running & ~stop
        return orig_loss.reshape(self.batch_shape)

    def _direction(self, state, flat_grad, first, later, history_size) -> torch.Tensor:
        """Steepest descent where an element starts (history reset); the two-loop L-BFGS direction elsewhere."""
        length = torch.where(first, torch.zeros_like(state["length"]), state["length"])
        if bool(first.any()):  # a (re)starting element forgets its history, as in torch
            state["head"] = torch.where(first, torch.zeros_like(state["head"]), state["head"])
            for key in ("old_dirs", "old_stps", "ro", "sy"):
                state[key][first] = 0
        state["H_diag"] = torch.where(first, torch.ones_like(state["H_diag"]), state["H_diag"])
        y = flat_grad - state["prev_flat_grad"]
        s = state["d"] * state["t"][:, None]
        ys = _dot(y, s)
        push = later & (ys > CURVATURE_EPS)
        if bool(push.any()):
            length = self._push(state, length, push, y, s, ys, history_size)
            state["H_diag"] = torch.where(push, ys / _dot(y, y), state["H_diag"])
        state["length"] = length
        r = _two_loop(state, flat_grad.neg(), length)
        return torch.where(first[:, None], flat_grad.neg(), r)

    @staticmethod
    def _push(state, length, push, y, s, ys, history_size) -> torch.Tensor:
        """Append (y, s, 1/ys) to each pushing element's history (a full one overwrites its oldest entry) and
        update the products s_i·y_j of the new slot with every other."""
        capacity = state["ro"].shape[1]
        needed = int(torch.where(push, length + 1, length).clamp(max=history_size).max())
        if needed > capacity:  # grow (zeros) rather than allocate history_size up front; no ring has wrapped
            grow = min(history_size, max(needed, 2 * capacity)) - capacity
            for key in ("old_dirs", "old_stps", "ro"):
                state[key] = torch.cat([state[key], _zeros_after(state[key], grow)], dim=1)
            state["sy"] = torch.nn.functional.pad(state["sy"], (0, grow, 0, grow))
            capacity = state["ro"].shape[1]
        full = push & (length == history_size)
        slot = (state["head"] + torch.where(full, torch.zeros_like(length), length)) % capacity
        rows = torch.nonzero(push).flatten()
        slots = slot[rows]
        state["old_dirs"][rows, slots] = y[rows]
        state["old_stps"][rows, slots] = s[rows]
        state["ro"][rows, slots] = 1.0 / ys[rows]
        # one batched product each over every element's slots (cheaper than gathering the pushing rows)
        s_dot_y = _dots(state["old_dirs"], s)  # s_new·y_j
        y_dot_s = _dots(state["old_stps"], y)  # s_j·y_new
        state["sy"][rows, slots, :] = s_dot_y[rows]
        state["sy"][rows, :, slots] = y_dot_s[rows]
        state["head"] = torch.where(full, (state["head"] + 1) % capacity, state["head"])
        return torch.where(push & ~full, length + 1, length)


def _two_loop(state: dict, q: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """torch's two-loop recursion (H·q from the history, oldest entry i = 0), in closed form.

    The first loop's α_i = ρ_i s_i·(q − Σ_{j>i} α_j y_j) is an upper unit-triangular system in the products
    s_i·y_j; the second loop's w_i = α_i − ρ_i y_i·(r₀ + Σ_{j<i} w_j s_j) a lower one. So one loop of 2·m
    vector operations per element becomes four batched products over the history and two triangular solves
    of size m — the same recursion, summed in another order. Entries past an element's length have ρ = 0 and
    drop out."""
    dirs, stps, ro, sy = state["old_dirs"], state["old_stps"], state["ro"], state["sy"]
    held = int(length.max())
    h_diag = state["H_diag"][:, None]
    if held == 0:
        return q * h_diag
    batch, capacity = ro.shape
    order = (state["head"][:, None] + torch.arange(held, device=q.device)) % capacity  # [B, m] oldest first
    valid = torch.arange(held, device=q.device) < length[:, None]
    rho = torch.where(valid, ro.gather(1, order), torch.zeros_like(ro[:, :1]))
    products = sy.gather(1, order[:, :, None].expand(batch, held, capacity))
    products = products.gather(2, order[:, None, :].expand(batch, held, held))  # [B, m, m] in entry order
    eye = torch.eye(held, dtype=q.dtype, device=q.device)

    def in_slots(entry_values: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(ro).scatter(1, order, entry_values)

    def solve(coupling: torch.Tensor, rhs: torch.Tensor, upper: bool) -> torch.Tensor:
        system = eye + rho[:, :, None] * coupling
        return torch.linalg.solve_triangular(system, rhs[:, :, None], upper=upper, unitriangular=True)[..., 0]

    s_dot_q = _dots(stps, q).gather(1, order)
    alpha = solve(products.triu(1), rho * s_dot_q, upper=True)
    r = (q - _combination(in_slots(alpha), dirs)) * h_diag
    y_dot_r = _dots(dirs, r).gather(1, order)
    w = solve(products.transpose(1, 2).tril(-1), alpha - rho * y_dot_r, upper=False)
    return r + _combination(in_slots(w), stps)


def _dots(rows: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, m, n], [B, n] -> [B, m] dot products, as a row vector times the transposed rows: on the CPU about
    6× faster than ``bmm(rows, v[..., None])``, which takes a slow matrix-vector path."""
    return torch.bmm(v[:, None, :], rows.transpose(1, 2))[:, 0]


def _combination(coefficients: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, m], [B, m, n] -> [B, n]: Σ_i c_i row_i per element."""
    return torch.bmm(coefficients[:, None, :], rows)[:, 0]


def _zeros_after(t: torch.Tensor, grow: int) -> torch.Tensor:
    return t.new_zeros(t.shape[0], grow, *t.shape[2:])


def _like(t: torch.Tensor) -> dict:
    return dict(dtype=t.dtype, device=t.device)
