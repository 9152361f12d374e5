"""The falsifier: random sampling, then projected gradient descent on the property's margin.

For a disjunct k the margin is max over its rows of (C_k y - d_k); x violates the property when
some margin is <= 0. Every candidate goes to the onnxruntime check before it counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from verifier.bounds.network import Network
from verifier.settings import AttackSettings
from verifier.spec import Spec, round_inward
from verifier.witness import Counterexample, OnnxChecker

# Candidates per round passed to onnxruntime (each run costs about a millisecond on small models).
CANDIDATES_PER_ROUND = 4
# Network evaluations per pass of the random search: its deadline is checked between passes (on
# the largest shared models, 50 boxes of 256 samples took 15 s in one pass).
RANDOM_POINTS_PER_PASS = 1024


class Falsifier:
    """Searches one property of one network; `run` returns a confirmed counterexample or None."""

    def __init__(self, network: Network, spec: Spec, checker: OnnxChecker, settings: AttackSettings,
                 seed: int, time_left: Callable[[], float]) -> None:
        self.network, self.spec, self.checker = network, spec, checker
        self.settings = settings
        self.time_left = time_left
        self.generator = torch.Generator(device=network.device).manual_seed(seed)
        self.lower, self.upper = self._inner_box()
        self.tried = 0
        self.rounds_done = 0

    def _inner_box(self) -> tuple[Tensor, Tensor]:
        """Per-case boxes whose points, in the model dtype, lie inside the exact boxes."""
        np_dtype = np.float32 if self.network.dtype == torch.float32 else np.float64
        lows, highs = [], []
        for case in self.spec.prop.cases:
            low, high = round_inward(case.lower, case.upper, np_dtype)
            crossed = low > high  # narrower than the float spacing: use a representable point
            middle = ((case.lower + case.upper) / 2).astype(np_dtype)
            lows.append(np.where(crossed, middle, low))
            highs.append(np.where(crossed, middle, high))
        shape = (self.spec.cases, *self.network.input_shape)
        to_tensor = lambda a: torch.from_numpy(np.stack(a)).reshape(shape).to(self.network.device)  # noqa: E731
        return to_tensor(lows), to_tensor(highs)

    def run(self, rounds: int | None, time_left: Callable[[], float] | None = None) -> Counterexample | None:
        """Search for `rounds` rounds (None: until the time is up); the first call samples randomly first.

        A round is one PGD search from fresh starts, or a fresh random sample where PGD is off
        (no restarts or no steps).
        """
        if time_left is not None:
            self.time_left = time_left
        if self.rounds_done == 0:
            found = self.random_search()
            if found is not None:
                return found
        done = 0
        last_round = 0.0
        # a round that cannot finish before the deadline is not started
        while (rounds is None or done < rounds) and self.time_left() > last_round:
            started = time.perf_counter()
            if self.settings.restarts > 0 and self.settings.steps > 0:
                found = self.gradient_search(first_round=self.rounds_done == 0)
            else:
                found = self.random_search()
            self.rounds_done += 1
            done += 1
            last_round = time.perf_counter() - started
            if found is not None:
                return found
        return None

    def _uniform(self, count: int) -> Tensor:
        noise = torch.rand((count, *self.lower.shape), generator=self.generator, device=self.lower.device,
                           dtype=self.lower.dtype)
        return self.lower + noise * (self.upper - self.lower)

    def _margins(self, x: Tensor) -> Tensor:
        """[N, B, K] margins for x [N, B, *input_shape]."""
        outputs = self.network(x.reshape(-1, *self.network.input_shape))
        return self.spec.margins(outputs.reshape(x.shape[0], self.spec.cases, -1))

    def random_search(self) -> Counterexample | None:
        """The centres, then `random_samples` uniform points per box, a pass of about
        RANDOM_POINTS_PER_PASS network evaluations at a time until the time is up."""
        count = max(1, self.settings.random_samples)
        per_pass = max(1, RANDOM_POINTS_PER_PASS // self.spec.cases)
        done = 0
        with torch.no_grad():
            while done < count and (done == 0 or self.time_left() > 0):
                points = self._uniform(min(per_pass, count - done))
                if done == 0:
                    points = torch.cat([((self.lower + self.upper) / 2).unsqueeze(0), points])
                done += per_pass
                found = self._confirm_best(points, self._margins(points).amin(dim=2))  # margins [N, B]
                if found is not None:
                    return found
        return None

    def gradient_search(self, first_round: bool) -> Counterexample | None:
        """PGD with signed steps and cosine decay; one start per (restart, case, disjunct)."""
        settings = self.settings
        disjuncts = max(self.spec.disjunct_counts)
        restarts = max(1, settings.restarts)
        starts = self._uniform(restarts * disjuncts)
        if first_round:
            starts[:disjuncts] = ((self.lower + self.upper) / 2).unsqueeze(0)
        x = starts.reshape(restarts * disjuncts, *self.lower.shape)
        target = torch.arange(disjuncts, device=x.device).repeat(restarts)  # disjunct of each start
        width = self.upper - self.lower
        for step in range(settings.steps):
            if self.time_left() <= 0:
                return None
            x = x.detach().requires_grad_(True)
            margins = self._margins(x)  # [N, B, K]
            own = margins.gather(2, target.view(-1, 1, 1).expand(-1, margins.shape[1], 1)).squeeze(2)
            finite = torch.isfinite(own)
            loss = torch.where(finite, own, 0.0).sum()
            if not loss.requires_grad:  # outputs that are piecewise constant in x: no slope to follow
                break
            (gradient,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                if bool((own <= 0).any()):
                    found = self._confirm_best(x.detach(), own.detach())
                    if found is not None:
                        return found
                size = settings.step_fraction * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
                x = torch.max(torch.min(x - size * width * gradient.sign(), self.upper), self.lower)
        with torch.no_grad():
            final = self._margins(x.detach())
            own = final.gather(2, target.view(-1, 1, 1).expand(-1, final.shape[1], 1)).squeeze(2)
        return self._confirm_best(x.detach(), own)

    def try_points(self, case: int, points: Tensor) -> Counterexample | None:
        """Candidates [N, *input_shape] for case `case` (moved into its box), such as the minimisers
        of branch and bound's linear bounds; the most violating few go to onnxruntime."""
        with torch.no_grad():
            inside = torch.max(torch.min(points.to(self.lower.dtype), self.upper[case]), self.lower[case])
            outputs = self.network(inside.reshape(-1, *self.network.input_shape))
            margins = self.spec.case_margins(case, outputs.reshape(inside.shape[0], -1))
        return self._confirm_best(inside.unsqueeze(1), margins.unsqueeze(1))

    def _confirm_best(self, points: Tensor, margins: Tensor) -> Counterexample | None:
        """Send the most violating candidates ([N, B] margins of points [N, B, *shape]) to onnxruntime."""
        flat = margins.reshape(-1)
        order = torch.argsort(flat)[:CANDIDATES_PER_ROUND]
        for index in order.tolist():
            if not flat[index] <= 0:
                break
            sample, case = divmod(index, margins.shape[1])
            candidate = points[sample, case].detach().cpu().numpy().reshape(-1)
            self.tried += 1
            found = self.checker.confirm(self.spec.prop, candidate)
            if found is not None:
                return found
        return None
