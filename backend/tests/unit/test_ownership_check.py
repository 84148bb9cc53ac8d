import pytest

from archiver.flows import cancellation
from archiver.flows.cancellation import OwnershipCheck, RunCancelled, RunNotOwned


@pytest.mark.parametrize("verdict", [RunNotOwned("flow run a is Crashed"), RunCancelled("flow run a is cancelling")])
def test_once_a_run_must_stop_every_later_check_says_so(monkeypatch, verdict):
    """The datablocks of a dataset are written in parallel, each after a check: the first check to learn that
    the run must stop may not be the last to pass, so the verdict stays (Prefect's answer is not asked again)."""
    answers = [verdict]

    def prefect_says():
        if answers:
            raise answers.pop()

    monkeypatch.setattr(cancellation, "raise_if_cancelled", prefect_says)
    check = OwnershipCheck(interval_s=0)
    for _ in range(3):
        with pytest.raises(type(verdict), match="flow run a is"):
            check()


def test_checks_within_the_interval_do_not_ask_prefect(monkeypatch):
    asked = []
    monkeypatch.setattr(cancellation, "raise_if_cancelled", lambda: asked.append(1))
    check = OwnershipCheck(interval_s=3600)
    for _ in range(5):
        check()
    assert asked == []
