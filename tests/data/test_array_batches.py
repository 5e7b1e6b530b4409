"""data.array_batches: in-memory batches, on-device index batches and several members' batches, their positions
saved and restored, each process's share of the global batch."""

import json

import numpy as np
import pytest

from robust_jax.data.array_batches import ArrayBatches, IndexBatches, MemberBatches


def test_array_batches_resume_and_process_split():
    arrays = {"x": np.arange(50), "y": np.arange(50) * 10}
    whole = ArrayBatches(arrays, batch_size=8, seed=3)
    reference = [next(whole)["x"] for _ in range(20)]
    # Every epoch is a permutation; the partial batch at the end of an epoch is dropped.
    epoch0 = np.concatenate(reference[:6])
    assert len(set(epoch0.tolist())) == 48
    resumed = ArrayBatches(arrays, batch_size=8, seed=3)
    for _ in range(7):
        next(resumed)
    state = json.loads(json.dumps(resumed.get_state()))
    fresh = ArrayBatches(arrays, batch_size=8, seed=3)
    fresh.set_state(state)
    for expected in reference[7:]:
        np.testing.assert_array_equal(next(fresh)["x"], expected)
    halves = [ArrayBatches(arrays, batch_size=8, seed=3, process_index=i, process_count=2) for i in range(2)]
    for expected in reference:
        np.testing.assert_array_equal(np.concatenate([next(h)["x"] for h in halves]), expected)
    with pytest.raises(ValueError, match="batch_size=7 must be divisible by the process count"):
        ArrayBatches(arrays, batch_size=7, seed=0, process_count=2)


def test_index_batches_cover_consecutive_indices_and_resume():
    whole = IndexBatches(batch_size=6)
    assert [next(whole)["index"].tolist() for _ in range(2)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    halves = [IndexBatches(batch_size=6, process_index=i, process_count=2) for i in range(2)]
    for h in halves:
        h.set_state({"step": 2})
    assert np.concatenate([next(h)["index"] for h in halves]).tolist() == list(range(12, 18))


def test_member_batches_stack_each_members_batch_and_resume():
    members = [{"x": np.arange(20) + 100 * m} for m in range(3)]

    def make():
        return MemberBatches([ArrayBatches(arrays, batch_size=4, seed=m) for m, arrays in enumerate(members)])

    stacked = make()
    alone = [ArrayBatches(arrays, batch_size=4, seed=m) for m, arrays in enumerate(members)]
    for _ in range(7):
        batch = next(stacked)["x"]
        assert batch.shape == (4, 3)  # the example axis first, then the member
        for m in range(3):
            np.testing.assert_array_equal(batch[:, m], next(alone[m])["x"])
    state = json.loads(json.dumps(stacked.get_state()))
    resumed = make()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["x"], next(stacked)["x"])
    with pytest.raises(ValueError, match="a position of 3 members for 2 members"):
        MemberBatches(resumed.members[:2]).set_state(state)
