"""The measuring harness shared by `adjointkit compare` and `benchmarks/`."""

from ._measure import (
    count_f_evals as count_f_evals,
    device_peak_bytes as device_peak_bytes,
    temp_bytes as temp_bytes,
    time_call as time_call,
)
from ._problems import (
    PROBLEMS as PROBLEMS,
    BenchProblem as BenchProblem,
    lotka_volterra as lotka_volterra,
    neural_ode as neural_ode,
    robertson as robertson,
    stiff_neural_ode as stiff_neural_ode,
    van_der_pol as van_der_pol,
)
from ._reference import sensitivity_grad as sensitivity_grad, tight_grad as tight_grad
from ._report import (
    problem_size as problem_size,
    processor_name as processor_name,
    ratio_lines as ratio_lines,
    run_metadata as run_metadata,
    write_results as write_results,
)
from ._runners import (
    adjointkit_loss as adjointkit_loss,
    adjointkit_solve as adjointkit_solve,
    diffrax_default_checkpoints as diffrax_default_checkpoints,
    diffrax_loss as diffrax_loss,
    diffrax_solve as diffrax_solve,
)
from ._spiral import Spiral as Spiral, spiral as spiral
