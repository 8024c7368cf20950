-- Reporting views of the chat service (MariaDB 10.11+, MySQL 8.0+: window functions).
--
-- Install or refresh: `python -m service db upgrade` (after migrating) or `python -m service db views`;
-- or run this file with any client (`mysql chat < sql/reports.sql`). Every statement is CREATE OR REPLACE.
--
-- Conventions
-- - Times are naive DATETIMEs in APP_TIMEZONE (the legacy convention): `day` and `hour` are local, no
--   conversion is needed or done. `day` is the day the SESSION WAS OPENED (session views) or the message
--   was sent (message views); a session is counted on its opening day even when answered or closed later.
-- - Filter on `day` (e.g. WHERE day = '2026-11-02' or day BETWEEN ... AND ...): it maps to an indexed
--   column (chat_sessions.created_day, generated from created_at; chat_message_hourly.day), so a one-day
--   question reads one day of rows through an index.
-- - Message figures come from chat_message_hourly (messages per local hour, role and agent, customers
--   together as sender_id 0; added by the server in the transaction that stores the messages), never from a
--   scan of chat_messages.
-- - FRT (first response time) = first_response_at - created_at, in seconds: the time from the session being
--   opened to the first message of any agent in it. first_response_at is written by the server in the same
--   transaction as that message.
-- - Handling time = closed_at - created_at, in seconds, for closed sessions.
-- - Medians are the middle value, or the mean of the two middle values (what PERCENTILE_CONT(0.5) gives),
--   computed with ROW_NUMBER() and COUNT() windows so the same SQL runs on MySQL 8 (no PERCENTILE_CONT).
-- - Abandoned = closed by the customer or by the idle sweeper (close_reason 'customer' or 'idle') with no
--   agent reply. Sessions closed before schema revision 0002 have no close_reason and are never abandoned.
-- - Waiting = still open, no agent reply yet.
-- - Averages are DECIMAL seconds; NULL where there is nothing to average.
--
-- Views
--   report_sessions               one row per session: session_id, user_id, agent_id, status, day, hour,
--                                 created_at, first_response_at, closed_at, closed_by, close_reason,
--                                 frt_seconds, handling_seconds, answered (0/1), abandoned (0/1)
--   report_sessions_daily         day, sessions_opened, sessions_answered, sessions_waiting, sessions_closed,
--                                 sessions_abandoned, frt_avg_seconds, frt_median_seconds,
--                                 handling_avg_seconds, handling_median_seconds
--   report_sessions_hourly        day, hour, sessions_opened, sessions_answered, sessions_abandoned,
--                                 frt_avg_seconds
--   report_messages_daily         day, messages, customer_messages, agent_messages
--   report_messages_hourly        day, hour, messages, customer_messages, agent_messages
--   report_agent_daily            day, agent_id, display_name, sessions_assigned, sessions_answered,
--                                 sessions_closed, sessions_abandoned, frt_avg_seconds, frt_median_seconds,
--                                 handling_avg_seconds, handling_median_seconds   (by the session's agent)
--   report_agent_messages_daily   day, agent_id, display_name, messages   (messages sent by each agent)
--   report_waiting_sessions       session_id, user_id, agent_id, day, created_at   (open, no agent reply)
--   report_abandoned_sessions     session_id, user_id, agent_id, day, created_at, closed_at, close_reason,
--                                 waited_seconds
--   report_agent_workload         agent_id, display_name, open_sessions, open_unanswered, oldest_open_at
--                                 (now; every agent of the agents table, 0 when idle)

CREATE OR REPLACE VIEW report_sessions AS
SELECT
    s.id AS session_id,
    s.user_id,
    s.agent_id,
    s.status,
    s.created_day AS day,
    HOUR(s.created_at) AS hour,
    s.created_at,
    s.first_response_at,
    s.closed_at,
    s.closed_by,
    s.close_reason,
    TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at) AS frt_seconds,
    TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at) AS handling_seconds,
    CASE WHEN s.first_response_at IS NOT NULL THEN 1 ELSE 0 END AS answered,
    CASE WHEN s.close_reason IN ('customer', 'idle') AND s.first_response_at IS NULL THEN 1 ELSE 0 END AS abandoned
FROM chat_sessions s;

CREATE OR REPLACE VIEW report_sessions_daily AS
SELECT
    f.day,
    COUNT(*) AS sessions_opened,
    SUM(f.answered) AS sessions_answered,
    SUM(CASE WHEN f.status = 'active' AND f.answered = 0 THEN 1 ELSE 0 END) AS sessions_waiting,
    SUM(CASE WHEN f.status = 'closed' THEN 1 ELSE 0 END) AS sessions_closed,
    SUM(f.abandoned) AS sessions_abandoned,
    AVG(f.frt_seconds) AS frt_avg_seconds,
    AVG(CASE WHEN f.frt_rank IN (FLOOR((f.frt_count + 1) / 2), CEIL((f.frt_count + 1) / 2))
        THEN f.frt_seconds END) AS frt_median_seconds,
    AVG(f.handling_seconds) AS handling_avg_seconds,
    AVG(CASE WHEN f.handling_rank IN (FLOOR((f.handling_count + 1) / 2), CEIL((f.handling_count + 1) / 2))
        THEN f.handling_seconds END) AS handling_median_seconds
FROM (
    SELECT
        s.created_day AS day,
        s.status,
        CASE WHEN s.first_response_at IS NOT NULL THEN 1 ELSE 0 END AS answered,
        CASE WHEN s.close_reason IN ('customer', 'idle') AND s.first_response_at IS NULL THEN 1 ELSE 0 END
            AS abandoned,
        TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at) AS frt_seconds,
        TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at) AS handling_seconds,
        ROW_NUMBER() OVER (PARTITION BY s.created_day ORDER BY s.first_response_at IS NULL, TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at)) AS frt_rank,
        COUNT(s.first_response_at) OVER (PARTITION BY s.created_day) AS frt_count,
        ROW_NUMBER() OVER (PARTITION BY s.created_day ORDER BY s.closed_at IS NULL, TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at)) AS handling_rank,
        COUNT(s.closed_at) OVER (PARTITION BY s.created_day) AS handling_count
    FROM chat_sessions s
) f
GROUP BY f.day;

CREATE OR REPLACE VIEW report_sessions_hourly AS
SELECT
    s.created_day AS day,
    HOUR(s.created_at) AS hour,
    COUNT(*) AS sessions_opened,
    SUM(CASE WHEN s.first_response_at IS NOT NULL THEN 1 ELSE 0 END) AS sessions_answered,
    SUM(CASE WHEN s.close_reason IN ('customer', 'idle') AND s.first_response_at IS NULL THEN 1 ELSE 0 END)
        AS sessions_abandoned,
    AVG(TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at)) AS frt_avg_seconds
FROM chat_sessions s
GROUP BY s.created_day, HOUR(s.created_at);

CREATE OR REPLACE VIEW report_messages_daily AS
SELECT
    h.day,
    SUM(h.messages) AS messages,
    SUM(CASE WHEN h.sender_role = 'customer' THEN h.messages ELSE 0 END) AS customer_messages,
    SUM(CASE WHEN h.sender_role = 'agent' THEN h.messages ELSE 0 END) AS agent_messages
FROM chat_message_hourly h
GROUP BY h.day;

CREATE OR REPLACE VIEW report_messages_hourly AS
SELECT
    h.day,
    h.hour,
    SUM(h.messages) AS messages,
    SUM(CASE WHEN h.sender_role = 'customer' THEN h.messages ELSE 0 END) AS customer_messages,
    SUM(CASE WHEN h.sender_role = 'agent' THEN h.messages ELSE 0 END) AS agent_messages
FROM chat_message_hourly h
GROUP BY h.day, h.hour;

CREATE OR REPLACE VIEW report_agent_daily AS
SELECT
    f.day,
    f.agent_id,
    a.display_name,
    f.sessions_assigned,
    f.sessions_answered,
    f.sessions_closed,
    f.sessions_abandoned,
    f.frt_avg_seconds,
    f.frt_median_seconds,
    f.handling_avg_seconds,
    f.handling_median_seconds
FROM (
    SELECT
        w.day,
        w.agent_id,
        COUNT(*) AS sessions_assigned,
        SUM(w.answered) AS sessions_answered,
        SUM(CASE WHEN w.status = 'closed' THEN 1 ELSE 0 END) AS sessions_closed,
        SUM(w.abandoned) AS sessions_abandoned,
        AVG(w.frt_seconds) AS frt_avg_seconds,
        AVG(CASE WHEN w.frt_rank IN (FLOOR((w.frt_count + 1) / 2), CEIL((w.frt_count + 1) / 2))
            THEN w.frt_seconds END) AS frt_median_seconds,
        AVG(w.handling_seconds) AS handling_avg_seconds,
        AVG(CASE WHEN w.handling_rank IN (FLOOR((w.handling_count + 1) / 2), CEIL((w.handling_count + 1) / 2))
            THEN w.handling_seconds END) AS handling_median_seconds
    FROM (
        SELECT
            s.created_day AS day,
            s.agent_id,
            s.status,
            CASE WHEN s.first_response_at IS NOT NULL THEN 1 ELSE 0 END AS answered,
            CASE WHEN s.close_reason IN ('customer', 'idle') AND s.first_response_at IS NULL THEN 1 ELSE 0 END
                AS abandoned,
            TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at) AS frt_seconds,
            TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at) AS handling_seconds,
            ROW_NUMBER() OVER (PARTITION BY s.created_day, s.agent_id
                               ORDER BY s.first_response_at IS NULL, TIMESTAMPDIFF(SECOND, s.created_at, s.first_response_at)) AS frt_rank,
            COUNT(s.first_response_at) OVER (PARTITION BY s.created_day, s.agent_id) AS frt_count,
            ROW_NUMBER() OVER (PARTITION BY s.created_day, s.agent_id
                               ORDER BY s.closed_at IS NULL, TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at)) AS handling_rank,
            COUNT(s.closed_at) OVER (PARTITION BY s.created_day, s.agent_id) AS handling_count
        FROM chat_sessions s
        WHERE s.agent_id IS NOT NULL
    ) w
    GROUP BY w.day, w.agent_id
) f
LEFT JOIN agents a ON a.user_id = f.agent_id;

CREATE OR REPLACE VIEW report_agent_messages_daily AS
SELECT
    c.day,
    c.agent_id,
    a.display_name,
    c.messages
FROM (
    SELECT h.day, h.sender_id AS agent_id, SUM(h.messages) AS messages
    FROM chat_message_hourly h
    WHERE h.sender_role = 'agent'
    GROUP BY h.day, h.sender_id
) c
LEFT JOIN agents a ON a.user_id = c.agent_id;

CREATE OR REPLACE VIEW report_waiting_sessions AS
SELECT s.id AS session_id, s.user_id, s.agent_id, s.created_day AS day, s.created_at
FROM chat_sessions s
WHERE s.status = 'active' AND s.first_response_at IS NULL;

CREATE OR REPLACE VIEW report_abandoned_sessions AS
SELECT
    s.id AS session_id,
    s.user_id,
    s.agent_id,
    s.created_day AS day,
    s.created_at,
    s.closed_at,
    s.close_reason,
    TIMESTAMPDIFF(SECOND, s.created_at, s.closed_at) AS waited_seconds
FROM chat_sessions s
WHERE s.close_reason IN ('customer', 'idle') AND s.first_response_at IS NULL;

CREATE OR REPLACE VIEW report_agent_workload AS
SELECT
    a.user_id AS agent_id,
    a.display_name,
    COUNT(s.id) AS open_sessions,
    COALESCE(SUM(CASE WHEN s.id IS NOT NULL AND s.first_response_at IS NULL THEN 1 ELSE 0 END), 0)
        AS open_unanswered,
    MIN(s.created_at) AS oldest_open_at
FROM agents a
LEFT JOIN chat_sessions s ON s.agent_id = a.user_id AND s.status = 'active'
GROUP BY a.user_id, a.display_name;

-- The agent desk (schema revision 0006)
--   report_desk_daily          day, sessions_opened, sessions_assigned, queue_avg_seconds, queue_max_seconds,
--                              transfers, requeued, idle_closes   (time in queue = opened -> first assigned;
--                              transfers and requeues by the day they happened, idle closes by opening day)
--   report_agent_load_hourly   day, hour, agent_id, display_name, samples, online_samples, load_avg, load_max,
--                              capacity   (from chat_agent_load: one sample per agent and minute)

CREATE OR REPLACE VIEW report_desk_daily AS
SELECT
    d.day,
    COALESCE(q.sessions_opened, 0) AS sessions_opened,
    COALESCE(q.sessions_assigned, 0) AS sessions_assigned,
    q.queue_avg_seconds,
    q.queue_max_seconds,
    COALESCE(e.transfers, 0) AS transfers,
    COALESCE(e.requeued, 0) AS requeued,
    COALESCE(q.idle_closes, 0) AS idle_closes
FROM (
    SELECT created_day AS day FROM chat_sessions
    UNION SELECT DATE(created_at) FROM chat_session_events WHERE event IN ('transferred', 'requeued')
) d
LEFT JOIN (
    SELECT
        s.created_day AS day,
        COUNT(*) AS sessions_opened,
        SUM(CASE WHEN s.assigned_at IS NOT NULL THEN 1 ELSE 0 END) AS sessions_assigned,
        AVG(TIMESTAMPDIFF(SECOND, s.created_at, s.assigned_at)) AS queue_avg_seconds,
        MAX(TIMESTAMPDIFF(SECOND, s.created_at, s.assigned_at)) AS queue_max_seconds,
        SUM(CASE WHEN s.close_reason = 'idle' THEN 1 ELSE 0 END) AS idle_closes
    FROM chat_sessions s
    GROUP BY s.created_day
) q ON q.day = d.day
LEFT JOIN (
    SELECT
        DATE(ev.created_at) AS day,
        SUM(CASE WHEN ev.event = 'transferred' THEN 1 ELSE 0 END) AS transfers,
        SUM(CASE WHEN ev.event = 'requeued' THEN 1 ELSE 0 END) AS requeued
    FROM chat_session_events ev
    WHERE ev.event IN ('transferred', 'requeued')
    GROUP BY DATE(ev.created_at)
) e ON e.day = d.day;

CREATE OR REPLACE VIEW report_agent_load_hourly AS
SELECT
    DATE(l.sampled_at) AS day,
    HOUR(l.sampled_at) AS hour,
    l.agent_id,
    a.display_name,
    COUNT(*) AS samples,
    SUM(CASE WHEN l.status = 'online' THEN 1 ELSE 0 END) AS online_samples,
    AVG(l.load) AS load_avg,
    MAX(l.load) AS load_max,
    MAX(l.capacity) AS capacity
FROM chat_agent_load l
LEFT JOIN agents a ON a.user_id = l.agent_id
GROUP BY DATE(l.sampled_at), HOUR(l.sampled_at), l.agent_id, a.display_name;
