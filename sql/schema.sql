-- The chat service's full schema (MySQL 8 / MariaDB 10.11 DDL), generated from service/storage/models.py
-- by `python -m service db schema > sql/schema.sql`. tests/test_migrations.py proves it equals the schema
-- that `python -m service db upgrade` builds. Do not edit by hand: change the models, add a migration
-- revision (service/storage/migrations/versions/), regenerate this file.
--
-- Times are naive DATETIMEs in APP_TIMEZONE (the legacy convention). The report views are in reports.sql.
-- client_msg_id uses MariaDB's utf8mb4_nopad_bin (byte-exact); on MySQL 8 write utf8mb4_0900_bin instead.
-- Schema revision: 0006

CREATE TABLE IF NOT EXISTS agents (
	user_id BIGINT NOT NULL,
	display_name VARCHAR(100),
	created_at DATETIME NOT NULL,
	status VARCHAR(16) NOT NULL DEFAULT 'offline',
	capacity INTEGER,
	last_assigned_at DATETIME,
	PRIMARY KEY (user_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_agent_load (
	sampled_at DATETIME NOT NULL,
	agent_id BIGINT NOT NULL,
	status VARCHAR(16) NOT NULL,
	`load` INTEGER NOT NULL,
	capacity INTEGER NOT NULL,
	PRIMARY KEY (sampled_at, agent_id),
	KEY ix_chat_agent_load_agent_sampled (agent_id, sampled_at)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_message_hourly (
	day DATE NOT NULL,
	hour SMALLINT NOT NULL,
	sender_role VARCHAR(16) NOT NULL,
	sender_id BIGINT NOT NULL,
	shard SMALLINT NOT NULL DEFAULT '0',
	messages INTEGER NOT NULL,
	PRIMARY KEY (day, hour, sender_role, sender_id, shard)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_sessions (
	id BIGINT NOT NULL AUTO_INCREMENT,
	user_id BIGINT NOT NULL,
	agent_id BIGINT,
	status VARCHAR(16) NOT NULL,
	open_flag SMALLINT,
	created_at DATETIME NOT NULL,
	closed_at DATETIME,
	first_response_at DATETIME,
	closed_by BIGINT,
	close_reason VARCHAR(16),
	created_day DATE GENERATED ALWAYS AS (DATE(created_at)) VIRTUAL,
	assigned_at DATETIME,
	idle_warned_at DATETIME,
	PRIMARY KEY (id),
	CONSTRAINT uq_chat_sessions_open_per_user UNIQUE (user_id, open_flag),
	KEY ix_chat_sessions_agent_status (agent_id, status),
	KEY ix_chat_sessions_created_at (created_at),
	KEY ix_chat_sessions_day_agent (created_day, agent_id),
	KEY ix_chat_sessions_status_id (status, id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_messages (
	id BIGINT NOT NULL AUTO_INCREMENT,
	session_id BIGINT NOT NULL,
	sender_id BIGINT NOT NULL,
	sender_role VARCHAR(16) NOT NULL,
	content MEDIUMTEXT NOT NULL,
	client_msg_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_chat_messages_client_msg UNIQUE (session_id, sender_id, client_msg_id),
	CONSTRAINT fk_chat_messages_session FOREIGN KEY(session_id) REFERENCES chat_sessions (id),
	KEY ix_chat_messages_created_at (created_at),
	KEY ix_chat_messages_sender_created (sender_id, created_at),
	KEY ix_chat_messages_session_id (session_id, id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_read_states (
	session_id BIGINT NOT NULL,
	user_id BIGINT NOT NULL,
	last_read_message_id BIGINT NOT NULL,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (session_id, user_id),
	CONSTRAINT fk_chat_read_states_session FOREIGN KEY(session_id) REFERENCES chat_sessions (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS chat_session_events (
	id BIGINT NOT NULL AUTO_INCREMENT,
	session_id BIGINT NOT NULL,
	event VARCHAR(16) NOT NULL,
	actor_id BIGINT,
	actor_role VARCHAR(16),
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT fk_chat_session_events_session FOREIGN KEY(session_id) REFERENCES chat_sessions (id),
	KEY ix_chat_session_events_actor_created (actor_id, created_at),
	KEY ix_chat_session_events_event_created (event, created_at),
	KEY ix_chat_session_events_session (session_id, id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS alembic_version (
	version_num VARCHAR(32) NOT NULL,
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT IGNORE INTO alembic_version (version_num) VALUES ('0006');
