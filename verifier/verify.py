"""One instance end to end: parse, load, bound, falsify, decide.

Order: IBP (cheap; often enough on small boxes), the falsifier (random points, then PGD), then
the family's bound method. Every `sat` carries a counterexample confirmed by onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from verifier.attack import Falsifier
from verifier.bounds.network import Network
from verifier.deadline import Deadline
from verifier.graph import build_network
from verifier.load import LoadedModel, load_model
from verifier.prove import Proof, prove
from verifier.search import branch_and_bound
from verifier.settings import Settings
from verifier.spec import Spec
from verifier.vnnlib import parse_file
from verifier.witness import Counterexample, OnnxChecker

Log = Callable[[str], None]


@dataclass
class Outcome:
    """The verdict of one instance and how it was reached."""

    verdict: str                                  # sat | unsat | unknown | timeout
    counterexample: Counterexample | None = None
    decided_by: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _quiet(_message: str) -> None:
    pass


def verify_instance(model_path: str, property_path: str, settings: Settings, deadline: Deadline,
                    device: str = "cpu", seed: int = 0, log: Log = _quiet,
                    load: Callable[[str], LoadedModel] = load_model) -> Outcome:
    """Decide one instance; user errors (bad files, unsupported operators) raise UserError.

    `load` converts the model; batch workers pass a cache so that rows sharing a model convert it once.
    """
    prop = parse_file(property_path)
    model = load(model_path)
    prop.check_sizes(model.num_inputs, model.num_outputs)
    prop = prop.padded_to_outputs(model.num_outputs)
    timings = {"load": deadline.elapsed()}
    if not prop.cases:
        return Outcome("unsat", decided_by="the property's constraints cannot hold together", timings=timings)
    probe = torch.from_numpy((prop.cases[0].lower + prop.cases[0].upper) / 2)
    network = build_network(model, probe).to(device)
    spec = Spec.build(prop, network.input_shape, network.dtype, device)
    log(f"loaded {model_path}: {len(network.nodes)} nodes, {spec.cases} input box(es), "
        f"{spec.matrix.shape[1]} spec row(s) per box, {deadline.elapsed():.2f}s")
    if deadline.expired():
        return Outcome("timeout", timings=timings)

    proof = prove(network, spec, "ibp")
    timings["ibp"] = proof.seconds
    log(f"ibp: {int(proof.proved.sum())}/{spec.cases} boxes proved in {proof.seconds:.3f}s")
    if proof.all_proved:
        return Outcome("unsat", decided_by="ibp", timings=timings)

    np_dtype = np.float32 if model.dtype == torch.float32 else np.float64
    checker = OnnxChecker(model_path, model.input_name, model.input_shape, np_dtype)
    falsifier = Falsifier(network, spec, checker, settings.attack(), seed, deadline.remaining)
    found = _attack(falsifier, settings.attack_rounds, deadline.fraction(settings.attack_time_share), timings, log)
    if found is not None:
        return Outcome("sat", found, decided_by="attack", timings=timings)

    # CROWN, then (when the family asks for it) its optimised form
    stages = {"ibp": [], "crown": ["crown"], "alpha-crown": ["crown", "alpha-crown"]}[settings.bound_method]
    branching = settings.branching != "none"
    for method in stages:
        if deadline.expired():
            break
        proof = None  # frees the last stage's intervals before this stage needs the memory
        proof = prove(network, spec, method, settings.alpha(), deadline.remaining, keep_intervals=branching)
        timings[method] = proof.seconds
        log(f"{method}: {int(proof.proved.sum())}/{spec.cases} boxes proved in {proof.seconds:.3f}s"
            f"{' (float64 re-check)' if proof.rechecked else ''}")
        if proof.all_proved:
            return Outcome("unsat", decided_by=method, timings=timings)

    if branching and proof.intervals is not None and not deadline.expired() \
            and _branch(network, spec, proof, settings, deadline, timings, log):
        return Outcome("unsat", decided_by="branch and bound", timings=timings)

    if deadline.at is not None:  # nothing left to prove with: keep attacking until the deadline
        found = _attack(falsifier, None, deadline, timings, log)
        if found is not None:
            return Outcome("sat", found, decided_by="attack", timings=timings)
        return Outcome("timeout", timings=timings)  # the attack stops only for the deadline
    return Outcome("unknown", timings=timings)


def _branch(network: Network, spec: Spec, proof: Proof, settings: Settings, deadline: Deadline,
            timings: dict[str, float], log: Log) -> bool:
    """Branch and bound on every case the bound pass left open, easiest (highest bound) first."""
    open_cases = np.flatnonzero(~proof.proved)
    easiest_first = open_cases[np.argsort(-np.nan_to_num(proof.lower[open_cases].max(1), nan=-np.inf))]
    start = deadline.elapsed()
    try:
        for case in easiest_first:
            result = branch_and_bound(network, spec, int(case), proof.intervals, settings.branch(), deadline.remaining,
                                      settings.branching)
            log(f"branch and bound, box {case}: {result.reason} after {result.domains_bounded} domain(s), "
                f"{result.open_domains} open, {result.seconds:.2f}s")
            if not result.proved:
                return False
        return True
    finally:
        timings["branch and bound"] = deadline.elapsed() - start


def _attack(falsifier: Falsifier, rounds: int | None, deadline: Deadline, timings: dict[str, float],
            log: Log) -> Counterexample | None:
    start = deadline.elapsed()
    found = falsifier.run(rounds, deadline.remaining)
    timings["attack"] = timings.get("attack", 0.0) + deadline.elapsed() - start
    log(f"attack: {'found a' if found else 'no'} counterexample after {falsifier.rounds_done} round(s), "
        f"{falsifier.tried} candidate(s) checked")
    return found
