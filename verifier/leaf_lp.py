"""Linear programs of branch and bound's leaves: domains where no split is left.

On such a domain every split rule is linear, so each row is a linear function of the input,
`r x + c`, and the domain is the box cut by the split constraints `s (a x + b) <= 0`. The LP
min r x + c over that polytope is solved by HiGHS; its optimal multipliers of the split
constraints are exactly the betas of beta-CROWN's bound of the row (strong duality: with them, the
minimum of the Lagrangian over the box is the LP's optimum). So the LP only proposes betas: the
bound itself is then the engine's own sweep with those betas, sound in floating point whatever
the solver's rounding, and the LP's minimiser is a counterexample candidate, checked on the model.
Where the LP is infeasible (the domain is empty), the solver's dual ray, scaled up, gives betas
whose bound proves the row.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import highspy
import numpy as np


@dataclass
class LeafSolution:
    multipliers: np.ndarray  # [D, m, k] >= 0, per row, of each constraint (0 where not solved)
    minima: np.ndarray       # [D, m] the LP optimum of each row (inf: the domain is empty; nan: not solved)
    points: np.ndarray       # [D, m, n] its minimiser


def solve_leaves(rows: np.ndarray, constant: np.ndarray, constraints: np.ndarray, bias: np.ndarray,
                 active: np.ndarray, lower: np.ndarray, upper: np.ndarray, wanted: np.ndarray) -> LeafSolution:
    """For each domain d and wanted row j: min rows[d, j] x + constant[d, j] over lower[d] <= x <=
    upper[d] with constraints[d, i] x + bias[d, i] <= 0 for the active i.

    rows [D, m, n], constant [D, m], constraints [D, k, n], bias [D, k], active [D, k] bool,
    lower/upper [D, n], wanted [D, m] bool; float64 arrays.
    """
    count, m, n = rows.shape
    k = constraints.shape[1]
    multipliers = np.zeros((count, m, k))
    minima = np.full((count, m), np.nan)
    points = np.zeros((count, m, n))
    for d in range(count):
        used = np.flatnonzero(active[d])
        highs = _model(constraints[d, used], bias[d, used], lower[d], upper[d])
        for j in np.flatnonzero(wanted[d]):
            highs.changeColsCost(n, np.arange(n, dtype=np.int32), rows[d, j].astype(np.float64))
            highs.run()
            status = highs.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                certificate = _emptiness(highs, rows[d, j], constant[d, j], constraints[d, used], bias[d, used],
                                         lower[d], upper[d])
                if certificate is not None:
                    multipliers[d, j, used] = certificate
                    minima[d, j] = np.inf
                continue
            if status != highspy.HighsModelStatus.kOptimal:
                continue  # unsolved: the betas stay as they are
            solution = highs.getSolution()
            # HiGHS's duals of rows at their upper bound are <= 0 in a minimisation
            multipliers[d, j, used] = np.clip(-np.asarray(solution.row_dual), 0, None)
            minima[d, j] = highs.getInfo().objective_function_value + constant[d, j]
            points[d, j] = np.asarray(solution.col_value)
    return LeafSolution(multipliers, minima, points)


def _emptiness(highs: highspy.Highs, row: np.ndarray, constant: float, constraints: np.ndarray, bias: np.ndarray,
               lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
    """Multipliers that prove the domain empty (Farkas): lambda >= 0 from the solver's dual ray
    with min over the box of lambda (A x + b) > 0, scaled so that the Lagrangian bound of the row
    is positive and large; None without such a ray."""
    _, has_ray, ray = highs.getDualRay()
    if not has_ray:
        return None
    weights = np.clip(-np.asarray(ray), 0, None)
    combined = constraints.T @ weights
    gap = weights @ bias + np.minimum(combined * lower, combined * upper).sum()
    if not gap > 0:
        return None
    span = np.abs(row) @ np.maximum(np.abs(lower), np.abs(upper)) + abs(constant) + 1.0
    return weights * (10.0 * span / gap)


def _quiet_highs() -> highspy.Highs:
    """A silent solver. The first one of a process prints a banner on file descriptor 1, which
    would land in `verify`'s answer on stdout: it goes to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 1)
            highs = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    highs.setOptionValue("output_flag", False)
    return highs


def _model(constraints: np.ndarray, bias: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> highspy.Highs:
    highs = _quiet_highs()
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = constraints.shape[1], constraints.shape[0]
    lp.col_cost_ = np.zeros(constraints.shape[1])
    lp.col_lower_, lp.col_upper_ = lower.astype(np.float64), upper.astype(np.float64)
    lp.row_lower_ = np.full(constraints.shape[0], -highspy.kHighsInf)
    lp.row_upper_ = -bias.astype(np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
    nonzero = constraints != 0
    lp.a_matrix_.start_ = np.concatenate([[0], np.cumsum(nonzero.sum(1))]).astype(np.int32)
    lp.a_matrix_.index_ = np.nonzero(nonzero)[1].astype(np.int32)
    lp.a_matrix_.value_ = constraints[nonzero].astype(np.float64)
    highs.passModel(lp)
    return highs
