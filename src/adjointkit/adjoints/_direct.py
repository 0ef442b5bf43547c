"""Differentiate the loop itself."""

from .._integrate import run
from .._problem import Problem
from .._solution import Solution
from ._base import AbstractAdjoint
from ._outputs import output_recorders, plain_records, solution_from_records


class DirectAdjoint(AbstractAdjoint):
    """Discretise-then-optimise by differentiating straight through the solver loop.

    Gives the exact derivative of the computed solution, in reverse mode
    (`jax.grad`, `jax.vjp`) and in forward mode (`jax.jvp`, `jax.jacfwd`).

    Memory and time of the backward pass:

    - Constant steps whose number `N` is known at trace time run as a `lax.scan` of
      `N` steps, and JAX stores every step's intermediate values: memory grows with
      `N`, the steps actually taken.
    - Adaptive steps (or a constant step count only known at run time) run as a
      bounded while loop (`_bounded_loop.bounded_while_loop`): a tree of nested
      scans of 8 iterations each, the upper levels checkpointed, skipping a whole
      block at a time once the solve is done. Reverse mode keeps 8 stepper states
      per level (log8(`max_steps`) levels, rounded up) and 8 steps' intermediate
      values, so memory is nearly independent of `max_steps`; the backward pass
      recomputes each step taken once per checkpointed level (3 times at the
      default `max_steps=4096`) and costs ~nothing for iterations the solve did
      not need. What does grow with `max_steps` are the buffers of what is saved
      per step (`SaveAt(steps=True)`, dense output), once each. Under `jax.vmap`
      with a batched step-size decision, every iteration up to `max_steps` is
      computed (a batched `lax.cond` runs both branches).

    Values at `SaveAt(ts=...)` are written as the steps that contain them are
    taken (`TsRecorder(differentiable=True)`: a bounded loop over the save times
    within a step), so they cost `len(ts)` values, not a stored dense output.

    **Arguments:** none.

    References: A. Griewank and A. Walther, *Evaluating Derivatives* (2nd ed.,
    SIAM 2008) (reverse- and forward-mode differentiation of a program); J. M.
    Sanz-Serna, "Symplectic Runge--Kutta schemes for adjoint equations, automatic
    differentiation, optimal control, and more", SIAM Review 58, 2016 (what the
    reverse mode of a Runge--Kutta solve computes).
    """

    def solve(self, problem: Problem) -> Solution:
        recorders = output_recorders(problem, differentiable=True)
        summary, _, records = run(problem, recorders, differentiable=True)
        return solution_from_records(
            problem, summary, plain_records(records), discrete=True
        )
