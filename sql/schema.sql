-- The chat service's full schema (MySQL 8 / MariaDB 10.11 DDL), generated from service/storage/models.py
-- by `python -m service db schema > sql/schema.sql`. tests/test_migrations.py proves it equals the schema
-- that `python -m service db upgrade` builds. Do not edit by hand: change the models, add a migration
-- revision (service/storage/migrations/versions/), regenerate this file.
--
-- Times are naive DATETIMEs in APP_TIMEZONE (the legacy convention). The report views are in reports.sql.
-- Schema revision: 0002

CREATE TABLE agents (
	user_id BIGINT NOT NULL,
	display_name VARCHAR(100),
	created_at DATETIME NOT NULL,
	PRIMARY KEY (user_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE chat_message_hourly (
	day DATE NOT NULL,
	hour SMALLINT NOT NULL,
	sender_role VARCHAR(16) NOT NULL,
	sender_id BIGINT NOT NULL,
	messages INTEGER NOT NULL,
	PRIMARY KEY (day, hour, sender_role, sender_id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE TABLE chat_sessions (
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
	PRIMARY KEY (id),
	CONSTRAINT uq_chat_sessions_open_per_user UNIQUE (user_id, open_flag)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE INDEX ix_chat_sessions_agent_status ON chat_sessions (agent_id, status);

CREATE INDEX ix_chat_sessions_created_at ON chat_sessions (created_at);

CREATE INDEX ix_chat_sessions_day_agent ON chat_sessions (created_day, agent_id);

CREATE INDEX ix_chat_sessions_status_id ON chat_sessions (status, id);

CREATE TABLE chat_messages (
	id BIGINT NOT NULL AUTO_INCREMENT,
	session_id BIGINT NOT NULL,
	sender_id BIGINT NOT NULL,
	sender_role VARCHAR(16) NOT NULL,
	content MEDIUMTEXT NOT NULL,
	client_msg_id VARCHAR(64),
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_chat_messages_client_msg UNIQUE (session_id, sender_id, client_msg_id),
	CONSTRAINT fk_chat_messages_session FOREIGN KEY(session_id) REFERENCES chat_sessions (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE INDEX ix_chat_messages_created_at ON chat_messages (created_at);

CREATE INDEX ix_chat_messages_sender_created ON chat_messages (sender_id, created_at);

CREATE INDEX ix_chat_messages_session_id ON chat_messages (session_id, id);

CREATE TABLE chat_session_events (
	id BIGINT NOT NULL AUTO_INCREMENT,
	session_id BIGINT NOT NULL,
	event VARCHAR(16) NOT NULL,
	actor_id BIGINT,
	actor_role VARCHAR(16),
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT fk_chat_session_events_session FOREIGN KEY(session_id) REFERENCES chat_sessions (id)
)ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE INDEX ix_chat_session_events_actor_created ON chat_session_events (actor_id, created_at);

CREATE INDEX ix_chat_session_events_event_created ON chat_session_events (event, created_at);

CREATE INDEX ix_chat_session_events_session ON chat_session_events (session_id, id);

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL,
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version (version_num) VALUES ('0002');
