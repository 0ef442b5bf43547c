"""`adjointkit train`: it learns, resumes exactly, shards over devices, and refuses
bad arguments clearly.

Runs are tiny (short windows, a narrow MLP, a few steps) so that each compiles in
seconds; within one process, runs with equal settings reuse the compiled step.
"""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

from adjointkit.cli import _train, main


def _no_work(*args, **kwargs):
    raise AssertionError("train started its work before the check under test")


TINY = ["--window", "10", "--width", "16", "--batch-size", "8", "--lr", "1e-2"]


def _checkpoint(path):
    """`(header, arrays)` of a checkpoint, arrays as NumPy, in a fixed order."""
    like = _train.SpiralField(16, key=jax.random.PRNGKey(0))
    like = (like, _train._optimiser(1e-2).init(eqx.filter(like, eqx.is_array)))
    header, tree = _train._read_checkpoint(path, like)
    arrays = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    return header, arrays


def test_train_lowers_the_loss(tmp_path, capsys):
    code = main(["train", *TINY, "--steps", "10", "--out", str(tmp_path)])
    assert code == 0
    assert "->" in capsys.readouterr().out
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["steps"] == 10 and len(summary["losses"]) == 10
    # The loss over every window of the data set, before and after: ten Adam steps
    # take it down by about a fifth here (a broken gradient would not).
    assert summary["final_loss"] < 0.9 * summary["initial_loss"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, arrays = _checkpoint(tmp_path / "checkpoints" / "checkpoint.eqx")
    assert header["step"] == 10 and header["losses"] == summary["losses"]
    params = [a for a in arrays if a.dtype.kind == "f"]
    assert params and all(a.dtype == np.float32 for a in params)
    # No temporary file left behind by the atomic write.
    assert os.listdir(tmp_path / "checkpoints") == ["checkpoint.eqx"]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    common = ["train", *TINY, "--steps", "10", "--checkpoint-every", "4"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main([*common, "--out", str(straight)]) == 0

    # Interrupt the second run during its 7th step, as Ctrl-C would: the last
    # checkpoint is then the one of step 4, and steps 5-6 are lost.
    real_step, calls = _train._train_step, []

    def interrupted_step(*args, **kwargs):
        calls.append(None)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(_train, "_train_step", interrupted_step)
    # --resume with nothing to resume from starts afresh, and says so.
    assert main([*common, "--out", str(broken), "--resume"]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "starting at step 0" in err
    assert "interrupted at step 6" in err and "checkpoint is at step 4" in err
    monkeypatch.setattr(_train, "_train_step", real_step)

    assert main([*common, "--out", str(broken), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "at step 4" in err

    header_a, arrays_a = _checkpoint(straight / "checkpoints" / "checkpoint.eqx")
    header_b, arrays_b = _checkpoint(broken / "checkpoints" / "checkpoint.eqx")
    assert header_a["step"] == header_b["step"] == 10
    assert header_a["losses"] == header_b["losses"]
    assert len(arrays_a) == len(arrays_b)
    for a, b in zip(arrays_a, arrays_b, strict=True):  # bit for bit
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()

    # Interrupted before its first checkpoint, a run says there is none.
    calls.clear()
    monkeypatch.setattr(_train, "_train_step", interrupted_step)
    assert main([*common, "--checkpoint-every", "8", "--out", str(tmp_path)]) == 130
    assert "no checkpoint was written" in capsys.readouterr().err
    monkeypatch.setattr(_train, "_train_step", real_step)

    # Settings that change the run's course cannot be resumed.
    assert main([*common, "--out", str(broken), "--resume", "--lr", "0.02"]) == 2
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.slow  # single-device training and resuming run by default
def test_sharded_over_four_devices_matches_one(tmp_path):
    """Data parallel: the same steps on 4 CPU devices as on 1. Only the order of
    the sums over the batch (the loss, the gradients) differs, so the losses agree
    to float32 rounding (eps 1.2e-7, a few ulp per step, carried by Adam through
    a few steps), far below what a wrong shard or a missing reduction would
    change."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("JAX_ENABLE_X64", None)  # float32, as a user runs it
    runs = {}
    for n in (1, 4):
        out = tmp_path / f"devices{n}"
        argv = [*TINY, "--steps", "5", "--devices", str(n), "--out", str(out)]
        runs[n] = (
            out,
            subprocess.Popen(
                [sys.executable, "-m", "adjointkit.cli._main", "train", *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    results = {}
    for n, (out, proc) in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results[n] = json.loads((out / "train.json").read_text())
    assert results[4]["devices"] == 4 and results[1]["devices"] == 1
    np.testing.assert_allclose(results[4]["losses"], results[1]["losses"], rtol=1e-5)
    np.testing.assert_allclose(
        results[4]["final_loss"], results[1]["final_loss"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adjoint", "nonsense"], "unknown adjoint 'nonsense'; available"),
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--window", "1"], "--window must be an integer >= 2"),
        (["--window", "5000"], "window must be in [2, num_times=1000]"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
        (["--devices", "4", "--batch-size", "6"], "must be a multiple of --devices"),
        (["--devices", "512", "--batch-size", "512"], "device(s) are available"),
        (["--batch-size", "5000"], "at most the 961 windows"),
    ],
)
def test_train_rejects_bad_arguments(argv, message, capsys, tmp_path):
    assert main(["train", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adjointkit train: ") and message in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_checks_its_folders_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_train, "_eval_loss", _no_work)
    monkeypatch.setattr(_train, "_train_step", _no_work)
    blocker, writable = tmp_path / "a-file", tmp_path / "writable"
    blocker.write_text("")
    for folder, message in [
        (blocker, "exists and is not a folder"),
        (blocker / "sub", f"cannot be created: {blocker} is not a folder"),
    ]:
        for flags in (
            ["--out", str(folder)],
            ["--out", str(writable), "--checkpoint-dir", str(folder)],
        ):
            before = set(tmp_path.rglob("*"))
            assert main(["train", *TINY, "--steps", "1", *flags]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"adjointkit train: {flags[-2]} {folder}")
            assert message in err and err.count("\n") == 1
            assert set(tmp_path.rglob("*")) == before


def test_resume_with_another_width_names_it(tmp_path, monkeypatch, capsys):
    """A checkpoint of a narrower model: refused in one line naming the width, not
    by the traceback of reading its arrays into the wider model."""
    monkeypatch.setattr(_train, "_eval_loss", _no_work)
    monkeypatch.setattr(_train, "_train_step", _no_work)
    model = _train.SpiralField(16, key=jax.random.PRNGKey(0))
    opt_state = _train._optimiser(1e-2).init(eqx.filter(model, eqx.is_array))
    settings = dict(adjoint="checkpointed", lr=1e-2, batch_size=8, seed=0, window=10)
    header = dict(
        format=_train._CHECKPOINT_FORMAT,
        step=1,
        settings=dict(settings, width=16),
        losses=[0.1],
        initial_loss=0.1,
    )
    checkpoint = tmp_path / "checkpoints" / _train.CHECKPOINT_NAME
    _train._write_checkpoint(checkpoint, header, (model, opt_state))
    argv = ["train", *TINY, "--steps", "2", "--out", str(tmp_path), "--resume"]
    assert TINY[TINY.index("--width") + 1] == "16"

    wider = [*argv, "--width", "32"]  # the last --width counts
    assert main(wider) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adjointkit train: cannot resume {checkpoint}")
    assert "--width was 16, now 32" in err and err.count("\n") == 1

    # A damaged file (cut short): one line too, whatever the settings.
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adjointkit train: {checkpoint} cannot be read")
    assert err.count("\n") == 1
    checkpoint.write_bytes(b"\x00" * 64)
    assert main(argv) == 2
    assert "is not an adjointkit train checkpoint" in capsys.readouterr().err


def test_train_without_rich_or_matplotlib(tmp_path, monkeypatch, capsys):
    for name in ["rich", "rich.console", "rich.progress", "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    assert main(["train", *TINY, "--steps", "4", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "rich is not installed" in err and "step 4/4" in err
    assert "matplotlib is not installed" in err
    assert (tmp_path / "train.json").exists() and not (tmp_path / "loss.png").exists()


@pytest.mark.slow
def test_two_processes_with_jax_distributed(tmp_path):
    """Multi-host data parallelism, on one machine: two processes of 2 CPU devices
    each (`--distributed`, cross-process collectives over Gloo) train as one mesh of
    4 and match one process of 4 devices to float32 rounding."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [*TINY, "--steps", "3", "--devices", "4"]
    cmd = [sys.executable, "-m", "adjointkit.cli._main", "train", *argv]
    base = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [*cmd, "--distributed", "--out", str(tmp_path / "multi")],
            env=dict(
                base,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    single = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    subprocess.run([*cmd, "--out", str(tmp_path / "single")], env=single, check=True)
    multi = json.loads((tmp_path / "multi" / "train.json").read_text())
    one = json.loads((tmp_path / "single" / "train.json").read_text())
    assert multi["processes"] == 2 and one["processes"] == 1
    np.testing.assert_allclose(multi["losses"], one["losses"], rtol=1e-5)


def test_progress_bar_shows_the_adjoint_in_brackets(monkeypatch, capsys):
    # Rich reads "[checkpointed]" as markup and would drop it, leaving "train ".
    pytest.importorskip("rich")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.setenv(name, "1")  # stderr taken for a terminal: the bar
    with _train._Progress(0, 2, "checkpointed", enabled=True) as progress:
        progress.update(1, 0.5)
        progress.update(2, 0.25)
    assert "train [checkpointed]" in capsys.readouterr().err


def test_train_logs_the_loss_where_stderr_is_not_a_terminal(monkeypatch, capsys):
    """In a file or a CI log a progress bar shows nothing till the end: a line
    every tenth of the run instead, as it goes."""
    pytest.importorskip("rich")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    with _train._Progress(0, 20, "checkpointed", enabled=True) as progress:
        for step in range(1, 5):
            progress.update(step, 1.0 / step)
        assert capsys.readouterr().err == (
            "  step 2/20  loss 5.000e-01\n  step 4/20  loss 2.500e-01\n"
        )
