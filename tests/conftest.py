"""Tests run in float64 unless a test asks for float32 explicitly.

pytest runs two worker processes (see pyproject's addopts); on a GPU machine each
would otherwise preallocate most of the device memory.
"""

import os


os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)


# Tests moved from the default run to the on-demand set (`-m slow`) to keep the
# default suite inside its budget of 10 minutes on two cores. Each is a variant
# of a path another default test covers, named in the comment.
_ON_DEMAND = {
    # backward-in-time continuous gradients: backsolve-backward stays (the one
    # adjoint that re-solves the primal backward).
    "test_continuous_adjoints.py::test_matches_the_continuous_gradient_to_the_tolerance[interpolated-dense-backward]",  # noqa: E501
    "test_continuous_adjoints.py::test_matches_the_continuous_gradient_to_the_tolerance[interpolated-dense-every-3-backward]",  # noqa: E501
    "test_continuous_adjoints.py::test_matches_the_continuous_gradient_to_the_tolerance[quadrature-dense-backward]",  # noqa: E501
    # Hermite error: the interpolated variant stays; the quadrature shares it.
    "test_continuous_adjoints.py::test_hermite_interpolation_adds_its_own_error[quadrature-hermite-every-4]",  # noqa: E501
    # seminorm: test_seminorm_can_miss_a_fast_parameter_integrand stays.
    "test_continuous_adjoints.py::test_seminorm_saves_backward_steps_at_equal_accuracy",
    # replay counts: adaptive-interpolated and constant-quadrature stay.
    "test_harness.py::test_continuous_backward_evaluations_equal_the_backward_statistics[adaptive-quadrature]",  # noqa: E501
    # forward mode: test_jvp_equals_gradient_dot_tangent stays.
    "test_direct_adjoint.py::test_jacfwd_equals_jacrev",
    # DirectAdjoint adaptive: equality to AllSteps (1e-12) stays; this is its
    # convergence to the continuous sensitivities as rtol shrinks.
    "test_direct_adjoint.py::test_adaptive_gradients_converge_to_the_continuous_sensitivities",  # noqa: E501
    # central differences: the forward-in-time case stays.
    "test_direct_adjoint.py::test_gradients_match_central_differences[backward]",
    # backward in time vs DirectAdjoint: the adaptive cases stay.
    "test_checkpointed_adjoint.py::test_equals_direct_adjoint_backward_in_time[BinomialCheckpoints(num_checkpoints=3)-constant]",  # noqa: E501
    "test_checkpointed_adjoint.py::test_equals_direct_adjoint_backward_in_time[AllSteps()-constant]",  # noqa: E501
    # vmap: test_vmap_of_adaptive_solves_gives_per_example_gradients stays.
    "test_checkpointed_adjoint.py::test_vmap_gives_per_example_gradients",
    # the runtime step count: known-N and adaptive AllSteps stay, and the
    # property test draws runtime counts.
    "test_checkpointed_adjoint.py::test_equals_direct_adjoint[AllSteps()-constant-runtime-N]",  # noqa: E501
    # idioms: direct-adaptive and the constant cases stay.
    "test_idioms.py::test_equinox_modules_as_args_and_as_closures[quadrature-adaptive]",
    # closures under PID: binomial-adaptive (the same online checkpoints) stays.
    "test_idioms.py::test_closed_over_array_gets_the_gradient_it_gets_through_args[everyk-adaptive]",  # noqa: E501
    # training on four devices: single-device training and resume stay.
    "test_train.py::test_sharded_over_four_devices_matches_one",
    # the spiral Neural ODE example trains for a while; the other examples stay.
    "test_examples.py::test_spiral_neural_ode",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        name = item.nodeid.split("tests/", 1)[-1]
        if name in _ON_DEMAND:
            item.add_marker(pytest.mark.slow)
