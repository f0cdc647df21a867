"""L-BFGS over a batch of independent problems, each element exactly as ``torch.optim.LBFGS`` would run it alone.

L-BFGS is not element-wise (its curvature history mixes every coordinate of a problem), so one
``torch.optim.LBFGS`` over a stacked tensor would couple the experiments and restarts. Here the leading
``batch_dims`` axes of every parameter index independent problems: each keeps its own history, step, counters
and stopping state, while the arithmetic runs vectorised over the batch. Per element the control flow is
torch's with ``line_search_fn=None`` (torch 2.x ``torch/optim/lbfgs.py``): first-iteration step
``min(1, 1/|g|_1)·lr``, history update only when ``y·s > 1e-10``, ``H_diag = y·s / y·y``, the two-loop recursion,
and the same break conditions. Elements that stopped within a step() are frozen (masked) while the others go on.
The two-loop recursion runs in closed form (:func:`_two_loop`: two small triangular solves in the products
s_i·y_j and y_i·y_j, kept up to date as entries arrive, and two passes over the history instead of 4·m
vector operations), so results agree with torch to rounding.
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
                # torch's old_dirs (y, [..., 0, :]) and old_stps (s, [..., 1, :]), a slot per entry
                history=torch.zeros(b, 0, 2, n, **like),
                ro=torch.zeros(b, 0, **like),
                length=torch.zeros(b, **count),  # history entries held, from slot `head` on (a ring)
                head=torch.zeros(b, **count),
                H_diag=torch.ones(b, **like),
                prev_flat_grad=torch.zeros(b, n, **like),
                prev_loss=torch.zeros(b, **like),  # the closure's dtype: lossless (torch keeps a float)
            )
            state.update(_products(state["history"], state["d"]))
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts every saved state tensor to the parameter's dtype: the counters become integers again.
        A state saved without the history's products (an earlier version) gets them computed."""
        super().load_state_dict(state_dict)
        state = self.state[self._params[0]]
        for key in COUNTERS:
            if key in state:
                state[key] = state[key].round().long()
        if state and "sy" not in state:
            state.update(_products(state["history"], state["d"]))

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
            for key in HISTORY:
                state[key][first] = 0
        state["H_diag"] = torch.where(first, torch.ones_like(state["H_diag"]), state["H_diag"])
        q = flat_grad.neg()
        y = flat_grad - state["prev_flat_grad"]
        s = state["d"] * state["t"][:, None]
        ys = _dot(y, s)
        push = later & (ys > CURVATURE_EPS)
        slot = None
        if bool(push.any()):
            length, slot = self._push(state, length, push, y, s, ys, history_size)
            state["H_diag"] = torch.where(push, ys / _dot(y, y), state["H_diag"])
        state["length"] = length
        running = first | later
        # one pass over the history: every entry's y and s against q and the new y
        dots = torch.bmm(torch.stack([q, y], dim=1), _rows(state["history"]).transpose(1, 2))
        if slot is not None:
            _update_products(state, push, slot, dots[:, 1])
        r, y_dot_r = _two_loop(state, q, dots[:, 0], length)
        state["y_dot_d"] = torch.where(running[:, None], y_dot_r, state["y_dot_d"])
        return torch.where(first[:, None], q, r)

    @staticmethod
    def _push(state, length, push, y, s, ys, history_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (y, s, 1/ys) to each pushing element's history; a full one overwrites its oldest entry.
        Returns the new lengths and every element's slot of the entry (meaningful where it pushed)."""
        capacity = state["ro"].shape[1]
        needed = int(torch.where(push, length + 1, length).clamp(max=history_size).max())
        if needed > capacity:  # grow (zeros) rather than allocate history_size up front; no ring has wrapped
            grow = min(history_size, max(needed, 2 * capacity)) - capacity
            for key in ("history", "ro", "y_dot_d"):
                state[key] = torch.cat([state[key], _zeros_after(state[key], grow)], dim=1)
            for key in ("sy", "yy"):
                state[key] = torch.nn.functional.pad(state[key], (0, grow, 0, grow))
            capacity = state["ro"].shape[1]
        full = push & (length == history_size)
        slot = (state["head"] + torch.where(full, torch.zeros_like(length), length)) % capacity
        rows = torch.nonzero(push).flatten()
        state["history"][rows, slot[rows]] = torch.stack([y[rows], s[rows]], dim=1)
        state["ro"][rows, slot[rows]] = 1.0 / ys[rows]
        state["head"] = torch.where(full, (state["head"] + 1) % capacity, state["head"])
        return torch.where(push & ~full, length + 1, length), slot


HISTORY = ("history", "ro", "sy", "yy", "y_dot_d")  # per-element state that a restart clears


def _rows(history: torch.Tensor) -> torch.Tensor:
    """[B, m, 2, n] -> [B, 2m, n]: y_0, s_0, y_1, s_1, ... (a view)."""
    return history.view(history.shape[0], -1, history.shape[-1])


def _products(history: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """The products the closed-form two-loop keeps, computed from scratch: sy[i, j] = s_i·y_j,
    yy[i, j] = y_i·y_j (slots) and y_dot_d[j] = y_j·d."""
    y, s = history[:, :, 0], history[:, :, 1]
    return {
        "sy": torch.bmm(s, y.transpose(1, 2)),
        "yy": torch.bmm(y, y.transpose(1, 2)),
        "y_dot_d": torch.bmm(d[:, None, :], y.transpose(1, 2))[:, 0],
    }


def _update_products(state, push, slot, new_dots) -> None:
    """Row and column of each pushed slot k in sy and yy. ``new_dots`` [B, 2m]: y_j·y_new, s_j·y_new (the
    history pass's second row). The row s_new·y_j needs no pass: s_new = t·d, and y_j·d was kept from the
    previous direction (``y_dot_d``)."""
    rows = torch.nonzero(push).flatten()
    k = slot[rows]
    s_dot_y_old = state["t"][rows, None] * state["y_dot_d"][rows]
    y_dot_new, s_dot_new = new_dots[rows, 0::2], new_dots[rows, 1::2]
    state["sy"][rows, :, k] = s_dot_new
    state["sy"][rows, k, :] = s_dot_y_old
    state["sy"][rows, k, k] = s_dot_new[torch.arange(len(rows)), k]  # s_new·y_new
    state["yy"][rows, :, k] = y_dot_new
    state["yy"][rows, k, :] = y_dot_new


def _two_loop(state: dict, q: torch.Tensor, q_dots: torch.Tensor, length: torch.Tensor):
    """torch's two-loop recursion r = H·q from the history (oldest entry i = 0), in closed form; also
    returns y_j·r for every slot (what the next push needs).

    The first loop's α_i = ρ_i s_i·(q − Σ_{j>i} α_j y_j) is an upper unit-triangular system in the products
    s_i·y_j; the second loop's w_i = α_i − ρ_i y_i·(r₀ + Σ_{j<i} w_j s_j) a lower one, with
    y_i·r₀ = H (y_i·q − Σ_j α_j y_i·y_j). So the 2·m vector operations of the loops become two triangular
    solves of size m and one pass over the history, r = H q + Σ_j (−H α_j y_j + w_j s_j) — the same
    recursion, summed in another order. ``q_dots`` [B, 2m]: y_j·q, s_j·q per slot. Entries past an element's
    length have ρ = 0 and drop out."""
    ro, sy, yy = state["ro"], state["sy"], state["yy"]
    h = state["H_diag"][:, None]
    held = int(length.max())
    if held == 0:
        return q * h, torch.zeros_like(ro)
    batch, capacity = ro.shape
    order = (state["head"][:, None] + torch.arange(held, device=q.device)) % capacity  # [B, m] oldest first
    valid = torch.arange(held, device=q.device) < length[:, None]
    rho = torch.where(valid, ro.gather(1, order), torch.zeros_like(ro[:, :1]))
    eye = torch.eye(held, dtype=q.dtype, device=q.device)

    pairs = (order[:, :, None] * capacity + order[:, None, :]).view(batch, -1)  # one contiguous index

    def entries(matrix):  # [B, slots, slots] -> [B, m, m] in entry order
        return matrix.reshape(batch, -1).gather(1, pairs).view(batch, held, held)

    def in_slots(entry_values):
        return torch.zeros_like(ro).scatter(1, order, entry_values)

    def solve(coupling, rhs, upper):
        system = eye + rho[:, :, None] * coupling
        return torch.linalg.solve_triangular(system, rhs[:, :, None], upper=upper, unitriangular=True)[..., 0]

    s_y, y_y = entries(sy), entries(yy)
    y_q, s_q = q_dots[:, 0::2].gather(1, order), q_dots[:, 1::2].gather(1, order)
    alpha = solve(s_y.triu(1), rho * s_q, upper=True)
    y_r0 = h * (y_q - torch.bmm(y_y, alpha[:, :, None])[:, :, 0])
    w = solve(s_y.transpose(1, 2).tril(-1), alpha - rho * y_r0, upper=False)
    coefficients = torch.stack([in_slots(-h * alpha), in_slots(w)], dim=-1).view(batch, 1, -1)
    r = q * h + torch.bmm(coefficients, _rows(state["history"]))[:, 0]
    y_r = y_r0 + torch.bmm(w[:, None, :], s_y)[:, 0]  # y_i·r = y_i·r₀ + Σ_j w_j s_j·y_i
    return r, in_slots(y_r)


def _zeros_after(t: torch.Tensor, grow: int) -> torch.Tensor:
    return t.new_zeros(t.shape[0], grow, *t.shape[2:])


def _like(t: torch.Tensor) -> dict:
    return dict(dtype=t.dtype, device=t.device)
