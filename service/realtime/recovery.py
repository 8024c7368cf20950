"""History replay on join: a reconnecting client names the last message it has and gets the rest, then live.

The hand-over from stored history to live delivery is where messages get lost or doubled, so the order of
steps matters:

1. The connection enters the room while *holding* events: everything delivered to it from now on (from
   this worker or from any other via the backplane) waits in order, including each new_message's id.
2. History after `last_message_id` is read (at most REPLAY_LIMIT + 1 rows, to see truncation).
3. `joined_session`, the replayed `new_message` frames, then the held events are queued; then the
   connection goes live. Held or live, a new_message whose id was replayed is dropped.

A message stored after step 2 read the table is published after the connection entered the room, so it
is held (or arrives live). One stored before is in the history, and its publication may come before the
join (not delivered), while events are held, or even after going live (stored, but its sender's greenlet
or another worker had not published it yet): the last two are dropped by id for a while (see
REPLAYED_MEMORY_SECONDS). By id, not by "id <= last replayed": ids are allocated before commit, so with
concurrent writers a lower id can commit (and be published) after a higher one was read, and must arrive.

Steps 2 and 3 run in the connection's own reader greenlet, which is busy with this join and cannot send
anything itself meanwhile; the frames are queued by the handler (not returned as replies) because the
switch to live delivery must come after they are in the connection's queue.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import Problem, Refused
from ..fields import cursor
from ..storage import SessionRecord, StorageError
from .protocol import ConnectionState, Reply, encode
from .websocket import CLOSE_POLICY

if TYPE_CHECKING:
    from .hub import ChatHub

log = logging.getLogger(__name__)

# How long live copies of replayed messages are dropped. A message can be in the table (so replayed) and
# still unpublished: its sender's greenlet, or another worker, publishes it a moment later. Ids are kept
# as a sorted array (8 bytes each, at most REPLAY_LIMIT) and forgotten after this window.
REPLAYED_MEMORY_SECONDS = 60.0


def replay_after(value: Any) -> int | None:
    """`last_message_id` of a join: None (absent or null: legacy join) or a message id, 0 meaning "from the start"."""
    return None if value is None else cursor(value, Problem.INVALID_MESSAGE_ID)


def join_with_replay(ctx: ChatHub, conn: ConnectionState, session: SessionRecord, after_id: int) -> list[Reply]:
    """Join `session`, then send every stored message after `after_id` and go live with no gap and no repeat.

    Queues `joined_session` first (with `recovered`, `replayed` and, when cut short, `truncated` and
    `resume_after_id`), then the replayed frames, then what arrived meanwhile. Returns no replies: they are
    already queued. A database failure answers 服务暂时不可用 and puts the connection back where it was.
    """
    limit = ctx.settings.replay_limit
    previous = conn.session_id
    conn.hold_events()
    ctx.registry.join(conn, session.id)
    try:
        history = ctx.storage.list_messages(session.id, after_id, limit + 1)
    except StorageError:
        conn.release_events()
        ctx.registry.leave(conn)
        if previous is not None:
            ctx.registry.join(conn, previous)
        log.warning("replay failed: database", extra={"connection_id": conn.connection_id, "session_id": session.id})
        raise Refused(Problem.STORAGE_DOWN) from None

    # From here to the end nothing yields: no event can slip in between the queued frames and going live.
    truncated = len(history) > limit
    history = history[:limit]
    reply: Reply = {"type": "joined_session", "session_id": session.id, "recovered": not truncated,
                    "replayed": len(history)}
    if truncated:
        reply["truncated"] = True
        reply["resume_after_id"] = history[-1].id if history else after_id
    conn.send_text(encode(reply))
    for message in history:
        conn.send_text(encode({"type": "new_message", "session_id": session.id, "message": message.to_wire()}))
    conn.remember_replayed([m.id for m in history], REPLAYED_MEMORY_SECONDS)
    held, overflow = conn.release_events()
    for text, message_id in held:
        conn.send_event(text, message_id)  # skips what was replayed
    if overflow:
        # Events were dropped while the history was read: a gap the client must not mistake for none.
        log.warning("too many events during replay, closing", extra={"connection_id": conn.connection_id})
        conn.close(CLOSE_POLICY, "too slow")
    log.info(
        "replayed %d after id %d (%d events held meanwhile, truncated %s)", len(history), after_id, len(held),
        truncated, extra={"connection_id": conn.connection_id, "session_id": session.id},
    )
    return []
