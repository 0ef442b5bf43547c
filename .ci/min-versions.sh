#!/usr/bin/env bash
# The oldest supported versions: in a separate virtual environment, install exactly
# the lower bounds that pyproject.toml declares (.ci/min-versions.txt), the project
# without its dependencies, and run a fast subset of the tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
# The test tools the subset needs (scipy: tests/helpers.py's exact solutions).
"$py" -m pip install --quiet --disable-pip-version-check \
    -r .ci/min-versions.txt "pytest>=8" pytest-xdist scipy
"$py" -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "min-versions: $("$py" -m pip list --format=freeze \
    | grep -iE '^(jax|jaxlib|equinox|jaxtyping|lineax|optax|numpy|diffrax)==' | tr '\n' ' ')"
# The subset (two to three minutes on two cores; no Diffrax, whose comparisons are the
# slow part of the suite): validation, solving and its gradients (implicit steps'
# custom derivative rules among them), two continuous
# adjoints' backward passes, closed-over parameters and Equinox modules as
# args (closure conversion), progress meters, training with optax (its float64
# data needs the enable_x64 shim), the README's and the training guide's code.
# Name only tests of the default selection: pyproject's -m 'not slow' applies
# here too and would deselect the others without a word.
# --basetemp keeps the tests' files in the scratch folder.
harness=tests/test_harness.py::test_continuous_backward_evaluations_equal_the_backward_statistics
"$py" -m pytest -p no:cacheprovider --basetemp "$scratch/pytest" \
    tests/test_min_versions.py \
    tests/test_errors.py \
    tests/test_solve.py \
    "tests/test_implicit.py::test_stiff_linear_system_meets_tolerance_in_few_steps" \
    tests/test_implicit.py::test_failed_newton_step_is_rejected_and_retried_shorter \
    "tests/test_implicit.py::test_direct_and_checkpointed_agree_through_implicit_steps[rodas5]" \
    tests/test_implicit.py::test_rosenbrock_step_rule_equals_differentiating_its_computation \
    tests/test_implicit.py::test_forward_mode_through_rosenbrock_steps \
    tests/test_implicit.py::test_forward_mode_through_esdirk_steps_equals_reverse_mode \
    "tests/test_reliability.py::test_second_derivatives_through_esdirk_stages[kvaerno5]" \
    "tests/test_reliability.py::test_eager_grad_of_a_closed_over_python_float[binomial-constant]" \
    tests/test_implicit.py::test_esdirk_pullbacks_share_the_steps_factorisation \
    "$harness[adaptive-backsolve]" \
    "tests/test_idioms.py::test_closed_over_array_gets_the_gradient_it_gets_through_args[binomial-adaptive]" \
    "tests/test_idioms.py::test_equinox_modules_as_args_and_as_closures[direct-adaptive]" \
    "tests/test_idioms.py::test_scalar_state_made_inside_jit[backsolve]" \
    "$harness[constant-quadrature]" \
    tests/test_progress.py \
    tests/test_train.py::test_train_without_rich_or_matplotlib \
    tests/test_docs.py -k "not test_code_block_runs or README or training"
echo "min-versions: done in $((SECONDS - start)) s"
