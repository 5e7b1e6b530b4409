"""The one train loop (`core.train`) on a toy problem whose every iterate is known in closed form.

The toy: parameters w (a vector), every example is the same point c, loss 0.5 * mean_i ||w - x_i||². Its gradient is
w - c, so plain SGD at rate lr gives w_n = c + (1 - lr)^n (w_0 - c) exactly (up to float rounding), whatever the batch
split, the device count or the micro-batching.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_jax.core.mesh import make_data_mesh
from robust_jax.core.train import (
    Evaluation,
    NonFiniteLossError,
    TrainLoopConfig,
    Training,
    drive,
    restore,
    restore_state,
    train,
)
from robust_jax.data.array_batches import ArrayBatches, MemberBatches

DIM = 16
CENTRE = np.linspace(-1.0, 1.0, DIM).astype(np.float32)
START = np.full(DIM, 3.0, np.float32)


def quadratic_loss(params, model_state, batch, key, step, constants):
    del key, constants
    residual = params["w"][None, :] - batch["x"]
    loss = 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))
    return loss, ({"step_seen": step.astype(jnp.float32)}, model_state)


def toy(name="toy", *, steps=10, lr=0.1, optimizer=None, nan_from=None, distinct=False, **fields) -> Training:
    """A Training of the toy problem; nan_from: the loss is NaN from that step on; distinct: every example a
    different point (then the iterates depend on which examples each batch holds)."""
    loss_fn = quadratic_loss
    if nan_from is not None:
        def loss_fn(params, model_state, batch, key, step, constants):
            loss, aux = quadratic_loss(params, model_state, batch, key, step, constants)
            return jnp.where(step >= nan_from, jnp.nan, loss), aux
    data = {"x": np.tile(CENTRE, (64, 1)) + (np.arange(64, dtype=np.float32)[:, None] if distinct else 0.0)}
    loop = fields.pop("loop", TrainLoopConfig(num_steps=steps, log_every=1, checkpoint_every=5, keep_checkpoints=10,
                                              async_checkpoints=False))
    return Training(name=name, init_fn=lambda key: ({"w": jnp.asarray(START)}, {}), loss_fn=loss_fn,
                    optimizer=optimizer or optax.sgd(lr), loop=loop,
                    batches=lambda: ArrayBatches(data, batch_size=8, seed=0), **fields)


def closed_form(steps: int, lr: float = 0.1) -> np.ndarray:
    return CENTRE + (1 - lr) ** steps * (START - CENTRE)


def history(workdir, name="toy") -> list[dict]:
    from robust_jax.core.run import read_history

    return read_history(f"{workdir}/{name}/metrics.jsonl")


def test_sgd_iterates_follow_the_closed_form_and_the_step_reaches_the_loss(tmp_path):
    result = train(toy(steps=10), str(tmp_path))
    np.testing.assert_allclose(np.asarray(result.state.params["w"]), closed_form(10), rtol=1e-6)
    rows = history(tmp_path)
    assert [row["step"] for row in rows] == list(range(1, 11))
    assert [row["step_seen"] for row in rows] == list(range(10))  # the loss sees the step number
    for n, row in enumerate(rows):  # the logged loss of step n is computed at w_n
        assert row["loss"] == pytest.approx(0.5 * np.sum((closed_form(n) - CENTRE) ** 2), rel=1e-5)


def test_resume_continues_bit_for_bit(tmp_path):
    """A run stopped at step 5 and started again equals a run never stopped: parameters, optimizer state (momentum)
    and every logged loss, bit for bit (the examples differ, so the data position must resume too)."""
    momentum = optax.sgd(0.05, momentum=0.9)
    straight = train(toy("straight", steps=12, optimizer=momentum, distinct=True), str(tmp_path))
    first = toy("resumed", steps=5, optimizer=momentum, distinct=True)
    train(first, str(tmp_path))
    assert restore(first, str(tmp_path)).state.step == 5
    resumed = train(toy("resumed", steps=12, optimizer=momentum, distinct=True), str(tmp_path))
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert history(tmp_path, "straight") == history(tmp_path, "resumed")


class _Interrupted(Exception):
    pass


def test_a_run_interrupted_inside_a_log_window_logs_the_same_means(tmp_path):
    """Logged every 4 steps, checkpointed every 3: a run that dies at step 5 resumes from step 3 and still logs, at
    step 4, the mean over steps 1-4 (the window's running sums travel with the checkpoint), bit for bit."""
    loop = TrainLoopConfig(num_steps=12, log_every=4, checkpoint_every=3, keep_checkpoints=10,
                           async_checkpoints=False)
    straight = train(toy("straight", loop=loop, distinct=True), str(tmp_path))
    dying = toy("resumed", loop=loop, distinct=True)
    make_batches = dying.batches

    def batches_that_die_at_the_fifth():
        batches = make_batches()
        original_next, calls = batches.__next__, [0]

        class Dying(type(batches)):
            def __next__(self):
                calls[0] += 1
                if calls[0] == 5:
                    raise _Interrupted
                return original_next()

        batches.__class__ = Dying
        return batches

    with pytest.raises(_Interrupted):
        train(dataclasses.replace(dying, batches=batches_that_die_at_the_fifth), str(tmp_path))
    assert restore(dying, str(tmp_path)).state.step == 3
    resumed = train(dying, str(tmp_path))
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = history(tmp_path, "resumed")
    assert [row["step"] for row in rows] == [4, 8, 12]
    assert rows == history(tmp_path, "straight")
    # the step-4 row is the mean of the steps 0-3 the loss function saw
    assert rows[0]["step_seen"] == 1.5


def test_restore_reads_parameters_only_and_restore_state_everything(tmp_path):
    training = toy(steps=7, optimizer=optax.adam(0.1))
    trained = train(training, str(tmp_path))
    params_only = restore(training, str(tmp_path))
    assert params_only.state.opt_state is None and params_only.state.step == 7
    np.testing.assert_array_equal(params_only.state.params["w"], np.asarray(trained.state.params["w"]))
    full = restore_state(training, str(tmp_path))
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(trained.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError):
        restore(toy("never_trained"), str(tmp_path))


def _scripted_evaluation(scores, **options) -> Evaluation:
    """An evaluation every 2 steps whose k-th result is scores[k - 1] (higher is better)."""
    return Evaluation(every=2, fn=lambda state, mesh: {"score": scores[int(state.step) // 2 - 1]},
                      better=lambda new, best: new["score"] > best["score"], **options)


def test_early_stopping_keeps_the_best_evaluation_and_its_parameters(tmp_path):
    # Best at the 2nd evaluation (step 4); patience 2 stops after the 4th (step 8), before the 20 steps.
    evaluation = _scripted_evaluation([0.1, 0.5, 0.3, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], patience=2,
                                      keep_best_params=True)
    training = toy(steps=20, evaluation=evaluation)
    result = train(training, str(tmp_path))
    assert result.stopped_early and result.evaluations == 4 and int(result.state.step) == 8
    assert result.best == {"step": 4, "metrics": {"score": 0.5}}
    np.testing.assert_allclose(np.asarray(result.best_params["w"]), closed_form(4), rtol=1e-6)
    assert [row["score"] for row in history(tmp_path) if "score" in row] == [0.1, 0.5, 0.3, 0.2]
    # Started again, a stopped run trains no further, and restore gives back its best parameters.
    again = train(training, str(tmp_path))
    assert int(again.state.step) == 8 and again.best == result.best
    np.testing.assert_array_equal(restore(training, str(tmp_path)).best_params["w"], np.asarray(result.best_params["w"]))


def test_patience_waits_for_the_start(tmp_path):
    evaluation = _scripted_evaluation([0.9, 0.1, 0.1, 0.1, 0.1, 0.1], patience=1, start=4)
    result = train(toy(steps=12, evaluation=evaluation), str(tmp_path))
    assert result.stopped_early and result.evaluations == 4 and result.best["step"] == 2


def test_a_non_finite_loss_raises_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 7") as raised:
        train(toy(steps=10, nan_from=7), str(tmp_path))
    assert raised.value.step == 7 and raised.value.checkpoint_step == 5
    kept = restore(toy(), str(tmp_path))
    assert kept.state.step == 5
    np.testing.assert_allclose(kept.state.params["w"], closed_form(5), rtol=1e-6)


def test_on_non_finite_stop_ends_the_run_as_an_outcome(tmp_path):
    result = train(toy(steps=10, nan_from=7, on_non_finite="stop"), str(tmp_path))
    assert result.diverged_at_step == 7
    assert restore(toy(), str(tmp_path)).state.step == 5  # no checkpoint is written from a non-finite state
    rows = history(tmp_path)  # the diverging step's loss is logged, and nothing after it
    assert rows[-1]["step"] == 8 and math.isnan(rows[-1]["loss"])
    assert all(math.isfinite(row["loss"]) for row in rows[:-1])


@pytest.mark.parametrize("micro_batch_size", [1, 2, 4])
def test_micro_batches_give_the_whole_batch_gradient(tmp_path, micro_batch_size):
    loop = TrainLoopConfig(num_steps=6, log_every=1, checkpoint_every=6, micro_batch_size=micro_batch_size,
                           async_checkpoints=False)
    result = train(toy(loop=loop), str(tmp_path))
    np.testing.assert_allclose(np.asarray(result.state.params["w"]), closed_form(6), rtol=1e-6)


def test_fsdp_shards_the_parameters_and_changes_nothing_else(tmp_path):
    assert jax.device_count() == 8
    mesh = make_data_mesh()
    loop = TrainLoopConfig(num_steps=6, log_every=1, checkpoint_every=6, fsdp_min_size=DIM, async_checkpoints=False)
    result = train(toy(loop=loop, optimizer=optax.adam(0.1)), str(tmp_path / "fsdp"), mesh=mesh)
    assert tuple(result.state.params["w"].sharding.spec) == ("data",)
    assert tuple(result.state.opt_state[0].mu["w"].sharding.spec) == ("data",)
    replicated = train(toy(steps=6, optimizer=optax.adam(0.1)), str(tmp_path / "replicated"), mesh=mesh)
    np.testing.assert_allclose(np.asarray(result.state.params["w"]), np.asarray(replicated.state.params["w"]),
                               rtol=1e-6)


def test_drive_sends_each_result_back_and_stops_where_asked(tmp_path):
    def declared():
        first = yield toy("first", steps=3)
        # The second training starts from the first one's parameters: 3 + 4 steps of the same SGD.
        yield Training(
            name="second", init_fn=lambda key: ({"w": jnp.asarray(first.state.params["w"])}, {}),
            loss_fn=quadratic_loss, optimizer=optax.sgd(0.1), loop=toy(steps=4).loop, batches=toy().batches)
        yield toy("third", steps=2)

    trained = drive(declared(), lambda training: train(training, str(tmp_path)))
    assert list(trained) == ["first", "second", "third"]
    np.testing.assert_allclose(np.asarray(trained["second"][1].state.params["w"]), closed_form(7), rtol=1e-6)
    # restoring walks the same declaration and stops at the first training that has no checkpoint
    (tmp_path / "third").rename(tmp_path / "elsewhere")
    restored = drive(declared(), lambda t: restore(t, str(tmp_path)) if (tmp_path / t.name).exists() else None)
    assert list(restored) == ["first", "second"]
    np.testing.assert_array_equal(restored["second"][1].state.params["w"],
                                  np.asarray(trained["second"][1].state.params["w"]))

    def twice():
        yield toy("same", steps=1)
        yield toy("same", steps=1)

    with pytest.raises(ValueError, match="two trainings are named 'same'"):
        drive(twice(), lambda training: train(training, str(tmp_path)))


@pytest.mark.parametrize("name", ["", "/abs", "a/../b"])
def test_training_names_are_folders_inside_the_workdir(name):
    with pytest.raises(ValueError, match="relative folder"):
        toy(name)


# ---------------------------------------------------------------------------------------------------- members
# Three toy models trained as one program: member m's examples are all the point CENTRE + m, its initial point START.
MEMBERS = 3


def member_batches():
    return MemberBatches([ArrayBatches({"x": np.tile(CENTRE + m, (64, 1)).astype(np.float32)}, batch_size=8, seed=m)
                          for m in range(MEMBERS)])


def member_toy(name="members", *, steps=10, nan_member=None, nan_from=None, **fields) -> Training:
    def loss_fn(params, model_state, batch, keys, step, constants):
        def one(w, x):
            return 0.5 * jnp.mean(jnp.sum((w[None, :] - x) ** 2, axis=-1))

        losses = jax.vmap(one, in_axes=(0, 1))(params["w"], batch["x"])
        if nan_member is not None:
            losses = losses.at[nan_member].set(jnp.where(step >= nan_from, jnp.nan, losses[nan_member]))
        return losses, ({"keys_differ": (keys[0] != keys[1]).astype(jnp.float32) * jnp.ones(MEMBERS)}, model_state)

    keys = (jax.random.split(jax.random.key(0), MEMBERS), jax.random.split(jax.random.key(1), MEMBERS))
    loop = TrainLoopConfig(num_steps=steps, log_every=1, checkpoint_every=5, keep_checkpoints=10,
                           async_checkpoints=False)
    return Training(name=name, init_fn=lambda keys: ({"w": jnp.tile(jnp.asarray(START), (MEMBERS, 1))}, {}),
                    loss_fn=loss_fn, optimizer=optax.sgd(0.1), loop=loop, batches=member_batches, keys=keys,
                    members=MEMBERS, **fields)


def member_closed_form(steps: int, m: int) -> np.ndarray:
    return CENTRE + m + 0.9**steps * (START - CENTRE - m)


def test_members_train_independently_each_to_its_closed_form(tmp_path):
    result = train(member_toy(), str(tmp_path))
    for m in range(MEMBERS):
        np.testing.assert_allclose(np.asarray(result.state.params["w"][m]), member_closed_form(10, m), rtol=1e-6)
    rows = history(tmp_path, "members")
    assert len(rows[0]["loss"]) == MEMBERS and rows[0]["keys_differ"] == [1.0] * MEMBERS  # one key per member
    for n, row in enumerate(rows):
        for m in range(MEMBERS):
            assert row["loss"][m] == pytest.approx(0.5 * np.sum((member_closed_form(n, m) - CENTRE - m) ** 2),
                                                   rel=1e-5)


def test_a_diverging_member_stops_alone_and_the_others_train_on(tmp_path):
    result = train(member_toy(nan_member=1, nan_from=4, on_non_finite="stop"), str(tmp_path))
    assert result.diverged_at_step == [None, 4, None]
    for m in (0, 2):
        np.testing.assert_allclose(np.asarray(result.state.params["w"][m]), member_closed_form(10, m), rtol=1e-6)
    # checkpoints go on being written (the diverged member's parameters with them) and resume bit for bit
    restored = restore(member_toy(), str(tmp_path))
    assert restored.state.step == 10
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        train(member_toy("raising", nan_member=1, nan_from=4), str(tmp_path))


def test_members_stop_early_on_their_own(tmp_path):
    # Member m's k-th evaluation scores[m][k - 1]: member 0 peaks at the 1st, member 1 at the 3rd, member 2 never
    # stops; patience 2 (member 1 runs out of it at the 5th, the last).
    scores = np.array([[0.9, 0.1, 0.1, 0.1, 0.1], [0.1, 0.2, 0.9, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])
    evaluation = Evaluation(every=2, fn=lambda state, mesh: {"score": scores[:, int(state.step) // 2 - 1]},
                            better=lambda new, best: new["score"] > best["score"], patience=2,
                            keep_best_params=True)
    result = train(member_toy(evaluation=evaluation), str(tmp_path))
    assert [best["step"] for best in result.best] == [2, 6, 10]
    assert result.stopped_at_step == [6, 10, None] and not result.stopped_early
    for m, step in enumerate((2, 6, 10)):
        np.testing.assert_allclose(np.asarray(result.best_params["w"][m]), member_closed_form(step, m), rtol=1e-6)
    rows = [row for row in history(tmp_path, "members") if "score" in row]
    assert [row["score"] for row in rows] == scores.T.tolist()


def test_members_resume_bit_for_bit(tmp_path):
    straight = train(member_toy("straight", steps=12), str(tmp_path))
    train(member_toy("resumed", steps=5), str(tmp_path))
    resumed = train(member_toy("resumed", steps=12), str(tmp_path))
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert history(tmp_path, "straight") == history(tmp_path, "resumed")


def test_members_need_keys_and_whole_batches():
    with pytest.raises(ValueError, match="needs keys"):
        Training(name="m", init_fn=None, loss_fn=None, optimizer=optax.sgd(0.1), loop=TrainLoopConfig(num_steps=1),
                 batches=member_batches, members=2)
    with pytest.raises(ValueError, match="micro-batches"):
        Training(
            name="m", init_fn=None, loss_fn=None, optimizer=optax.sgd(0.1),
            loop=TrainLoopConfig(num_steps=1, micro_batch_size=2), batches=member_batches, members=2,
            keys=(None, None))
