"""Bad inputs at every user boundary: each case of ``bad_inputs_cases.CASES`` raises its error with
a clear message, and none of them touches a finished run."""

import pytest
from bad_inputs_cases import CASES, UNCLEAR, message_of
from bad_inputs_harness import LIB_STEPS, Ctx, FinishedRuns, lib_train, tree_hashes


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return FinishedRuns(str(tmp_path_factory.mktemp("finished")))


def test_the_table_is_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 24
    assert {c.area for c in CASES} == {"cli", "data", "library"}
    assert all((c.code is not None) == (c.area == "cli") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_a_clear_error(case, tmp_path, runs):
    if case.needs:
        pytest.importorskip(case.needs)
    with pytest.raises(case.exc, match=case.match) as info:
        case.trigger(Ctx(str(tmp_path), runs))
    if case.code is not None:
        assert info.value.code == case.code, info.value.stderr
        assert "Traceback" not in info.value.stderr
    msg = message_of(info.value)
    assert not any(s in msg for s in UNCLEAR), msg


def test_bad_inputs_leave_a_finished_run_untouched(runs, tmp_path):
    runs.toy2d  # noqa: B018  (made here if no case above made it)
    for i, case in enumerate(c for c in CASES if c.uses_run):
        scratch = tmp_path / str(i)
        scratch.mkdir()
        with pytest.raises(case.exc):
            case.trigger(Ctx(str(scratch), runs))
    # hashed right after the runs finished: the cases above and in the table ran since
    after = tree_hashes(runs.base)
    assert sorted(after) == sorted(runs.hashes), "files were added or removed"
    changed = [p for p in after if after[p] != runs.hashes[p]]
    assert not changed, f"bad inputs modified {changed}"
    # and the runs still resume: the library run finds its last step and has nothing left to do
    summary = lib_train(runs.lib).summary
    assert summary["resumed_from"] == LIB_STEPS and summary["steps_run"] == 0
    assert tree_hashes(runs.base) == runs.hashes
