"""Butcher tableaus with their continuous extensions, as plain numpy data."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ButcherTableau:
    """An explicit Runge--Kutta method as data.

    The stages are `k_i = f(t0 + c[i] h, y0 + h sum_j a[i][j] k_j)` for
    `i = 0 .. s-1` (`c[0] = 0`, `a[0] = ()`), and the step is
    `y1 = y0 + h sum_i b[i] k_i`.

    **Arguments:**

    - `a`: the strictly lower triangle, row `i` with `i` entries.
    - `b`: the weights of the propagated solution.
    - `c`: the nodes; `c[0]` must be 0.
    - `order`: the order of convergence of `b`.
    - `b_error`: weights of the embedded error estimate `h sum_i b_error[i] k_i`
      (that is, `b` minus the embedded method's weights); `None` if the method has
      no embedded estimate.
    - `embedded_order`: the order of the embedded method (the error estimate is of
      local order `embedded_order + 1`).
    - `dense`: the continuous extension, an `(num_dense_stages, degree)` matrix `P`
      with `y(t0 + theta h) = y0 + h sum_i K_i sum_j P[i, j] theta**(j + 1)`, where
      `K` is the stages followed, for methods that are not FSAL, by `f(t1, y1)`.
      `None` selects cubic Hermite interpolation through `y0, y1, f(t0, y0),
      f(t1, y1)`.
    - `dense_order`: the order of the continuous extension (its error on a step of
      size h is O(h**(dense_order + 1))).

    First-same-as-last (FSAL) is detected from the data: the last stage is evaluated
    at `(t1, y1)` when `c[-1] == 1` and `a[-1] == b`.
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    embedded_order: int | None = None
    dense: np.ndarray | None = None
    dense_order: int = 3

    def __post_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError("`a`, `b` and `c` must all have one entry per stage.")
        if self.c[0] != 0 or len(self.a[0]) != 0:
            raise ValueError("the first stage of an explicit method is at `t0`.")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"row {i} of `a` must have {i} entries.")
            if not np.isclose(sum(row), self.c[i], rtol=0, atol=1e-12):
                raise ValueError(f"row {i} of `a` does not sum to c[{i}].")
        if not np.isclose(sum(self.b), 1.0, rtol=0, atol=1e-12):
            raise ValueError("`b` must sum to one (consistency).")
        if (self.b_error is None) != (self.embedded_order is None):
            raise ValueError("give `b_error` and `embedded_order` together.")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError("`b_error` must have one entry per stage.")
        if self.dense is not None:
            dense = np.asarray(self.dense, dtype=np.float64)
            if dense.shape[0] != self.num_dense_stages:
                raise ValueError(
                    f"`dense` must have {self.num_dense_stages} rows (one per stage"
                    f"{'' if self.fsal else ', plus f(t1, y1)'}), got {dense.shape[0]}."
                )
            object.__setattr__(self, "dense", dense)

    @property
    def num_stages(self) -> int:
        return len(self.b)

    @property
    def fsal(self) -> bool:
        """Whether the last stage is `f(t1, y1)`, reusable as the next first stage."""
        return (
            self.num_stages > 1
            and self.c[-1] == 1
            and tuple(self.a[-1]) == tuple(self.b[:-1])
            and self.b[-1] == 0
        )

    @property
    def num_dense_stages(self) -> int:
        """Stages kept for dense output: all stages, plus `f(t1, y1)` if not FSAL."""
        return self.num_stages if self.fsal else self.num_stages + 1

    def dense_matrix(self) -> np.ndarray:
        """`P` of the continuous extension (see the class docstring)."""
        if self.dense is not None:
            return self.dense
        return hermite_dense_matrix(np.asarray(self.b), self.fsal)


def hermite_dense_matrix(b: np.ndarray, fsal: bool) -> np.ndarray:
    """`P` for cubic Hermite interpolation through y0, y1, f0 = K_0, f1 = K_last.

    With the Hermite basis h01 = 3θ² - 2θ³, h10 = θ - 2θ² + θ³, h11 = θ³ - θ²:
    `y(θ) = y0 + h01 (y1 - y0) + h h10 f0 + h h11 f1` and `y1 - y0 = h Σ b_i K_i`.
    """
    s = len(b) if fsal else len(b) + 1
    weights = np.zeros(s)
    weights[: len(b)] = b
    P = np.zeros((s, 3))
    P[:, 1] += 3 * weights  # θ² coefficient of h01 * b_i
    P[:, 2] += -2 * weights  # θ³
    P[0] += [1.0, -2.0, 1.0]  # h10 on f0
    P[-1] += [0.0, -1.0, 1.0]  # h11 on f1
    return P


def polynomial_in_theta(*factors) -> np.ndarray:
    """Coefficients `[θ¹, θ², ...]` of a product of polynomials given lowest degree
    first, for writing continuous extensions in the factored form papers use. The
    product must vanish at θ = 0."""
    poly = np.array([1.0])
    for factor in factors:
        poly = np.polynomial.polynomial.polymul(poly, np.asarray(factor, float))
    if abs(poly[0]) > 1e-14:
        raise ValueError("a continuous-extension weight must vanish at θ = 0.")
    return poly[1:]
