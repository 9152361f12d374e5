"""One instance end to end: parse, load, bound, falsify, decide.

Order: IBP (cheap; often enough on small boxes), the falsifier (random points, then PGD), then
the family's bound method. Every `sat` carries a counterexample confirmed by onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from verifier.agreement import disagreement
from verifier.attack import Falsifier
from verifier.bounds.network import Network
from verifier.deadline import Deadline
from verifier.instance import open_instance
from verifier.load import LoadedModel, load_for_verifying
from verifier.prove import Proof, prove
from verifier.search import branch_and_bound
from verifier.settings import Settings
from verifier.spec import Spec
from verifier.vnnlib import Property
from verifier.witness import Counterexample, OnnxChecker

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """The verdict of one instance and how it was reached."""

    verdict: str                                  # sat | unsat | unknown | timeout
    counterexample: Counterexample | None = None
    decided_by: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def verify_instance(model_path: str, prop: str | Property, settings: Settings, deadline: Deadline,
                    device: str = "cpu", seed: int = 0,
                    load: Callable[[str], LoadedModel] = load_for_verifying) -> Outcome:
    """Decide one instance; user errors (bad files, operators that cannot be converted) raise
    UserError, and operators without a bound rule become Opaque nodes (a warning names them).

    The property is a VNN-LIB file, or a compiled one (a VNN-LIB 2.0 query's, over its composed model).

    `load` converts the model; batch workers pass a cache so that rows sharing a model convert it once.
    Progress is logged (INFO) on the `verifier` logger.
    """
    instance = open_instance(model_path, prop, device, load)
    timings = {"load": deadline.elapsed()}
    if instance.network is None:
        return Outcome("unsat", decided_by="the property's constraints cannot hold together", timings=timings)
    network, spec, model = instance.network, instance.spec, instance.model
    if network.unbounded:
        log.warning("%s: unsupported operators: %s; their values are bounded by (-inf, inf) and the attack "
                    "still runs", model_path, network.unbounded)
    log.info("loaded %s: %d nodes, %d input box(es), %d spec row(s) per box, %.2fs", model_path,
             len(network.nodes), spec.cases, spec.matrix.shape[1], deadline.elapsed())
    if deadline.expired():
        return Outcome("timeout", timings=timings)

    np_dtype = np.float32 if model.dtype == torch.float32 else np.float64
    checker = OnnxChecker(model_path, model.input_name, model.input_shape, np_dtype)
    falsifier = Falsifier(network, spec, checker, settings.attack, seed, deadline.remaining)
    differs = disagreement(network, spec, checker, seed)
    if differs is not None:  # the bounds would be of another network: attack only
        log.warning("%s: %s; no proof is attempted", model_path, differs)
        return _attack_only(falsifier, deadline, timings)

    proof = prove(network, spec, "ibp")
    timings["ibp"] = proof.seconds
    log.info("ibp: %d/%d boxes proved in %.3fs", proof.proved.sum(), spec.cases, proof.seconds)
    if proof.all_proved:
        return Outcome("unsat", decided_by="ibp", timings=timings)

    found = _attack(falsifier, settings.attack.rounds, deadline.fraction(settings.attack.time_share), timings)
    if found is not None:
        return Outcome("sat", found, decided_by="attack", timings=timings)

    # CROWN, then (when the family asks for it) its optimised form
    stages = {"ibp": [], "crown": ["crown"], "alpha-crown": ["crown", "alpha-crown"]}[settings.bound_method]
    branching = settings.branch.split != "none"
    sweep_ratio = None  # of CROWN's pass, for input splitting's choice of intermediate bounds
    for method in stages:
        if deadline.expired():
            break
        # alpha-CROWN starts with a CROWN pass of its own, whose sweeps cannot be cut short: on
        # nn4sys normal_1000 with two jobs a 23 s pass started with 7 s left
        if method == "alpha-crown" and deadline.remaining() < 1.5 * timings["crown"]:
            log.info("alpha-crown: skipped, %.1fs left for a %.1fs CROWN pass", deadline.remaining(), timings["crown"])
            break
        proof = None  # frees the last stage's intervals before this stage needs the memory
        proof = prove(network, spec, method, settings.alpha, deadline.remaining, keep_intervals=branching,
                      intermediate=settings.intermediate)
        timings[method] = proof.seconds
        sweep_ratio = proof.sweep_ratio if method == "crown" else sweep_ratio
        log.info("%s: %d/%d boxes proved in %.3fs%s", method, proof.proved.sum(), spec.cases, proof.seconds,
                 " (float64 re-check)" if proof.rechecked else " (cut short by the deadline)" if proof.interrupted
                 else "")
        if proof.all_proved:
            return Outcome("unsat", decided_by=method, timings=timings)

    if branching and network.unbounded and _unbounded_rows(spec, proof):
        log.info("branch and bound: skipped, every open row's bound is -inf (it passes through an unsupported "
                 "operator, whose values no split narrows)")
        branching = False
    if branching and proof.intervals is not None and not deadline.expired():
        outcome = _branch(network, spec, proof, settings, falsifier, deadline, timings, sweep_ratio)
        if outcome is not None:
            return outcome

    return _attack_only(falsifier, deadline, timings)


def _unbounded_rows(spec: Spec, proof: Proof) -> bool:
    """Whether every row of every open case has the lower bound -inf."""
    open_cases = ~proof.proved
    rows = spec.row_disjunct[open_cases] >= 0
    return bool(np.isneginf(proof.lower[open_cases][rows]).all())


def _attack_only(falsifier: Falsifier, deadline: Deadline, timings: dict[str, float]) -> Outcome:
    """Nothing left to prove with: keep attacking until the deadline (one round without one)."""
    found = _attack(falsifier, None if deadline.at is not None else 1, deadline, timings)
    if found is not None:
        return Outcome("sat", found, decided_by="attack", timings=timings)
    return Outcome("timeout" if deadline.at is not None else "unknown", timings=timings)


def _branch(network: Network, spec: Spec, proof: Proof, settings: Settings, falsifier: Falsifier,
            deadline: Deadline, timings: dict[str, float], sweep_ratio: float | None = None) -> Outcome | None:
    """Branch and bound on every case the bound pass left open, easiest (highest bound) first:
    unsat when every case is proved, sat when a domain's bound minimiser is a counterexample."""
    on = split_kind(spec, settings.branch.split)
    open_cases = np.flatnonzero(~proof.proved)
    easiest_first = open_cases[np.argsort(-np.nan_to_num(proof.lower[open_cases].max(1), nan=-np.inf))]
    start = deadline.elapsed()
    try:
        for case in easiest_first:
            probe = lambda points, case=int(case): falsifier.try_points(case, points)  # noqa: E731
            # the root reuses the bound pass's intervals, but an input split's children cost about
            # a CROWN pass each: the search starts only with time for about one
            result = branch_and_bound(network, spec, int(case), proof.intervals, settings.branch, deadline.remaining,
                                      on, probe, timings.get("crown", 0.0) / spec.cases, settings.intermediate,
                                      sweep_ratio, proof.bound)
            log.info("branch and bound (%s splits), box %d: %s after %d domain(s), %d open, %.2fs",
                     "neuron" if on == "relu" else on, case,
                     result.reason, result.domains_bounded, result.open_domains, result.seconds)
            if result.counterexample is not None:
                return Outcome("sat", result.counterexample, decided_by="branch and bound", timings=timings)
            if not result.proved:
                return None
        return Outcome("unsat", decided_by="branch and bound", timings=timings)
    finally:
        timings["branch and bound"] = deadline.elapsed() - start


# Input splitting halves a box along one input at a time, so its domains grow exponentially with
# the number of inputs that vary, ReLU splitting's with the unstable neurons. ACAS Xu (5 inputs)
# is proved by input splitting; image properties vary hundreds of inputs.
INPUT_SPLIT_DIMENSIONS = 8


def split_kind(spec: Spec, split: str) -> str:
    """What branch and bound splits: the setting, or for `auto` the input box when every case
    varies at most INPUT_SPLIT_DIMENSIONS inputs, else unstable ReLUs."""
    if split != "auto":
        return split
    varying = (spec.box.upper > spec.box.lower).reshape(spec.cases, -1).sum(1)
    return "input" if int(varying.max()) <= INPUT_SPLIT_DIMENSIONS else "relu"


def _attack(falsifier: Falsifier, rounds: int | None, deadline: Deadline,
            timings: dict[str, float]) -> Counterexample | None:
    start = deadline.elapsed()
    found = falsifier.run(rounds, deadline.remaining)
    timings["attack"] = timings.get("attack", 0.0) + deadline.elapsed() - start
    log.info("attack: %s counterexample after %d round(s), %d candidate(s) checked", "found a" if found else "no",
             falsifier.rounds_done, falsifier.tried)
    return found
