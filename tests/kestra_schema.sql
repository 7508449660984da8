-- Kestra's tables as its JDBC PostgreSQL migrations leave them, as far as a reader depends on
-- them (docs/engines/kestra.md §1). Used by tests/api/kestra.rs and scripts/kestra_bench.py.
CREATE TYPE state_type AS ENUM ('CREATED','RUNNING','PAUSED','RESTARTED','KILLING','SUCCESS','WARNING','FAILED','KILLED');
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'CANCELLED';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'QUEUED';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'RETRYING';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'RETRIED';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'SKIPPED';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'BREAKPOINT';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'SUBMITTED';
ALTER TYPE state_type ADD VALUE IF NOT EXISTS 'RESUBMITTED';
CREATE OR REPLACE FUNCTION STATE_FROMTEXT(text) RETURNS state_type AS $$ SELECT CAST($1 AS state_type) $$ LANGUAGE SQL IMMUTABLE;
CREATE OR REPLACE FUNCTION PARSE_ISO8601_DATETIME(text) RETURNS timestamptz AS $$ SELECT $1::timestamptz $$ LANGUAGE SQL IMMUTABLE;
CREATE OR REPLACE FUNCTION PARSE_ISO8601_DURATION(text) RETURNS interval AS $$ SELECT $1::interval $$ LANGUAGE SQL IMMUTABLE;
CREATE OR REPLACE FUNCTION FULLTEXT_INDEX(text) RETURNS tsvector AS $$ SELECT to_tsvector('simple', COALESCE($1, '')) $$ LANGUAGE SQL IMMUTABLE;
CREATE TABLE executions (
    key VARCHAR(250) NOT NULL PRIMARY KEY,
    value JSONB NOT NULL,
    deleted BOOL NOT NULL GENERATED ALWAYS AS (CAST(value ->> 'deleted' AS bool)) STORED,
    namespace VARCHAR(150) NOT NULL GENERATED ALWAYS AS (value ->> 'namespace') STORED,
    flow_id VARCHAR(150) NOT NULL GENERATED ALWAYS AS (value ->> 'flowId') STORED,
    state_current state_type NOT NULL GENERATED ALWAYS AS (STATE_FROMTEXT(value #>> '{state, current}')) STORED,
    state_duration BIGINT GENERATED ALWAYS AS ((ROUND(EXTRACT(EPOCH FROM PARSE_ISO8601_DURATION(value #>> '{state, duration}')) * 1000))::bigint) STORED,
    start_date TIMESTAMP NOT NULL GENERATED ALWAYS AS (PARSE_ISO8601_DATETIME(value #>> '{state, startDate}')) STORED,
    end_date TIMESTAMP GENERATED ALWAYS AS (PARSE_ISO8601_DATETIME(value #>> '{state, endDate}')) STORED,
    fulltext TSVECTOR GENERATED ALWAYS AS (FULLTEXT_INDEX(value ->> 'namespace') || FULLTEXT_INDEX(value ->> 'flowId') || FULLTEXT_INDEX(value ->> 'id')) STORED,
    id VARCHAR(150) NOT NULL GENERATED ALWAYS AS (value ->> 'id') STORED,
    tenant_id VARCHAR(250) GENERATED ALWAYS AS (value ->> 'tenantId') STORED,
    trigger_execution_id VARCHAR(150) GENERATED ALWAYS AS (value #>> '{trigger, variables, executionId}') STORED
);
CREATE INDEX executions_namespace ON executions ("deleted", "tenant_id", "namespace");
CREATE INDEX executions_flow_id ON executions ("deleted", "tenant_id", "flow_id");
CREATE INDEX executions_state_current ON executions ("deleted", "tenant_id", "state_current");
CREATE INDEX executions_start_date ON executions ("deleted", "tenant_id", "start_date");
CREATE INDEX executions_end_date ON executions ("deleted", "tenant_id", "end_date");
CREATE INDEX executions_state_duration ON executions ("deleted", "tenant_id", "state_duration");
CREATE INDEX executions_fulltext ON executions USING GIN (fulltext);
CREATE INDEX executions_labels ON executions USING GIN ((value -> 'labels'));
CREATE INDEX executions_trigger_execution_id ON executions ("deleted", "tenant_id", "trigger_execution_id");
CREATE TABLE service_instance (
    key VARCHAR(250) NOT NULL PRIMARY KEY,
    value JSONB NOT NULL,
    service_id VARCHAR(36) NOT NULL GENERATED ALWAYS AS (value ->> 'id') STORED,
    service_type VARCHAR(36) NOT NULL GENERATED ALWAYS AS (value ->> 'type') STORED,
    state VARCHAR(36) NOT NULL GENERATED ALWAYS AS (value ->> 'state') STORED,
    created_at TIMESTAMPTZ NOT NULL GENERATED ALWAYS AS (PARSE_ISO8601_DATETIME(value ->> 'createdAt')) STORED,
    updated_at TIMESTAMPTZ NOT NULL GENERATED ALWAYS AS (PARSE_ISO8601_DATETIME(value ->> 'updatedAt')) STORED
);
CREATE INDEX ix_service_instance_state ON service_instance (state);
CREATE INDEX ix_service_instance_type_created_at_updated_at ON service_instance (service_type, created_at, updated_at);
CREATE UNIQUE INDEX ix_service_id ON service_instance (service_id);
