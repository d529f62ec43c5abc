-- Attune's store. Postgres is the source of truth for every job; Redis only carries job ids.

-- API keys: the token is shown once; only its sha256 is kept (tokens are 256-bit random, so a
-- plain hash is enough: there is nothing to brute-force).
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    token_sha256 text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Cron schedules: each tick creates one job from the template.
CREATE TABLE schedules (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES api_keys (id),
    name text,
    cron text NOT NULL,
    template jsonb NOT NULL,
    max_attempts integer NOT NULL,
    paused boolean NOT NULL DEFAULT false,
    next_fire_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE NOT paused;

CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES api_keys (id),
    kind text NOT NULL,
    -- The Redis stream that carries it: `cpu` or `gpu`, from the spec's device.
    queue text NOT NULL,
    name text,
    tags text[] NOT NULL DEFAULT '{}',
    -- The engine's spec, normalized (defaults filled in) by JobSpec::from_value/to_value.
    spec jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Attempts counted against max_attempts since the job was submitted or last retried.
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    cancel_requested boolean NOT NULL DEFAULT false,
    -- The fencing token: the only run allowed to write for this job.
    current_run uuid,
    error text,
    result jsonb,
    progress jsonb,
    idempotency_key text,
    schedule_id uuid REFERENCES schedules (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When the job last became queued, and the earliest time it may run (retry backoff).
    queued_at timestamptz NOT NULL DEFAULT now(),
    not_before timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id DESC);
CREATE INDEX jobs_status_queue ON jobs (status, queue);

-- One row per attempt.
CREATE TABLE runs (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- 1, 2, ... over the job's whole life (retries included).
    attempt integer NOT NULL,
    worker_id text NOT NULL,
    -- lost: its worker stopped heartbeating and another claim took over; released: its worker
    -- shut down and handed the job back. Neither keeps metrics.
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'lost', 'released')),
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    UNIQUE (job_id, attempt)
);
CREATE INDEX runs_job ON runs (job_id, attempt);

-- Event::Metric values: one row per (series, name, step) of a run.
CREATE TABLE metrics (
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    series text NOT NULL,
    name text NOT NULL,
    step bigint NOT NULL,
    value double precision NOT NULL,
    -- Insertion order, for live viewers that follow a run.
    seq bigserial NOT NULL,
    PRIMARY KEY (run_id, series, name, step)
);
CREATE INDEX metrics_run_seq ON metrics (run_id, seq);

CREATE TABLE logs (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at timestamptz NOT NULL DEFAULT now(),
    level text NOT NULL,
    message text NOT NULL
);
CREATE INDEX logs_run ON logs (run_id, id);

-- Checkpoints a run wrote; the bytes live in the object store under their sha256.
CREATE TABLE checkpoints (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    run_id uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- Path in the job's output folder, e.g. `model.safetensors`.
    name text NOT NULL,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    -- The checkpoint's JSON sidecar (architecture, normalization, training provenance).
    info jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, name)
);
CREATE INDEX checkpoints_sha256 ON checkpoints (sha256);

-- Checkpoints a job read (by content), from its result's provenance.
CREATE TABLE checkpoint_uses (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    sha256 text NOT NULL,
    path text NOT NULL,
    PRIMARY KEY (job_id, sha256, path)
);
CREATE INDEX checkpoint_uses_sha256 ON checkpoint_uses (sha256);

-- One row per schedule tick: the primary key makes a tick create at most one job, whatever
-- the number of api instances.
CREATE TABLE schedule_fires (
    schedule_id uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at timestamptz NOT NULL,
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (schedule_id, fire_at)
);

-- Workers register and heartbeat; a queue with no live worker is reported on its jobs.
CREATE TABLE workers (
    id text PRIMARY KEY,
    queue text NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);
CREATE INDEX workers_queue ON workers (queue, heartbeat_at);
