"""Branch and bound: split the input box into sub-domains until every one is proved.

Two ways to split. Neuron splitting (most models) splits the inputs of `splittable` rules: an
unstable ReLU at 0, where it becomes exact on both sides; a sigmoid or tanh input inside its
interval (`Rule.split_point`), where each side's lines are tighter. Input splitting (models with
a handful of inputs) halves boxes along one input, and each half is bounded by CROWN afresh (its
intervals tighten as the box shrinks).

In neuron splitting a sub-domain is the input box with some neurons' inputs assumed <= or >= their
cut point. Its bound is sound because every piece is: the intervals of its split neurons are
clamped at the cut (true on the sub-domain), later intervals follow from them by interval
arithmetic (intersected with the root's), the split constraints `s (z - cut) <= 0` enter the final
sweep as Lagrangian terms `beta s (z - cut)` with beta >= 0 (beta-CROWN, Wang et al. 2021), which
are <= 0 wherever the constraints hold, and a child's rows are at least its parent's bound. The
two children of a split cover their parent, so the box is proved when every leaf is. The neuron
to split is chosen by a BaBSR-like score (Bunel et al. 2020): what the looseness of its rule's
lines (`Rule.split_score`; for ReLU its upper line's intercept) costs the rows not yet proved;
with `candidates` above 1, the best-scored few are compared by a cheap bound of their children
first (filtered smart branching). Children start their optimisation from their parent's alpha
and beta (warm starts), except for rules whose parameters depend on the interval
(`Rule.warm_start`: sigmoid and tanh).

A domain with nothing left to split is linear: each open row's LP over it (`leaf_lp.py`, HiGHS)
gives the betas of its bound, and its minimiser is a counterexample candidate.

Every step also tries the points where the linear bounds of its domains' open rows are lowest
(a corner of the box per row) as counterexamples: `probe` checks them on the model and on
onnxruntime, and a confirmed one ends the search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from verifier.bounds.core import Interval
from verifier.bounds.engine import Errors, LinearBound, OutOfTime, backward_bound, crown_bounds, interval_concretize
from verifier.bounds.intermediate import SWEEPS_WORTH, intermediate_bounds, resolve, sweeps_over_forward
from verifier.bounds.network import Network
from verifier.bounds.optimize import Adam, keep_best
from verifier.bounds.patches import Patches, densify
from verifier.bounds.relaxation import AlphaStore
from verifier.leaf_lp import solve_leaves
from verifier.settings import BranchSettings
from verifier.spec import Spec
from verifier.witness import Counterexample

log = logging.getLogger(__name__)

Probe = Callable[[Tensor], Counterexample | None]  # candidate points [N, *input_shape] -> a confirmed one


@dataclass
class SearchResult:
    proved: bool
    domains_bounded: int
    open_domains: int
    seconds: float
    reason: str  # why it stopped: proved | counterexample | time | no split left | too many domains
    counterexample: Counterexample | None = None


@dataclass
class _Domains:
    """Open sub-domains of one box; every tensor has a leading domain axis D."""

    lower: dict[int, Tensor]    # split node -> [D, *shape], its bounds on the domain
    upper: dict[int, Tensor]
    signs: dict[int, Tensor]    # split node -> [D, *shape]: +1 assumed <= cut, -1 assumed >= cut, 0 free
    cuts: dict[int, Tensor]     # split node -> [D, *shape]: where each split neuron was cut (0 for ReLU)
    betas: dict[int, Tensor]    # split node -> [D, m, *shape], the split terms' multipliers (warm start)
    alphas: dict[tuple, list[Tensor]]  # the final sweep's relaxation parameters, [D, ...] (warm start)
    refuted: np.ndarray         # [D, m] rows already proved on the domain (or an ancestor)
    bound: LinearBound          # [D, m] the best lower bound of each row on the domain or an ancestor
    worst: Tensor               # [D] lowest (bound - offset) of the rows not yet proved
    choice: Tensor              # [D, 2] (split node, flat neuron) to split next

    def __len__(self) -> int:
        return int(self.worst.shape[0])

    def take(self, index: Tensor) -> _Domains:
        pick = index.cpu().numpy()
        return _Domains({k: v[index] for k, v in self.lower.items()}, {k: v[index] for k, v in self.upper.items()},
                        {k: v[index] for k, v in self.signs.items()}, {k: v[index] for k, v in self.cuts.items()},
                        {k: v[index] for k, v in self.betas.items()},
                        {k: [p[index] for p in group] for k, group in self.alphas.items()},
                        self.refuted[pick], LinearBound(self.bound.lower[index], self.bound.magnitude[index]),
                        self.worst[index], self.choice[index])

    @staticmethod
    def join(parts: list[_Domains]) -> _Domains:
        first = parts[0]
        return _Domains({k: torch.cat([p.lower[k] for p in parts]) for k in first.lower},
                        {k: torch.cat([p.upper[k] for p in parts]) for k in first.upper},
                        {k: torch.cat([p.signs[k] for p in parts]) for k in first.signs},
                        {k: torch.cat([p.cuts[k] for p in parts]) for k in first.cuts},
                        {k: torch.cat([p.betas[k] for p in parts]) for k in first.betas},
                        {k: [torch.cat([p.alphas[k][i] for p in parts]) for i in range(len(group))]
                         for k, group in first.alphas.items()},
                        np.concatenate([p.refuted for p in parts]),
                        LinearBound(torch.cat([p.bound.lower for p in parts]),
                                    torch.cat([p.bound.magnitude for p in parts])),
                        torch.cat([p.worst for p in parts]),
                        torch.cat([p.choice for p in parts]))


def split_nodes(network: Network) -> dict[int, int]:
    """Nodes that branch and bound may split (inputs of `splittable` rules, not the network
    input) mapped to the rule's output node."""
    found = {}
    for index, node in enumerate(network.nodes[1:], start=1):
        if network.rules[node.rule].splittable and node.inputs[0] != 0:
            found[node.inputs[0]] = index
    return found


def branch_and_bound(network: Network, spec: Spec, case: int, root: list[Interval | None],
                     settings: BranchSettings, time_left: Callable[[], float], on: str = "relu",
                     probe: Probe | None = None, root_seconds: float = 0.0, intermediate: str = "auto",
                     sweep_ratio: float | None = None, root_bound: LinearBound | None = None) -> SearchResult:
    """Prove case `case` of the spec by splitting neurons (`on="relu"`) or the input box (`"input"`),
    starting from intervals `root` ([B, ...], all cases) that hold on its box; stops when
    `time_left()` (seconds) would run out, or when `probe` confirms a counterexample. The first
    bound (the root's) is started only when 1.5 x `root_seconds`, an estimate of its cost, is
    left. Input splitting bounds its sub-boxes with the `intermediate` method (see
    verifier.bounds.intermediate), whose passes `time_left` cuts short; under `auto`, the forward
    pass alone where the backward sweeps of the bound pass before took over SWEEPS_WORTH times
    its forward pass (`sweep_ratio`; where that is not known, as measured on the first sub-boxes).
    `root_bound` ([B, m], all cases), the bound pass's own bound of the rows over the box, is a
    floor for every domain's: the search's first bound of the box, from fresh parameters, can be
    looser (on a sigmoid network of eran, -62.8 against alpha-CROWN's -54.6 on the worst row)."""
    start = time.perf_counter()
    if time_left() < 1.5 * root_seconds:
        return SearchResult(False, 0, 1, 0.0, "time")
    if on == "relu":
        search: _Search | _BoxSearch = _Search(network, spec, case, root, settings, probe, root_bound)
    else:
        search = _BoxSearch(network, spec, case, root, settings, probe, root_bound, intermediate, time_left,
                            sweep_ratio)
    if not search.splittable:
        return SearchResult(False, 0, 1, time.perf_counter() - start, "no split left")
    try:
        open_domains = search.bound_children(None)
    except OutOfTime:
        return SearchResult(False, 0, 1, time.perf_counter() - start, "time", search.found)
    bounded = 1
    reason = "time"
    while True:
        if search.found is not None:
            reason = "counterexample"
            break
        if len(open_domains) == 0:
            reason = "proved"
            break
        if len(open_domains) > search.max_domains:
            reason = "too many domains"
            break
        stuck = open_domains.choice[:, 0] < 0
        if bool(stuck.any()):
            # nothing left to split: only the split terms' multipliers can still close these
            retried = search.retry(open_domains.take(stuck.nonzero().flatten()), time_left)
            if search.found is not None:
                continue
            if retried is None or len(retried) > 0:
                reason = "no split left" if retried is not None else "time"
                break
            open_domains = open_domains.take((~stuck).nonzero().flatten())
            continue
        count = min(settings.batch, len(open_domains), search.affordable(time_left()))
        if count == 0:
            break
        order = torch.argsort(open_domains.worst)
        try:
            children = search.bound_children(open_domains.take(order[:count]))
        except OutOfTime:
            break
        bounded += 2 * count
        open_domains = _Domains.join([open_domains.take(order[count:]), children])
    remaining = 0 if reason == "proved" else len(open_domains)
    return SearchResult(reason == "proved", bounded, remaining, time.perf_counter() - start, reason, search.found)


class _Case:
    """The fixed parts of one search: the case's box, rows and offsets, and the step timing."""

    def __init__(self, network: Network, spec: Spec, case: int, root: list[Interval | None],
                 settings: BranchSettings, probe: Probe | None = None, root_bound: LinearBound | None = None) -> None:
        self.network, self.spec, self.case, self.settings = network, spec, case, settings
        self.probe = probe
        # the bound pass's bound of the case's rows [1, m]: a floor for the root domain, so for all
        self.floor = None if root_bound is None else \
            LinearBound(root_bound.lower[case:case + 1], root_bound.magnitude[case:case + 1])
        self.found: Counterexample | None = None
        self.box = Interval(spec.box.lower[case:case + 1], spec.box.upper[case:case + 1])
        # every node's interval over the case's box, from the bound pass before the search
        self.root = [None if r is None else Interval(r.lower[case:case + 1], r.upper[case:case + 1]) for r in root]
        rows = spec.matrix.shape[1]
        self.coeffs = spec.matrix[case:case + 1].reshape(1, rows, *network.output_shape)
        self.offset = spec.offset[case].to(network.dtype).to(network.device)
        self.real_rows = spec.row_disjunct[case] >= 0
        self.domain_seconds = 0.0  # wall time per domain bounded, from the last step

    def _domain_cap(self, elements_per_domain: int) -> int:
        """How many open domains of this many stored elements fit `settings.memory_mb`."""
        return int(self.settings.memory_mb * 2**20 / (max(1, elements_per_domain) * self.coeffs.element_size()))

    def affordable(self, seconds: float) -> int:
        """How many parents a step may split so that it ends within `seconds` (with 50% to spare)."""
        if self.domain_seconds == 0 or seconds == float("inf"):
            return self.settings.batch
        return max(0, int(min(seconds / (1.5 * 2 * self.domain_seconds), self.settings.batch)))

    def _outcome(self, best: LinearBound, refuted: np.ndarray) -> tuple[np.ndarray, np.ndarray, Tensor, Tensor]:
        """Rows refuted so far [N, m], proved domains [N], open rows [N, m] (device) and the
        lowest (bound - offset) of the open rows [N]."""
        refuted = refuted | self.spec.case_refuted_rows(self.case, best.lower, best.magnitude, self.network.dtype)
        proved = self.spec.case_proved(self.case, refuted)
        open_rows = torch.from_numpy(~refuted & self.real_rows).to(self.network.device)
        gap = torch.where(open_rows, best.lower - self.offset, torch.inf).amin(1)
        return refuted, proved, open_rows, gap

    def _try_minimisers(self, input_coeffs: Tensor | None, open_rows: Tensor, lower: Tensor, upper: Tensor) -> None:
        """Probe, per domain and open row, the corner of its box [N, *input_shape] where the row's
        linear bound (input coefficients [N, m, *input_shape]; None where no sweep reached the
        input) is lowest."""
        if self.probe is None or self.found is not None or input_coeffs is None:
            return
        domain, row = open_rows.nonzero(as_tuple=True)
        if domain.numel() == 0:
            return
        weight = input_coeffs[domain, row]
        low, high = lower.expand_as(input_coeffs[:, 0])[domain], upper.expand_as(input_coeffs[:, 0])[domain]
        # where the row does not depend on an input, its middle
        points = torch.where(weight > 0, low, torch.where(weight < 0, high, (low + high) / 2))
        self.found = self.probe(points)


class _Search(_Case):
    """ReLU splitting: the root intervals, and the nodes split."""

    def __init__(self, network: Network, spec: Spec, case: int, root: list[Interval | None],
                 settings: BranchSettings, probe: Probe | None = None, root_bound: LinearBound | None = None) -> None:
        super().__init__(network, spec, case, root, settings, probe, root_bound)
        rows = self.coeffs.shape[1]
        self.splits = split_nodes(network)
        self.splittable = any(bool(network.rule(y).can_split(self.root[z].lower, self.root[z].upper).any())
                              for z, y in self.splits.items())
        # per neuron: its bounds, sign and cut, and per row its beta and (about) its alpha
        self.max_domains = self._domain_cap(sum(self.root[z].lower[0].numel() for z in self.splits) * (4 + 2 * rows))

    def bound_children(self, parents: _Domains | None) -> _Domains:
        """Split each parent at its chosen neuron and bound the children (None: the root itself);
        returns the children left open."""
        started = time.perf_counter()
        if parents is None:
            lower = {z: self.root[z].lower for z in self.splits}
            upper = {z: self.root[z].upper for z in self.splits}
            signs = {z: torch.zeros_like(lower[z]) for z in self.splits}
            cuts = {z: torch.zeros_like(lower[z]) for z in self.splits}
            betas = {z: lower[z].new_zeros(1, self.coeffs.shape[1], *lower[z].shape[1:]) for z in self.splits}
            alphas = {}
            refuted = np.zeros((1, self.coeffs.shape[1]), dtype=bool)
            inherited = self.floor
        else:
            lower, upper, signs, cuts = _split(parents, self._cut_points)
            # children start from their parents' alphas and betas, except for rules whose best
            # parameters depend on the intervals that a split changes (Rule.warm_start False:
            # sigmoid slopes)
            warm = {z: self.network.rule(y).warm_start for z, y in self.splits.items()}
            betas = {z: torch.cat([b, b]) if warm[z] else torch.zeros_like(torch.cat([b, b]))
                     for z, b in parents.betas.items()}
            alphas = {k: [torch.cat([p, p]) for p in group] for k, group in parents.alphas.items()
                      if self.network.rule(k[1]).warm_start}
            refuted = np.concatenate([parents.refuted, parents.refuted])
            inherited = _twice(parents.bound)
        children = self._bound(lower, upper, signs, cuts, betas, alphas, refuted, inherited)
        self.domain_seconds = (time.perf_counter() - started) / (1 if parents is None else 2 * len(parents))
        return children

    def retry(self, domains: _Domains, time_left: Callable[[], float]) -> _Domains | None:
        """Bound `domains` again, unsplit, with ten times the optimisation steps, their betas first
        from the LP of each open row (`leaf_lp`); those left open (None: no time for it)."""
        if time_left() <= 15 * len(domains) * self.domain_seconds:
            return None
        betas = self._leaf_betas(domains) if self.settings.leaf_lp else domains.betas
        return self._bound(domains.lower, domains.upper, domains.signs, domains.cuts, betas, domains.alphas,
                           domains.refuted, domains.bound, 10 * self.settings.iterations)

    def _cut_points(self, z: int, lower: Tensor, upper: Tensor) -> Tensor:
        """Where split node `z`'s rule splits neurons with these bounds."""
        return self.network.rule(self.splits[z]).split_point(lower, upper)

    def _bound(self, lower: dict[int, Tensor], upper: dict[int, Tensor], signs: dict[int, Tensor],
               cuts: dict[int, Tensor], betas: dict[int, Tensor], alphas: dict[tuple, list[Tensor]],
               refuted: np.ndarray, inherited: LinearBound | None, iterations: int | None = None) -> _Domains:
        """Bound `count` domains (their split nodes' intervals, signs and cuts, starting parameters,
        rows refuted and the bounds they inherit from their parents, a sound floor); the open ones."""
        network, count = self.network, next(iter(lower.values())).shape[0]
        box, bounds, errors = self._intervals(lower, upper, count)
        empty = torch.zeros(count, dtype=torch.bool, device=network.device)
        for z in self.splits:
            empty |= (bounds[z].lower > bounds[z].upper).reshape(count, -1).any(1)
        coeffs = self.coeffs.expand(count, *self.coeffs.shape[1:])
        best, seen, betas, store = self._optimize(bounds, errors, coeffs, signs, cuts, betas, alphas, refuted,
                                                  iterations or self.settings.iterations)
        if inherited is not None:  # a sub-domain's rows are at least its parent's bound
            best = keep_best(best, inherited)
        refuted, proved, open_rows, gap = self._outcome(best, refuted)
        self._try_minimisers(seen.pop(0, None), open_rows, box.lower, box.upper)
        keep = torch.from_numpy(~(proved | empty.cpu().numpy())).to(network.device).nonzero().flatten()
        domains = _Domains({z: bounds[z].lower.detach() for z in self.splits},
                           {z: bounds[z].upper.detach() for z in self.splits}, signs, cuts, betas,
                           {k: [p.detach() for p in group] for k, group in store.params.items()}, refuted, best, gap,
                           torch.zeros(count, 2, dtype=torch.long, device=network.device)).take(keep)
        if len(domains) == 0:
            return domains
        scores = self._scores(domains, {y: s[keep] for y, s in seen.items()}, open_rows[keep])
        domains.choice = self._filter(bounds, keep, scores, domains, open_rows[keep])
        return domains

    def _intervals(self, lower: dict[int, Tensor], upper: dict[int, Tensor], count: int
                   ) -> tuple[Interval, list[Interval | None], Errors]:
        """The box, every node's interval on `count` domains with split nodes' bounds `lower` and
        `upper`, and the rounding bounds of those intervals (for every sweep over them)."""
        box = Interval(self.box.lower.expand(count, *self.box.lower.shape[1:]),
                       self.box.upper.expand(count, *self.box.upper.shape[1:]))
        reference = [None if r is None else Interval(r.lower.expand(count, *r.lower.shape[1:]),
                                                     r.upper.expand(count, *r.upper.shape[1:])) for r in self.root]
        for z in self.splits:
            reference[z] = Interval(lower[z], upper[z])
        errors: Errors = {}
        with torch.no_grad():
            # intervals by interval arithmetic through the split ones: refining them by CROWN
            # in every sub-domain cost 2-4x the domains per second for no fewer domains to a proof
            bounds = crown_bounds(self.network, box, reference=reference, refine=False, errors=errors)
        return box, bounds, errors

    def _leaf_betas(self, domains: _Domains) -> dict[int, Tensor]:
        """Betas of domains with nothing left to split from each open row's LP (leaf_lp.py), where
        it is solved (the domains' own betas elsewhere); LP minimisers that violate are probed."""
        network, count, rows = self.network, len(domains), self.coeffs.shape[1]
        box, bounds, _ = self._intervals(domains.lower, domains.upper, count)
        inputs = box.lower[0].numel()
        seen: dict[int, Tensor] = {}
        visit = _input_recorder(seen)

        def linear_form(start: int, coeffs: Tensor, alphas: AlphaStore | None) -> tuple[Tensor, Tensor]:
            """[D, r, inputs] and [D, r]: the sweep's lower line of <coeffs, z_start> as A x + c."""
            seen.clear()
            bound = backward_bound(network, start, coeffs, bounds, alphas, "final", visit)
            if 0 not in seen:  # the rows do not depend on the input
                seen[0] = coeffs.new_zeros(count, coeffs.shape[1], *box.lower.shape[1:])
            return (seen[0].reshape(count, coeffs.shape[1], inputs),
                    bound.lower - interval_concretize(seen[0], box).lower)

        with torch.no_grad():
            row_weights, row_constant = linear_form(network.output, self.coeffs.expand(count, *self.coeffs.shape[1:]),
                                                    AlphaStore.holding(domains.alphas))
            parts = []  # per split node with split neurons: (node, their flat positions, A, c - cut, signs)
            for z in self.splits:
                sign = domains.signs[z].reshape(count, -1)
                positions = (sign != 0).any(0).nonzero().flatten()
                if positions.numel() == 0:
                    continue
                eye = sign.new_zeros(count, positions.numel(), sign.shape[1])
                eye[:, torch.arange(positions.numel()), positions] = 1.0
                # every rule linear on a leaf: CROWN's own lines are exact without parameters
                weights, constant = linear_form(z, eye.reshape(count, positions.numel(), *domains.signs[z].shape[1:]),
                                                None)
                cut = domains.cuts[z].reshape(count, -1)[:, positions]
                parts.append((z, positions, weights, constant - cut, sign[:, positions]))
        if not parts:
            return domains.betas
        as_numpy = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
        signs = torch.cat([p[4] for p in parts], 1)
        constraints = torch.cat([p[4].unsqueeze(-1) * p[2] for p in parts], 1)
        bias = torch.cat([p[4] * p[3] for p in parts], 1)
        wanted = ~domains.refuted & self.real_rows
        solution = solve_leaves(as_numpy(row_weights), as_numpy(row_constant), as_numpy(constraints), as_numpy(bias),
                                as_numpy(signs) != 0, as_numpy(box.lower.reshape(count, -1)),
                                as_numpy(box.upper.reshape(count, -1)), wanted)
        solved = torch.from_numpy(~np.isnan(solution.minima)).to(network.device)  # [D, m]
        multipliers = torch.from_numpy(solution.multipliers).to(network.dtype).to(network.device)
        betas, begin = dict(domains.betas), 0
        for z, positions, *_ in parts:
            flat = betas[z].reshape(count, rows, -1).clone()
            part = multipliers[:, :, begin:begin + positions.numel()]
            flat[:, :, positions] = torch.where(solved.unsqueeze(-1), part, flat[:, :, positions])
            betas[z] = flat.reshape(betas[z].shape)
            begin += positions.numel()
        with np.errstate(invalid="ignore"):
            violating = solution.minima <= self.offset.cpu().numpy()  # [D, m]
        if self.probe is not None and violating.any():
            points = torch.from_numpy(solution.points[violating]).to(network.dtype).to(network.device)
            self.found = self.probe(points.reshape(-1, *box.lower.shape[1:]))
        return betas

    def _optimize(self, bounds: list[Interval | None], errors: Errors, coeffs: Tensor, signs: dict[int, Tensor],
                  cuts: dict[int, Tensor], start: dict[int, Tensor], start_alphas: dict[tuple, list[Tensor]],
                  refuted: np.ndarray, iterations: int
                  ) -> tuple[LinearBound, dict[int, Tensor], dict[int, Tensor], AlphaStore]:
        """The final sweep with its alpha (from `start_alphas`, the parents': CROWN's where empty) and
        the split constraints' beta (from `start`) optimised by Adam; the best bound of each row,
        the coefficients [N, m, *shape] that reached each split rule's output (and, at 0, the
        input) in the last sweep, the betas and the alphas reached."""
        network, settings = self.network, self.settings
        alphas = AlphaStore.starting_from(start_alphas)
        split = [z for z in self.splits if bool(signs[z].any())]
        betas = {z: start[z].clone().requires_grad_(True) for z in split}
        outputs = {y: z for z, y in self.splits.items()}
        seen: dict[int, Tensor] = {}

        def visit(index: int, node_coeffs: Tensor | Patches) -> Tensor | Patches:
            if index in outputs or index == 0:
                seen[index] = densify(node_coeffs).detach()
            if index in betas:
                node_coeffs = densify(node_coeffs) + betas[index] * signs[index].unsqueeze(1)
            return node_coeffs

        best: LinearBound | None = None
        optimizer = None
        for step in range(iterations):
            with torch.enable_grad():
                final = _with_cuts(backward_bound(network, network.output, coeffs, bounds, alphas, "final", visit,
                                                  errors), betas, signs, cuts)
            best = keep_best(best, final)
            if step == iterations - 1:
                break
            done = self.spec.case_refuted_rows(self.case, best.lower, best.magnitude, network.dtype) | refuted
            if self.spec.case_proved(self.case, done).all():
                break
            if optimizer is None:
                parameters = alphas.parameters() + list(betas.values())
                if not parameters:
                    break
                optimizer = Adam(parameters, settings.learning_rate, settings.decay)
            with torch.enable_grad():
                open_rows = torch.from_numpy(~done).to(final.lower.device)
                loss = -final.lower[open_rows & torch.isfinite(final.lower)].sum()
                if not loss.requires_grad:
                    break
                loss.backward()
            optimizer.step()
            alphas.project()
            with torch.no_grad():
                for beta in betas.values():
                    beta.clamp_(min=0)
        kept = {z: betas[z].detach() if z in betas else start[z] for z in self.splits}
        return best, seen, kept, alphas

    def _scores(self, domains: _Domains, seen: dict[int, Tensor], open_rows: Tensor) -> _Scores:
        """The BaBSR-like score of every neuron of every split node of `domains`, [N, total]; where
        no unstable neuron costs the open rows anything, the looseness of its relaxation instead;
        -inf where the neuron is stable."""
        count = open_rows.shape[0]
        scores, loosenesses, owners, neurons = [], [], [], []
        for z, y in self.splits.items():
            lower = domains.lower[z].reshape(count, -1)
            upper = domains.upper[z].reshape(count, -1)
            rule = self.network.rule(y)
            unstable = rule.can_split(lower, upper)
            above, below = rule.split_score(lower, upper)
            loose = torch.where(unstable, above + below, -torch.inf)
            if y in seen:
                # a negative coefficient pays for the upper line's looseness, a positive one for the lower's
                reached = seen[y].reshape(count, seen[y].shape[1], -1) * open_rows.unsqueeze(-1)
                cost = reached.clamp(max=0).neg().sum(1) * above + reached.clamp(min=0).sum(1) * below
                score = torch.where(unstable, cost, -torch.inf)
            else:
                score = torch.full_like(loose, -torch.inf)
            scores.append(score)
            loosenesses.append(loose)
            owners.append(torch.full((lower.shape[1],), z, dtype=torch.long, device=lower.device))
            neurons.append(torch.arange(lower.shape[1], device=lower.device))
        score, loose = torch.cat(scores, 1), torch.cat(loosenesses, 1)
        useful = score.amax(1, keepdim=True) > 0
        return _Scores(torch.where(useful, score, loose), torch.cat(owners), torch.cat(neurons))

    def _filter(self, bounds: list[Interval | None], keep: Tensor, scores: _Scores, domains: _Domains,
                open_rows: Tensor) -> Tensor:
        """[N, 2] (split node, flat neuron) to split next per domain (`domains`, the batch elements
        `keep` of the intervals `bounds`); (-1, -1) where none is unstable.

        Filtered smart branching (De Palma et al. 2021): the `candidates` best-scored neurons each
        get both children bounded by one sweep with the parent's alpha and beta (its intervals
        otherwise, no rounding terms: an estimate that only ranks the candidates), and the one
        whose children are closest to proved is split.
        """
        count = len(domains)
        k = min(self.settings.candidates, scores.score.shape[1])
        value, pick = scores.score.topk(k, dim=1)  # [N, k]
        choice = torch.stack([scores.owners[pick], scores.neurons[pick]], 2)  # [N, k, 2]
        valid = torch.isfinite(value)
        if k > 1 and count > 0 and bool(valid[:, 1].any()):
            part = [None if b is None else Interval(b.lower[keep].detach(), b.upper[keep].detach()) for b in bounds]
            children = self._children_bounds(part, domains, choice)  # [2, k, N, m]
            gaps = torch.where(open_rows, children - self.offset, torch.inf).amin(-1)  # [2, k, N]
            # both children's open gaps added up: on oval21 it took fewer domains than the worse child's
            both = torch.where(valid.T, gaps.clamp(max=0).sum(0), -torch.inf)  # [k, N]
            best = both.argmax(0)  # ties keep the best-scored candidate
        else:
            best = torch.zeros(count, dtype=torch.long, device=value.device)
        rows = torch.arange(count, device=value.device)
        chosen = choice[rows, best]
        return torch.where(valid[rows, best].unsqueeze(1), chosen, torch.full_like(chosen, -1))

    def _children_bounds(self, bounds: list[Interval | None], domains: _Domains, choice: Tensor) -> Tensor:
        """Lower bounds [2, k, N, m] of the final rows on both children (<= 0, then >= 0) of each
        of the k candidates `choice` [N, k, 2] of each domain."""
        count, k = choice.shape[:2]
        copies = 2 * k  # batch order: (side, candidate, domain)
        repeat = lambda t: t.repeat(copies, *([1] * (t.dim() - 1))) if t is not None else None  # noqa: E731
        wide = [None if b is None else Interval(repeat(b.lower), repeat(b.upper)) for b in bounds]
        signs = {z: repeat(s) for z, s in domains.signs.items()}
        cuts = {z: repeat(c) for z, c in domains.cuts.items()}
        owner = choice[..., 0].T.reshape(-1).repeat(2)  # [2kN]
        neuron = choice[..., 1].T.reshape(-1).repeat(2)
        below = torch.arange(copies * count, device=choice.device) < k * count
        for z in self.splits:
            here = (owner == z).nonzero().flatten()
            lower = wide[z].lower.reshape(copies * count, -1).clone()
            upper = wide[z].upper.reshape(copies * count, -1).clone()
            sign = signs[z].reshape(copies * count, -1).clone()
            cut = cuts[z].reshape(copies * count, -1).clone()
            at, side = neuron[here], below[here]
            point = self._cut_points(z, lower[here, at], upper[here, at])
            upper[here, at] = torch.where(side, torch.minimum(upper[here, at], point), upper[here, at])
            lower[here, at] = torch.where(side, lower[here, at], torch.maximum(lower[here, at], point))
            sign[here, at] = torch.where(side, 1.0, -1.0).to(sign.dtype)
            cut[here, at] = point
            wide[z] = Interval(lower.reshape(wide[z].lower.shape), upper.reshape(wide[z].upper.shape))
            signs[z] = sign.reshape(signs[z].shape)
            cuts[z] = cut.reshape(cuts[z].shape)
        betas = {z: repeat(b) for z, b in domains.betas.items()}
        store = AlphaStore.holding({k: [repeat(p) for p in group] for k, group in domains.alphas.items()})

        def visit(index: int, node_coeffs: Tensor | Patches) -> Tensor | Patches:
            if index in betas:
                node_coeffs = densify(node_coeffs) + betas[index] * signs[index].unsqueeze(1)
            return node_coeffs

        coeffs = self.coeffs.expand(copies * count, *self.coeffs.shape[1:])
        no_rounding: Errors = dict.fromkeys(range(len(self.network.nodes)))
        with torch.no_grad():
            final = _with_cuts(backward_bound(self.network, self.network.output, coeffs, wide, store, "final", visit,
                                              no_rounding), betas, signs, cuts)
        return final.lower.reshape(2, k, count, -1)


@dataclass
class _Scores:
    score: Tensor   # [N, total] per neuron of every split node, -inf where stable
    owners: Tensor  # [total] the split node of each neuron
    neurons: Tensor  # [total] its flat index in that node


class _BoxSearch(_Case):
    """Input splitting, for models with few inputs: a domain is a sub-box, bounded by CROWN and
    halved along the input whose coefficient in the open rows times its width is largest."""

    def __init__(self, network: Network, spec: Spec, case: int, root: list[Interval | None],
                 settings: BranchSettings, probe: Probe | None = None, root_bound: LinearBound | None = None,
                 intermediate: str = "auto", time_left: Callable[[], float] | None = None,
                 sweep_ratio: float | None = None) -> None:
        super().__init__(network, spec, case, root, settings, probe, root_bound)
        # a box's forward pass or sweeps (nn4sys normal_1000's root: 11-24 s) stop with the time
        self.time_left = time_left
        self.intermediate = resolve(intermediate, self.box)
        self.measure_sweeps = intermediate == "auto" and self.intermediate == "both"
        if self.measure_sweeps and sweep_ratio is not None:
            self._choose_by(sweep_ratio, "the bound pass's")
        self.splittable = True
        self.max_domains = self._domain_cap(2 * self.box.lower[0].numel() + 2 * self.coeffs.shape[1])

    def bound_children(self, parents: _Domains | None) -> _Domains:
        started = time.perf_counter()
        if parents is None:
            lower, upper = self.box.lower, self.box.upper
            refuted = np.zeros((1, self.coeffs.shape[1]), dtype=bool)
            inherited, known = self.floor, self.root
        else:
            lower, upper = _halve(parents)
            refuted = np.concatenate([parents.refuted, parents.refuted])
            inherited, known = _twice(parents.bound), None
        children = self._bound(lower, upper, refuted, inherited, known)
        self.domain_seconds = (time.perf_counter() - started) / lower.shape[0]
        return children

    def retry(self, domains: _Domains, time_left: Callable[[], float]) -> _Domains:
        return domains  # a box of zero width bounds no better a second time

    def _choose_intermediate(self, seconds: dict[str, float]) -> None:
        """After the first sub-boxes under `auto`: keep `both`, or drop its backward sweeps where
        they cost more than SWEEPS_WORTH forward passes."""
        self._choose_by(sweeps_over_forward(seconds), "the first sub-boxes'")

    def _choose_by(self, ratio: float, where: str) -> None:
        """Keep `both`, or drop its backward sweeps where they took `ratio` > SWEEPS_WORTH times
        the forward pass (`where`: in which pass); nothing is measured after."""
        self.measure_sweeps = False
        if ratio > SWEEPS_WORTH:
            self.intermediate = "forward"
            log.info("input splitting: forward-mode intermediate bounds (%s backward sweeps took %.1fx the "
                     "forward pass)", where, ratio)

    def _bound(self, lower: Tensor, upper: Tensor, refuted: np.ndarray, inherited: LinearBound | None,
               known: list[Interval | None] | None = None) -> _Domains:
        """Bound the boxes [N, *input_shape] (with their intermediate intervals `known`, when they
        are); the open ones."""
        network, count = self.network, lower.shape[0]
        seen: dict[int, Tensor] = {}
        visit = _input_recorder(seen)

        coeffs = self.coeffs.expand(count, *self.coeffs.shape[1:])
        with torch.no_grad():
            errors: Errors = {}
            seconds: dict[str, float] = {}
            if known is not None:
                bounds = known
            else:
                # measuring the sweeps costs at most what they are worth
                bounds = intermediate_bounds(network, Interval(lower, upper), self.intermediate, errors=errors,
                                             time_left=self.time_left, seconds=seconds,
                                             sweeps_within=SWEEPS_WORTH if self.measure_sweeps else None)
                if self.measure_sweeps:
                    self._choose_intermediate(seconds)
            best = keep_best(backward_bound(network, network.output, coeffs, bounds, visit=visit, errors=errors),
                             interval_concretize(coeffs, bounds[network.output]))
            if inherited is not None:
                best = keep_best(best, inherited)
        refuted, proved, open_rows, gap = self._outcome(best, refuted)
        self._try_minimisers(seen.get(0), open_rows, lower, upper)
        width = (upper - lower).reshape(count, -1)
        if 0 in seen:
            weight = (seen[0].reshape(count, coeffs.shape[1], -1).abs() * open_rows.unsqueeze(-1)).sum(1)
        else:  # no row's coefficients reach the input (an Opaque node stands between): split the widest
            weight = torch.zeros_like(width)
        score = torch.where((weight * width).amax(1, keepdim=True) > 0, weight * width, width)
        pick = score.argmax(1)
        node = torch.where(width.amax(1) > 0, 0, -1)
        choice = torch.stack([node, torch.where(node < 0, -1, pick)], 1)
        domains = _Domains({0: lower}, {0: upper}, {}, {}, {}, {}, refuted, best, gap, choice)
        return domains.take(torch.from_numpy(~proved).to(network.device).nonzero().flatten())


def _halve(parents: _Domains) -> tuple[Tensor, Tensor]:
    """The two halves of every parent box along its chosen input: lower halves first."""
    count = len(parents)
    rows = torch.arange(count, device=parents.choice.device)
    dim = parents.choice[:, 1]
    low, high = parents.lower[0].reshape(count, -1), parents.upper[0].reshape(count, -1)
    middle = (low[rows, dim] + high[rows, dim]) / 2
    first_high, second_low = high.clone(), low.clone()
    first_high[rows, dim] = middle
    second_low[rows, dim] = middle
    shape = parents.lower[0].shape[1:]
    return (torch.cat([low, second_low]).reshape(2 * count, *shape),
            torch.cat([first_high, high]).reshape(2 * count, *shape))


def _split(parents: _Domains, cut_points: Callable[[int, Tensor, Tensor], Tensor]
           ) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor], dict[int, Tensor]]:
    """Intervals, signs and cuts of the children: first every parent with its neuron <= its cut
    point (`cut_points(node, lower, upper)`), then >= it."""
    count = len(parents)
    rows = torch.arange(count, device=parents.choice.device)
    lower, upper, signs, cuts = {}, {}, {}, {}
    for z in parents.lower:
        shape = parents.lower[z].shape
        below_low = parents.lower[z].reshape(count, -1).clone()
        below_up = parents.upper[z].reshape(count, -1).clone()
        below_sign = parents.signs[z].reshape(count, -1).clone()
        cut = parents.cuts[z].reshape(count, -1).clone()
        above_low, above_up, above_sign = below_low.clone(), below_up.clone(), below_sign.clone()
        here = parents.choice[:, 0] == z
        picked, neuron = rows[here], parents.choice[here, 1]
        point = cut_points(z, below_low[picked, neuron], below_up[picked, neuron])
        cut[picked, neuron] = point
        below_up[picked, neuron] = torch.minimum(below_up[picked, neuron], point)
        below_sign[picked, neuron] = 1.0
        above_low[picked, neuron] = torch.maximum(above_low[picked, neuron], point)
        above_sign[picked, neuron] = -1.0
        lower[z] = torch.cat([below_low, above_low]).reshape(2 * count, *shape[1:])
        upper[z] = torch.cat([below_up, above_up]).reshape(2 * count, *shape[1:])
        signs[z] = torch.cat([below_sign, above_sign]).reshape(2 * count, *shape[1:])
        cuts[z] = torch.cat([cut, cut]).reshape(2 * count, *shape[1:])
    return lower, upper, signs, cuts


def _input_recorder(seen: dict[int, Tensor]) -> Callable[[int, Tensor | Patches], Tensor | Patches]:
    """A sweep's `visit` that keeps, at seen[0], the coefficients [N, m, *input_shape] reaching the input."""
    def visit(index: int, node_coeffs: Tensor | Patches) -> Tensor | Patches:
        if index == 0:
            seen[0] = densify(node_coeffs)
        return node_coeffs
    return visit


def _twice(bound: LinearBound) -> LinearBound:
    """A parent's bound for both its children (below halves first)."""
    return LinearBound(torch.cat([bound.lower, bound.lower]), torch.cat([bound.magnitude, bound.magnitude]))


def _with_cuts(bound: LinearBound, betas: dict[int, Tensor], signs: dict[int, Tensor],
               cuts: dict[int, Tensor]) -> LinearBound:
    """A sweep's bound [N, m] with the split terms' constants: a constraint s (z - cut) <= 0 enters
    as beta s z in the sweep (visit) and -beta s cut here (0 for ReLU splits, cut at 0)."""
    lower, magnitude = bound.lower, bound.magnitude
    for z, beta in betas.items():
        shift = (beta * (signs[z] * cuts[z]).unsqueeze(1)).reshape(beta.shape[0], beta.shape[1], -1).sum(-1)
        lower, magnitude = lower - shift, magnitude + shift.abs()
    return LinearBound(lower, magnitude)
