"""History replay on join: a reconnecting client names the last message it has and gets the rest, then live.

The hand-over from stored history to live delivery is where messages get lost or doubled, so the order of
steps matters:

1. The connection enters the room while *holding* events: everything delivered to it from now on (from
   this worker or from any other via the backplane) waits in order, including each new_message's id.
2. The ids of the history after `last_message_id` are read (at most REPLAY_LIMIT + 1, to see truncation):
   this is the replay's snapshot; its rows are then read a page at a time, by id.
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
switch to live delivery must come after they are in the connection's queue. Step 3 goes at the client's
pace (the queue is bounded in bytes) and yields between frames: a replay neither grows the worker's memory
with the history nor stalls the other connections, and a client asking for replay after replay without
reading gets the next one only once the previous one is written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import Problem, Refused
from ..fields import cursor
from ..storage import SessionRecord, StorageError
from .protocol import ConnectionState, Reply, encode
from .websocket import CLOSE_POLICY, CLOSE_TRY_AGAIN

if TYPE_CHECKING:
    from ..config import Settings
    from .hub import ChatHub

log = logging.getLogger(__name__)

# How long live copies of replayed messages are dropped. A message can be in the table (so replayed) and
# still unpublished: its sender's greenlet, or another worker, publishes it a moment later. Ids are kept
# as a sorted array (8 bytes each, at most REPLAY_LIMIT) and forgotten after this window.
REPLAYED_MEMORY_SECONDS = 60.0
REPLAY_PAGE_MAX = 100  # messages read per page of a replay at most (see replay_page)
REPLAY_YIELD_EVERY = 4  # replayed frames encoded between two yields to the worker's other greenlets


def replay_after(value: Any) -> int | None:
    """`last_message_id` of a join: None (absent or null: legacy join) or a message id, 0 meaning "from the start"."""
    return None if value is None else cursor(value, Problem.INVALID_MESSAGE_ID)


def replay_page(settings: Settings) -> int:
    """Messages read per page of a replay: a page of the longest messages (4 bytes a character in a str, at
    worst) holds a quarter of one connection's queue budget, so a replay holds a page and the queue, not its
    history; and reading a page (SQLite reads in the worker's own thread) is a short pause for the others."""
    largest = 4 * settings.max_message_length + 256
    return max(1, min(REPLAY_PAGE_MAX, settings.max_outbound_bytes // 4 // largest))


def join_with_replay(ctx: ChatHub, conn: ConnectionState, session: SessionRecord, after_id: int) -> list[Reply]:
    """Join `session`, then send every stored message after `after_id` and go live with no gap and no repeat.

    Queues `joined_session` first (with `recovered`, `replayed` and, when cut short, `truncated` and
    `resume_after_id`), then the replayed frames, then what arrived meanwhile. Returns no replies: they are
    already queued. A database failure before `joined_session` answers 服务暂时不可用 and puts the connection back
    where it was; after it, the connection is closed 1013 (reconnect and replay again).

    The frames go out at the pace the client reads: a page of history is read, and each frame waits for room
    in the connection's queue (half of MAX_OUTBOUND_BYTES), yielding to other connections every few frames.
    A replay starts only once everything queued before it (a previous replay) is written. Live events stay held
    until the last replayed frame is queued, so yielding here lets nothing in between.
    """
    settings = ctx.settings
    limit = settings.replay_limit
    if not conn.wait_for_room(0):
        return []  # closed while an earlier replay was still going out
    previous = conn.session_id
    conn.hold_events()
    ctx.registry.join(conn, session.id)
    try:
        ids = ctx.storage.list_message_ids(session.id, after_id, limit + 1)
    except StorageError:
        conn.release_events()
        ctx.registry.leave(conn)
        if previous is not None:
            ctx.registry.join(conn, previous)
        log.warning("replay failed: database", extra={"connection_id": conn.connection_id, "session_id": session.id})
        raise Refused(Problem.STORAGE_DOWN) from None

    truncated = len(ids) > limit
    ids = ids[:limit]
    reply: Reply = {"type": "joined_session", "session_id": session.id, "recovered": not truncated,
                    "replayed": len(ids)}
    if truncated:
        reply["truncated"] = True
        reply["resume_after_id"] = ids[-1] if ids else after_id
    conn.send_text(encode(reply))
    if not _send_history(ctx, conn, session.id, ids):
        conn.release_events()
        return []
    conn.remember_replayed(ids, REPLAYED_MEMORY_SECONDS)
    held, overflow = conn.release_events()
    for text, message_id in held:
        conn.send_event(text, message_id)  # skips what was replayed
    if overflow:
        # Events were dropped while the history was read: a gap the client must not mistake for none.
        log.warning("too many events during replay, closing", extra={"connection_id": conn.connection_id})
        conn.close(CLOSE_POLICY, "too slow")
    log.info(
        "replayed %d after id %d (%d events held meanwhile, truncated %s)", len(ids), after_id, len(held),
        truncated, extra={"connection_id": conn.connection_id, "session_id": session.id},
    )
    return []


def _send_history(ctx: ChatHub, conn: ConnectionState, session_id: int, ids: list[int]) -> bool:
    """Queue the messages `ids` a page at a time, as the client reads; False when the connection closed (or
    was closed: a page the database could not give) before the last one."""
    room = ctx.settings.max_outbound_bytes // 2
    page = replay_page(ctx.settings)
    encoded = 0
    for start in range(0, len(ids), page):
        try:
            history = ctx.storage.messages_by_ids(session_id, ids[start:start + page])
        except StorageError:
            # joined_session promised these frames: without them the client would take a gap for none.
            log.warning("replay failed midway: database", extra={"connection_id": conn.connection_id,
                                                                  "session_id": session_id})
            conn.close(CLOSE_TRY_AGAIN, "replay failed")
            return False
        gevent.sleep(0)  # after each page read, the other connections first
        for message in history:
            if not conn.wait_for_room(room):
                return False
            conn.send_text(encode({"type": "new_message", "session_id": session_id, "message": message.to_wire()}))
            encoded += 1
            if encoded % REPLAY_YIELD_EVERY == 0:
                gevent.sleep(0)  # a long replay must not stall the worker's other connections
    return True
