"""Action value type: string form round trip and parse errors."""

import pytest

from core.action import Action, Op, format_grid, parse_action


@pytest.mark.parametrize(
    "action, text",
    [
        (Action(2, Op.TF, 0, 3), "2TF3"),
        (Action(0, Op.SF, 1, 0), "0SF0@1"),
        (Action(1, Op.SB, 4, 0, 1), "1SB0.1@4"),
        (Action(0, Op.OPT, 2), "0OPT@2"),
        (Action(3, Op.LOSS, 0), "3LOSS"),
        (Action(3, Op.LOSS, 5, 7), "3LOSS7@5"),
        (Action(1, Op.RECV_SB, 2, 3, 0), "1RECV_SB3.0@2"),
        (Action(0, Op.SEND_TF, 0, 12), "0SEND_TF12"),
    ],
)
def test_string_form_round_trips(action, text):
    assert str(action) == text
    assert parse_action(text) == action


def test_every_op_round_trips():
    for op in Op:
        for micro in (None, 0, 11):
            action = Action(5, op, 3, micro)
            assert parse_action(str(action)) == action


def test_actions_are_hashable_values():
    assert {Action(0, Op.TF, 0, 1), Action(0, Op.TF, 0, 1)} == {Action(0, Op.TF, 0, 1)}
    assert Action(0, Op.TF, 0, 1) != Action(0, Op.TF, 1, 1)


@pytest.mark.parametrize("bad", ["", "TF3", "2XX3", "2TF3@", "2tf3", "a2TF3"])
def test_parse_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_action(bad)


def test_grid_marks_the_failing_action():
    grid = format_grid([[Action(0, Op.TF, 0, 0), Action(0, Op.SF, 0, 0)]], mark=(0, 1))
    assert grid == "stage 0: 0TF0 >>0SF0<<"
