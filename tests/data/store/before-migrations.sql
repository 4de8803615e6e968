-- The schema as digest created it in SQLite before migrations (commit cbbdb17, before
-- editions.claimed_by), from SQLAlchemy's create_all; test_migrate adopts it.

CREATE TABLE papers (
	id INTEGER NOT NULL,
	"key" VARCHAR(512) NOT NULL,
	arxiv_id VARCHAR(64),
	title_key VARCHAR(512) NOT NULL,
	title TEXT NOT NULL,
	abstract TEXT NOT NULL,
	authors JSON NOT NULL,
	url TEXT,
	published DATE,
	first_seen DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE ("key"),
	UNIQUE (arxiv_id)
);

CREATE INDEX ix_papers_first_seen ON papers (first_seen);

CREATE INDEX ix_papers_title_key ON papers (title_key);

CREATE TABLE subscribers (
	id VARCHAR(200) NOT NULL,
	email VARCHAR(320) NOT NULL,
	name TEXT NOT NULL,
	profile_path TEXT NOT NULL,
	active BOOLEAN NOT NULL,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE editions (
	id INTEGER NOT NULL,
	subscriber_id VARCHAR(200) NOT NULL,
	slot DATETIME NOT NULL,
	state VARCHAR(16) NOT NULL,
	message_id VARCHAR(255) NOT NULL,
	attempts INTEGER NOT NULL,
	smtp_reply TEXT,
	retryable BOOLEAN NOT NULL,
	candidates_until DATETIME NOT NULL,
	created_at DATETIME NOT NULL,
	updated_at DATETIME NOT NULL,
	sent_at DATETIME,
	PRIMARY KEY (id),
	CONSTRAINT uq_edition_slot UNIQUE (subscriber_id, slot),
	UNIQUE (message_id)
);

CREATE INDEX ix_editions_state ON editions (state);

CREATE TABLE feeds (
	url VARCHAR(2048) NOT NULL,
	etag TEXT,
	last_modified TEXT,
	last_poll_at DATETIME,
	last_status VARCHAR(64),
	last_error TEXT,
	last_new_papers INTEGER NOT NULL,
	failures INTEGER NOT NULL,
	next_poll_at DATETIME,
	PRIMARY KEY (url)
);

CREATE TABLE paper_sources (
	id INTEGER NOT NULL,
	paper_id INTEGER NOT NULL,
	source TEXT NOT NULL,
	source_line INTEGER,
	seen_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT uq_paper_source UNIQUE (paper_id, source),
	FOREIGN KEY(paper_id) REFERENCES papers (id) ON DELETE CASCADE
);

CREATE TABLE edition_papers (
	edition_id INTEGER NOT NULL,
	paper_id INTEGER NOT NULL,
	position INTEGER NOT NULL,
	score FLOAT NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (edition_id, paper_id),
	FOREIGN KEY(edition_id) REFERENCES editions (id) ON DELETE CASCADE,
	FOREIGN KEY(paper_id) REFERENCES papers (id)
);

CREATE TABLE paper_embeddings (
	paper_id INTEGER NOT NULL,
	model VARCHAR(100) NOT NULL,
	vector BLOB NOT NULL,
	PRIMARY KEY (paper_id, model),
	FOREIGN KEY(paper_id) REFERENCES papers (id) ON DELETE CASCADE
);
