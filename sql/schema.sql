-- Schema of the customer-service chat service for MySQL 8 / MariaDB 10.5+ (InnoDB, utf8mb4).
--
-- The same tables the service creates on start from service/storage/models.py (it only creates what is
-- missing, so loading this file first is optional). Generated from the models with SQLAlchemy's
-- CreateTable/CreateIndex for the mysql dialect, indexes folded into each table; the test
-- tests/test_schema.py loads this file and compares it, column by column and index by index, with the
-- models, so the two cannot drift apart. Change the models first, then this file.
--
-- Times are DATETIME in APP_TIMEZONE (legacy PHP date() style), not UTC.
--
--   mysql -u root -p chat < sql/schema.sql

CREATE TABLE IF NOT EXISTS agents (
    user_id      BIGINT       NOT NULL,
    display_name VARCHAR(100) NULL,
    created_at   DATETIME     NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_sessions (
    id         BIGINT      NOT NULL AUTO_INCREMENT,
    user_id    BIGINT      NOT NULL,                -- the customer
    agent_id   BIGINT      NULL,                    -- first agent to join or answer; NULL until then
    status     VARCHAR(16) NOT NULL,                -- 'active' or 'closed'
    open_flag  SMALLINT    NULL,                    -- 1 while active, NULL once closed (see the unique key)
    created_at DATETIME    NOT NULL,
    closed_at  DATETIME    NULL,
    PRIMARY KEY (id),
    -- One open session per customer, enforced by the database across workers and hosts (NULLs never collide).
    CONSTRAINT uq_chat_sessions_open_per_user UNIQUE (user_id, open_flag),
    KEY ix_chat_sessions_status_id (status, id),       -- session lists by status, newest first
    KEY ix_chat_sessions_agent_status (agent_id, status),
    KEY ix_chat_sessions_created_at (created_at)       -- reports by day
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_messages (
    id            BIGINT      NOT NULL AUTO_INCREMENT,  -- message.id on the wire
    session_id    BIGINT      NOT NULL,
    sender_id     BIGINT      NOT NULL,
    sender_role   VARCHAR(16) NOT NULL,                 -- 'customer' or 'agent'
    content       MEDIUMTEXT  NOT NULL,
    client_msg_id VARCHAR(64) NULL,                     -- the client's idempotency key, when it sent one
    created_at    DATETIME    NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_chat_messages_client_msg UNIQUE (session_id, sender_id, client_msg_id),
    KEY ix_chat_messages_session_id (session_id, id),   -- history of a session after a cursor
    KEY ix_chat_messages_created_at (created_at),
    KEY ix_chat_messages_sender_created (sender_id, created_at),
    CONSTRAINT fk_chat_messages_session FOREIGN KEY (session_id) REFERENCES chat_sessions (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
