"""The measuring harness shared by `adjointkit compare` and `benchmarks/`."""

from ._measure import temp_bytes as temp_bytes, time_call as time_call
from ._problems import (
    PROBLEMS as PROBLEMS,
    BenchProblem as BenchProblem,
    lotka_volterra as lotka_volterra,
    neural_ode as neural_ode,
)
