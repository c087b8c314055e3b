"""Lowering: the sends and receives each compute action implies, derived from the ops' flow.

Teacher and student activations flow to the next stage, student gradients to the previous one
(:data:`core.action.OPS`); the loss and the last stage's outputs stay local. Stages are placed
on ranks by a ``stage_to_rank`` map (the identity for one stage per rank), so a schedule with
several stages per rank (interleaved, V-shaped) lowers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.action import OPS, RECV, SEND, Action

ActionLists = Sequence[Sequence[Action]]


def identity_placement(stages: int) -> tuple[int, ...]:
    """One stage per rank: stage s on rank s."""
    return tuple(range(stages))


def comm_for(action: Action, stages: int) -> tuple[Action | None, Action | None]:
    """The receive a compute action needs first and the send it makes after, if any."""
    info = OPS[action.op]
    if info.flow is None:
        return None, None
    s, key = action.stage, (action.batch, action.microbatch, action.part)
    has_source = s > 0 if info.flow == "down" else s < stages - 1
    has_sink = s < stages - 1 if info.flow == "down" else s > 0
    return (
        Action(s, RECV[info.channel], *key) if has_source else None,
        Action(s, SEND[info.channel], *key) if has_sink else None,
    )


def _phase(action: Action) -> str | None:
    return OPS[action.op].flow


def lower(
    compute: ActionLists, hoist_receives: bool = False, stages: int | None = None
) -> list[list[Action]]:
    """Add communication: a receive right before each compute action that needs a peer's data,
    a send right after each compute action whose result a peer needs.

    Args:
        compute: per-rank compute lists.
        hoist_receives: receive everything a run of forwards (or of backwards) needs before the
            run starts, so a stage begins only when its predecessor has finished the whole
            phase: strict inter-layer model parallelism, one stage busy at a time.
        stages: number of pipeline stages (default: one per list).

    Returns:
        Per-rank lists of compute and communication actions.
    """
    stages = len(compute) if stages is None else stages
    lowered: list[list[Action]] = []
    for actions in compute:
        out: list[Action] = []
        i = 0
        while i < len(actions):
            j = i + 1
            if hoist_receives and _phase(actions[i]) is not None:
                while j < len(actions) and _phase(actions[j]) == _phase(actions[i]):
                    j += 1
            run = actions[i:j]
            pairs = [comm_for(a, stages) for a in run]
            out += [recv for recv, _ in pairs if recv is not None]
            for a, (_, send) in zip(run, pairs):
                out.append(a)
                if send is not None:
                    out.append(send)
            i = j
        lowered.append(out)
    return lowered
