-- Every runtime SQL statement of aol, one named block each.
-- A block starts with "-- name: <name>"; the comment lines after it document parameters.
-- aol/db/store.py wraps each block in one typed function; tests PREPARE every block.

-- name: schema_version_table
-- Is the Alembic version table there at all? (NULL when the schema was never migrated.)
SELECT to_regclass('public.aol_alembic_version')::text;

-- name: schema_revision
SELECT version_num FROM public.aol_alembic_version;

-- name: enqueue_action
-- $1 action_type, $2 payload as JSON text (so any connection works, whatever its codecs),
-- $3 idempotency_key, $4 not_before, $5 priority, $6 max_attempts
SELECT aol.enqueue($1, $2::text::jsonb, $3, $4, $5, $6);

-- name: enqueue_actions
-- Many actions in one call (aol.enqueue_many); payloads as JSON text, like enqueue_action.
-- Returns (ordinality, id) in input order.
-- $1 action types, $2 payloads as JSON text, $3 idempotency keys, $4 not_befores,
-- $5 priorities, $6 max_attempts
SELECT ordinality, id
  FROM aol.enqueue_many($1::text[], $2::text[]::jsonb[], $3::text[], $4::timestamptz[],
                        $5::integer[], $6::integer[]);

-- name: try_advisory_lock
-- Session-level, on a dedicated connection only: the lease lock (lock connection) or the
-- wake-up lock (LISTEN connection). $1 the key
SELECT pg_try_advisory_lock($1);

-- name: wait_advisory_lock
-- Block until the lock is free, then hold it (bounded by the session's lock_timeout):
-- a standby waiting for the lease, a worker going to sleep waiting for enqueuers. $1 the key
SELECT pg_advisory_lock($1);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1);

-- name: acquire_lease
-- Called right after taking the advisory lock. Bumping the epoch fences every write of
-- earlier holders: their writes name their own (older) epoch and so match nothing.
-- $1 owner, $2 ttl seconds
-- previous_expires_at keeps the old holder's expiry (SET sees the old column values): its
-- claims may be rescued once that has passed, since a holder that cannot renew stops by then.
UPDATE aol.lease
   SET owner = $1, epoch = epoch + 1, acquired_at = now(), heartbeat_at = now(),
       expires_at = now() + make_interval(secs => $2), released_at = NULL,
       holder_pid = pg_backend_pid(), previous_expires_at = expires_at
 WHERE id = 1
RETURNING epoch;

-- name: renew_lease
-- Heartbeat, sent on the lock connection. No row back means another holder has moved the
-- epoch on, or this session no longer holds the advisory lock (a bigint key shows in
-- pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1).
-- $1 owner, $2 epoch, $3 ttl seconds, $4 lock key
UPDATE aol.lease
   SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
 WHERE id = 1 AND owner = $1 AND epoch = $2
   AND EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = ($4::bigint >> 32)::oid
                  AND objid = ($4::bigint & 4294967295)::oid
                  AND objsubid = 1)
RETURNING expires_at;

-- name: release_lease
-- $1 owner, $2 epoch
UPDATE aol.lease
   SET released_at = now(), expires_at = now()
 WHERE id = 1 AND owner = $1 AND epoch = $2;

-- name: read_lease
SELECT owner, epoch, acquired_at, heartbeat_at, expires_at, holder_pid, previous_expires_at,
       now() AS now
  FROM aol.lease WHERE id = 1;

-- name: lease_lock_holder
-- The backend that holds the lease's advisory lock right now, if any.
-- $1 lock key
SELECT pid FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND objsubid = 1
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = ($1::bigint >> 32)::oid
   AND objid = ($1::bigint & 4294967295)::oid;

-- name: terminate_backend
-- Ends a stuck holder's session, which releases its advisory lock. Needs superuser or
-- membership in pg_signal_backend (and never works on a superuser's backend otherwise).
-- $1 pid, $2 milliseconds to wait for it to end
SELECT pg_terminate_backend($1::integer, $2::bigint);

-- name: set_lock_timeout
-- Bounds a standby's wait in pg_advisory_lock, so it can look at the lease row in between.
-- $1 a PostgreSQL interval string such as '1000ms' ('0' turns the bound off)
SELECT set_config('lock_timeout', $1, false);

-- name: read_flags
SELECT paused, killed, proof_mode, changed_by, changed_at, reason, kill_cancels
  FROM aol.control_flags WHERE id = 1;

-- name: set_control_flags
-- The audited function of migration 0003: NULL leaves a flag as it is, an empty reason is
-- refused (SQLSTATE 22023), changed_by is the login (session_user), and one flags_changed
-- row goes to execution_logs. Its UPDATE fires the NOTIFY trigger, so a sleeping worker wakes.
-- $1 paused, $2 killed, $3 proof_mode, $4 reason, $5 kill_cancels
SELECT paused, killed, proof_mode, changed_by, changed_at, reason, kill_cancels
  FROM aol.set_control_flags($1, $2, $3, $4, $5);

-- name: claim_actions
-- Read the control flags and claim up to $3 runnable, due actions in one statement (one
-- round trip before the handlers start): nothing is claimed while paused or killed, and the
-- flags come back with the claim from the same snapshot, so proof mode applies exactly as
-- it stood when the actions were claimed. One row per claimed action, each carrying the
-- flags; a single row of flags with NULL action columns when nothing was claimed.
-- SKIP LOCKED lets concurrent claimers pass over each other's rows instead of waiting, so
-- no row is handed out twice. The lease check makes a claimer whose epoch has moved on
-- claim nothing. Each claim counts as an attempt, so a poison action that kills workers
-- still ends dead; and an action that was rescued (its worker died while it ran) is
-- claimed alone, so such a poison action cannot burn the attempts of batch-mates.
-- $1 owner, $2 epoch, $3 limit, $4 claim ttl seconds
WITH flags AS (
    SELECT paused, killed, proof_mode FROM aol.control_flags WHERE id = 1
), lease AS (
    SELECT 1 FROM aol.lease l
     WHERE l.id = 1 AND l.epoch = $2 AND l.owner = $1
       AND NOT EXISTS (SELECT 1 FROM flags WHERE paused OR killed)
), suspect AS (
    SELECT id
      FROM aol.actions
     WHERE status = 'retry' AND rescues > 0 AND not_before <= now()
       AND EXISTS (SELECT 1 FROM lease)
     ORDER BY not_before, id
     LIMIT 1
       FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT id
      FROM aol.actions
     WHERE status IN ('pending', 'retry')
       AND not_before <= now()
       AND rescues = 0
       AND EXISTS (SELECT 1 FROM lease)
       AND NOT EXISTS (SELECT 1 FROM suspect)
     ORDER BY priority DESC, not_before, id
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), claimed AS (
    -- The picked ids are joined back by primary key as an array: a join against the CTEs
    -- lets the planner choose a hash join over a sequential scan once most rows are runnable.
    UPDATE aol.actions a
       SET status = 'running', attempts = a.attempts + 1, claimed_by = $1, claim_epoch = $2,
           claimed_at = now(), claim_expires_at = now() + make_interval(secs => $4),
           updated_at = now()
     WHERE a.id = ANY (ARRAY(SELECT id FROM suspect) || ARRAY(SELECT id FROM batch))
    RETURNING a.id, a.idempotency_key, a.action_type, a.payload, a.status, a.priority,
              a.attempts, a.max_attempts, a.not_before, a.claim_epoch, a.created_at
)
SELECT f.paused, f.killed, f.proof_mode, c.*
  FROM flags f LEFT JOIN claimed c ON true;

-- name: finish_actions
-- A tick's successes in one statement. Fenced row by row: a row is written only while it is
-- still this claim's (epoch and attempt) and the lease is still at this epoch. The ids that
-- come back are the results that were written; any other was refused.
-- The rows are found by primary key (`id = ANY`), never by a join against the unnested
-- input: the generic plan a prepared statement switches to after five runs estimates the
-- input at 10 rows and the running rows at 1, and nests the loops (1,000 x 1,000 row
-- comparisons, 400 ms instead of 50 at a batch of 1,000). Each row's attempt is looked up
-- by position in the input arrays, unless $9 gives the one attempt number they all share
-- (nearly always): COALESCE then never evaluates the lookup, a linear search per row that
-- cost 3 of 19 ms per 1,000.
-- $1 ids, $2 epoch, $3 attempts, $4 tick, $5 durations (ms), $6 messages, $7 artifact refs,
-- $8 artifact sha256s (arrays of equal length; NULL entries allowed in $6..$8), $9 the
-- attempt number of every row, or NULL when they differ
WITH done AS (
    UPDATE aol.actions a
       SET status = 'succeeded', finished_at = now(), updated_at = now(), last_error = NULL
     WHERE a.id = ANY ($1::bigint[]) AND a.status = 'running' AND a.claim_epoch = $2
       AND a.attempts = coalesce($9::integer,
                                 ($3::integer[])[array_position($1::bigint[], a.id)])
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id
), input AS (
    SELECT *
      FROM unnest($1::bigint[], $3::integer[], $5::double precision[], $6::text[],
                  $7::text[], $8::text[])
           AS t(id, attempt, duration_ms, message, artifact_ref, artifact_sha256)
)
INSERT INTO aol.execution_logs
    (action_id, attempt, epoch, tick, level, event, message, duration_ms, artifact_ref,
     artifact_sha256)
SELECT input.id, input.attempt, $2, $4, 'info', 'action_succeeded', input.message,
       input.duration_ms, input.artifact_ref, input.artifact_sha256
  FROM input
 WHERE input.id IN (SELECT id FROM done)
RETURNING action_id;

-- name: schedule_retry
-- Fenced like finish_action. The action runs again once $6 seconds have passed.
-- $1 id, $2 epoch, $3 attempt, $4 tick, $5 duration_ms, $6 delay seconds, $7 error
WITH moved AS (
    UPDATE aol.actions a
       SET status = 'retry', not_before = now() + make_interval(secs => $6),
           last_error = $7, updated_at = now()
     WHERE a.id = $1 AND a.status = 'running' AND a.claim_epoch = $2 AND a.attempts = $3
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id, a.not_before
)
INSERT INTO aol.execution_logs (action_id, attempt, epoch, tick, level, event, message,
                                duration_ms)
SELECT id, $3, $2, $4, 'warning', 'action_retry_scheduled',
       format('%s; next attempt at %s', $7::text, not_before), $5
  FROM moved
RETURNING action_id;

-- name: dead_letter_action
-- Fenced like finish_action. A dead action is kept, with its last error, until an
-- operator retries it.
-- $1 id, $2 epoch, $3 attempt, $4 tick, $5 duration_ms, $6 error
WITH moved AS (
    UPDATE aol.actions a
       SET status = 'dead', last_error = $6, finished_at = now(), updated_at = now()
     WHERE a.id = $1 AND a.status = 'running' AND a.claim_epoch = $2 AND a.attempts = $3
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id
)
INSERT INTO aol.execution_logs (action_id, attempt, epoch, tick, level, event, message,
                                duration_ms)
SELECT id, $3, $2, $4, 'error', 'action_dead', $6::text, $5 FROM moved
RETURNING action_id;

-- name: cancel_running_action
-- Fenced like finish_action. The kill switch with kill_cancels set: the attempt was cut
-- short and the action will not run again unless an operator says so.
-- $1 id, $2 epoch, $3 attempt, $4 tick, $5 reason
WITH moved AS (
    UPDATE aol.actions a
       SET status = 'cancelled', last_error = $5, finished_at = now(), updated_at = now()
     WHERE a.id = $1 AND a.status = 'running' AND a.claim_epoch = $2 AND a.attempts = $3
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id
)
INSERT INTO aol.execution_logs (action_id, attempt, epoch, tick, level, event, message)
SELECT id, $3, $2, $4, 'warning', 'action_cancelled', $5::text FROM moved
RETURNING action_id;

-- name: rescue_expired_claims
-- Claims whose validity has passed belong to a worker that died or lost its lease. Each
-- returns to retry, or to dead when it has used its last attempt. Only the lease holder
-- at epoch $1 rescues. $2 caps every action's own max_attempts (NULL: no cap).
-- $1 epoch, $2 worker's attempt cap or NULL
-- A claim of an older epoch is also rescued once the previous holder's lease has expired:
-- that holder has stopped executing by then (it stops when it cannot renew).
WITH lease AS (
    SELECT previous_expires_at FROM aol.lease WHERE id = 1 AND epoch = $1
), expired AS (
    SELECT a.id
      FROM aol.actions a, lease
     WHERE a.status = 'running'
       AND (a.claim_expires_at < now()
            OR (a.claim_epoch < $1 AND coalesce(lease.previous_expires_at, '-infinity') < now()))
       FOR UPDATE OF a SKIP LOCKED
), moved AS (
    UPDATE aol.actions a
       SET status = CASE WHEN a.attempts >= least(a.max_attempts, $2::integer)
                         THEN 'dead' ELSE 'retry' END,
           finished_at = CASE WHEN a.attempts >= least(a.max_attempts, $2::integer)
                              THEN now() END,
           not_before = now(), updated_at = now(), rescues = a.rescues + 1,
           last_error = format('attempt %s: claim by %s (epoch %s) expired at %s before '
                               'the attempt finished', a.attempts, a.claimed_by,
                               a.claim_epoch, a.claim_expires_at)
      FROM expired
     WHERE a.id = expired.id
    RETURNING a.id, a.status, a.attempts, a.last_error
), logged AS (
    INSERT INTO aol.execution_logs (action_id, attempt, epoch, level, event, message)
    SELECT id, attempts, $1, 'warning', 'action_rescued', last_error FROM moved
)
SELECT id, status, attempts FROM moved ORDER BY id;

-- name: record_tick
-- The tick's start is derived from the database clock and the measured duration.
-- $1 owner, $2 epoch, $3 tick, $4 duration_ms, $5 outcome, $6 claimed, $7 succeeded,
-- $8 retried, $9 dead, $10 error
INSERT INTO aol.tick_ledger
    (owner, epoch, tick, started_at, finished_at, duration_ms, outcome, claimed, succeeded,
     retried, dead, error)
VALUES ($1, $2, $3, clock_timestamp() - make_interval(secs => $4 / 1000.0), clock_timestamp(),
        $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT ON CONSTRAINT tick_ledger_epoch_tick_unique DO NOTHING;

-- name: next_wakeup
-- What an idle worker sleeps until: the earliest due runnable action, or the earliest claim
-- expiry to rescue, measured on the database clock.
SELECT now() AS now,
       (SELECT min(not_before) FROM aol.actions WHERE status IN ('pending', 'retry'))
           AS next_due,
       (SELECT min(CASE WHEN a.claim_epoch < l.epoch
                        THEN least(a.claim_expires_at, l.previous_expires_at)
                        ELSE a.claim_expires_at END)
          FROM aol.actions a, aol.lease l
         WHERE a.status = 'running' AND l.id = 1)
           AS next_expiry;

-- name: count_by_status
SELECT status, count(*) AS n FROM aol.actions GROUP BY status ORDER BY status;

-- name: count_live
-- Pending, retry, running and dead actions, each counted through its partial index: the
-- cost follows the live queue and the dead-letter queue, not the history.
SELECT status, count(*) AS n FROM aol.actions WHERE status IN ('pending', 'retry')
 GROUP BY status
UNION ALL
SELECT 'running', count(*) FROM aol.actions WHERE status = 'running'
UNION ALL
SELECT 'dead', count(*) FROM aol.actions WHERE status = 'dead';

-- name: count_finished
-- Succeeded and cancelled actions: the history, read whole (callers keep the answer, see
-- aol/db/slowread.py).
SELECT status, count(*) AS n FROM aol.actions WHERE status IN ('succeeded', 'cancelled')
 GROUP BY status;

-- name: last_tick
SELECT id, owner, epoch, tick, started_at, finished_at, duration_ms, outcome, claimed,
       succeeded, retried, dead, error
  FROM aol.tick_ledger ORDER BY id DESC LIMIT 1;

-- name: list_dead
-- $1 limit
SELECT id, idempotency_key, action_type, attempts, max_attempts, last_error, updated_at
  FROM aol.actions
 WHERE status = 'dead'
 ORDER BY updated_at DESC, id DESC
 LIMIT $1;

-- name: retry_dead
-- Return dead actions to retry, now. Each gets max_attempts more attempts (max_attempts is
-- raised by that much, capped at 1000; the attempt count and history stay).
-- NULL $1 means every dead action.
-- $1 ids (bigint[] or NULL), $2 changed_by, $3 reason
WITH moved AS (
    UPDATE aol.actions a
       SET status = 'retry', not_before = now(), finished_at = NULL, updated_at = now(),
           max_attempts = least(1000, a.attempts + a.max_attempts)
     WHERE a.status = 'dead' AND ($1::bigint[] IS NULL OR a.id = ANY ($1::bigint[]))
    RETURNING a.id, a.attempts
), logged AS (
    INSERT INTO aol.execution_logs (action_id, attempt, level, event, message)
    SELECT id, attempts, 'warning', 'action_retried_by_operator',
           format('by %s: %s', $2::text, coalesce($3::text, '')) FROM moved
), woken AS (
    SELECT pg_notify('aol_wakeup', 'retry') WHERE EXISTS (SELECT 1 FROM moved)
)
SELECT id FROM moved, (SELECT count(*) FROM woken) w ORDER BY id;

-- name: read_action
-- $1 id
SELECT id, idempotency_key, action_type, payload, status, priority, attempts, max_attempts,
       not_before, claim_epoch, created_at, last_error, finished_at
  FROM aol.actions WHERE id = $1;

-- name: list_action_logs
-- $1 action id
SELECT id, attempt, epoch, tick, level, event, message, duration_ms, artifact_ref,
       artifact_sha256, created_at
  FROM aol.execution_logs WHERE action_id = $1 ORDER BY id;

-- name: record_event
-- A notable event that is not an attempt result (kill, pause seen, lease changes).
-- $1 action_id (or NULL), $2 epoch, $3 tick, $4 level, $5 event, $6 message
INSERT INTO aol.execution_logs (action_id, epoch, tick, level, event, message)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: count_other_clients
-- Other client sessions on this server: the embedded server stays up while any remain.
SELECT count(*) FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();

-- name: notify
-- The listener's self-probe. Payloads never carry action content.
-- $1 channel, $2 payload
SELECT pg_notify($1, $2);

-- name: roles_parameters
-- The inputs of roles_create and roles_drop, which are DO blocks and so take no bind
-- parameters: set for the current transaction only, so run all three in one transaction.
-- $1 prefix, $2/$3/$4 the enqueuer/worker/operator password as a SCRAM-SHA-256 verifier
-- ('' = no password: a new role is NOLOGIN, an existing one keeps its login and password),
-- $5 pg_signal_backend for the worker: 'grant', 'revoke' or '' (leave as it is)
SELECT set_config('aol.roles_prefix', $1::text, true),
       set_config('aol.roles_enqueuer_password', $2::text, true),
       set_config('aol.roles_worker_password', $3::text, true),
       set_config('aol.roles_operator_password', $4::text, true),
       set_config('aol.roles_terminate', $5::text, true);

-- name: roles_create
-- Creates <prefix>_enqueuer, _worker and _operator where missing (NOLOGIN unless given a
-- password), refuses existing roles with more power than aol grants, and sets their rights
-- in this database to exactly the ones below: rights on schema aol granted by hand before
-- are taken away first. Needs CREATEROLE and ownership of schema aol (the migrating role);
-- pg_signal_backend needs its ADMIN option (a superuser).
DO $roles$
DECLARE
    v_prefix    text := current_setting('aol.roles_prefix', true);
    v_terminate text := coalesce(current_setting('aol.roles_terminate', true), '');
    v_enqueuer  text;
    v_worker    text;
    v_operator  text;
    v_suffix    text;
    v_role      text;
    v_verifier  text;
    v_risky     text;
BEGIN
    IF v_prefix IS NULL OR v_prefix !~ '^[a-z_][a-z0-9_]{0,53}$' THEN
        RAISE EXCEPTION 'aol roles: the prefix must be 1 to 54 characters of a-z, 0-9 and _, '
                        'not starting with a digit; got %', coalesce(v_prefix, '(none)')
            USING ERRCODE = '22023', COLUMN = 'prefix';
    END IF;
    IF v_terminate NOT IN ('', 'grant', 'revoke') THEN
        RAISE EXCEPTION 'aol roles: terminate must be grant, revoke or empty; got %', v_terminate
            USING ERRCODE = '22023';
    END IF;
    v_enqueuer := v_prefix || '_enqueuer';
    v_worker := v_prefix || '_worker';
    v_operator := v_prefix || '_operator';

    FOREACH v_suffix IN ARRAY ARRAY['enqueuer', 'worker', 'operator'] LOOP
        v_role := v_prefix || '_' || v_suffix;
        v_verifier := nullif(current_setting('aol.roles_' || v_suffix || '_password', true), '');
        SELECT concat_ws(', ', CASE WHEN r.rolsuper THEN 'SUPERUSER' END,
                         CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
                         CASE WHEN r.rolcreatedb THEN 'CREATEDB' END,
                         CASE WHEN r.rolreplication THEN 'REPLICATION' END,
                         CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END)
          INTO v_risky
          FROM pg_catalog.pg_roles r WHERE r.rolname = v_role;
        IF NOT FOUND THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        ELSIF v_risky <> '' THEN
            RAISE EXCEPTION 'aol roles: role % already exists with %, more than aol grants',
                            v_role, v_risky
                USING ERRCODE = '42710',
                      HINT = 'Drop or alter that role, or choose another --prefix.';
        ELSE
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON public.aol_alembic_version FROM %I', v_role);
        END IF;
        IF v_verifier IS NOT NULL THEN
            EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', v_role, v_verifier);
        END IF;
        IF NOT has_database_privilege(v_role, current_database(), 'CONNECT') THEN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), v_role);
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA aol TO %I', v_role);
    END LOOP;

    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'aol.enqueue(text, jsonb, text, timestamptz, integer, integer) TO %I, %I',
                   v_enqueuer, v_worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION aol.enqueue_many(text[], jsonb[], text[], '
                   'timestamptz[], integer[], integer[]) TO %I, %I',
                   v_enqueuer, v_worker);

    EXECUTE format('GRANT SELECT ON public.aol_alembic_version TO %I, %I', v_worker, v_operator);
    EXECUTE format('GRANT SELECT, UPDATE ON aol.lease TO %I', v_worker);
    -- An action's state only: what it is (type, payload, key, priority) and how often it
    -- may run (max_attempts) belong to the enqueuer and the operator.
    EXECUTE format('GRANT SELECT ON aol.actions TO %I', v_worker);
    EXECUTE format('GRANT UPDATE (status, attempts, claimed_by, claim_epoch, claimed_at, '
                   'claim_expires_at, not_before, last_error, finished_at, updated_at, rescues) '
                   'ON aol.actions TO %I', v_worker);
    EXECUTE format('GRANT SELECT ON aol.control_flags TO %I', v_worker);
    EXECUTE format('GRANT INSERT ON aol.execution_logs, aol.tick_ledger TO %I', v_worker);
    -- INSERT ... RETURNING action_id, and the ON CONFLICT arbiter of record_tick, read these.
    EXECUTE format('GRANT SELECT (action_id) ON aol.execution_logs TO %I', v_worker);
    EXECUTE format('GRANT SELECT (epoch, tick) ON aol.tick_ledger TO %I', v_worker);
    IF v_terminate = 'grant' THEN
        EXECUTE format('GRANT pg_signal_backend TO %I', v_worker);
    ELSIF v_terminate = 'revoke' AND EXISTS (
        SELECT FROM pg_catalog.pg_auth_members m
         WHERE m.roleid = 'pg_signal_backend'::regrole
           AND m.member = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = v_worker)
    ) THEN
        EXECUTE format('REVOKE pg_signal_backend FROM %I', v_worker);
    END IF;

    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA aol TO %I', v_operator);
    -- What `aol dlq retry` writes, and its audit row; flags only through the function.
    EXECUTE format('GRANT UPDATE (status, not_before, finished_at, updated_at, max_attempts) '
                   'ON aol.actions TO %I', v_operator);
    EXECUTE format('GRANT INSERT ON aol.execution_logs TO %I', v_operator);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'aol.set_control_flags(boolean, boolean, boolean, text, boolean) TO %I',
                   v_operator);
END
$roles$;

-- name: roles_drop
-- Takes back every right roles_create gave in this database and drops the roles (they own
-- nothing). A role that still holds rights in another database is kept (roles_describe
-- names those databases): the last database to drop it drops it.
DO $roles$
DECLARE
    v_prefix text := current_setting('aol.roles_prefix', true);
    v_suffix text;
    v_role   text;
BEGIN
    IF v_prefix IS NULL OR v_prefix !~ '^[a-z_][a-z0-9_]{0,53}$' THEN
        RAISE EXCEPTION 'aol roles: the prefix must be 1 to 54 characters of a-z, 0-9 and _, '
                        'not starting with a digit; got %', coalesce(v_prefix, '(none)')
            USING ERRCODE = '22023', COLUMN = 'prefix';
    END IF;
    FOREACH v_suffix IN ARRAY ARRAY['enqueuer', 'worker', 'operator'] LOOP
        v_role := v_prefix || '_' || v_suffix;
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = v_role);
        IF to_regnamespace('aol') IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA aol FROM %I', v_role);
            EXECUTE format('REVOKE ALL ON SCHEMA aol FROM %I', v_role);
        END IF;
        IF to_regclass('public.aol_alembic_version') IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON public.aol_alembic_version FROM %I', v_role);
        END IF;
        EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', current_database(), v_role);
        IF EXISTS (
            SELECT FROM pg_catalog.pg_auth_members m
             WHERE m.roleid = 'pg_signal_backend'::regrole
               AND m.member = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = v_role)
        ) THEN
            EXECUTE format('REVOKE pg_signal_backend FROM %I', v_role);
        END IF;
        BEGIN
            EXECUTE format('DROP ROLE %I', v_role);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;
        END;
    END LOOP;
END
$roles$;

-- name: roles_describe
-- The three roles of $1 prefix as they are now (exists is false for a missing one), with
-- the other databases where they hold rights (pg_shdepend: objects there, or the database).
SELECT s.suffix, $1::text || '_' || s.suffix AS role, r.oid IS NOT NULL AS exists,
       coalesce(r.rolcanlogin, false) AS can_login,
       coalesce(EXISTS (SELECT FROM pg_catalog.pg_auth_members m
                         WHERE m.roleid = 'pg_signal_backend'::regrole AND m.member = r.oid),
                false) AS can_terminate,
       coalesce((SELECT array_agg(DISTINCT d.datname::text ORDER BY d.datname::text)
                   FROM pg_catalog.pg_shdepend sd
                   JOIN pg_catalog.pg_database d
                     ON d.oid = CASE WHEN sd.classid = 'pg_catalog.pg_database'::regclass
                                     THEN sd.objid ELSE sd.dbid END
                  WHERE sd.refclassid = 'pg_catalog.pg_authid'::regclass
                    AND sd.refobjid = r.oid AND d.datname <> current_database()),
                ARRAY[]::text[]) AS elsewhere
  FROM unnest(ARRAY['enqueuer', 'worker', 'operator']) WITH ORDINALITY AS s (suffix, n)
  LEFT JOIN pg_catalog.pg_roles r ON r.rolname = $1::text || '_' || s.suffix
 ORDER BY s.n;

-- --- metrics: what GET /metrics reads from the database at scrape time ------------------

-- name: set_statement_timeout
-- For the dedicated metrics connection: its reads give up after $1 (such as '2000ms'), so a
-- scrape reports the database as unreadable instead of hanging behind a lock or a slow scan.
SELECT set_config('statement_timeout', $1::text, false);

-- name: read_metrics
-- One statement, so one snapshot: the live statuses' counts (as count_live: through their
-- partial indexes; succeeded and cancelled are counted apart, see aol/db/slowread.py), the
-- age in seconds of the oldest due runnable action (0 when none waits; answered from the
-- runnable-due index), and the age of the lease row's last heartbeat (NULL when the lease is
-- released or was never held), all on the database clock.
WITH counts AS (
    SELECT status, count(*) AS n FROM aol.actions WHERE status IN ('pending', 'retry')
     GROUP BY status
    UNION ALL
    SELECT 'running', count(*) FROM aol.actions WHERE status = 'running'
    UNION ALL
    SELECT 'dead', count(*) FROM aol.actions WHERE status = 'dead'
)
SELECT (SELECT coalesce(array_agg(status ORDER BY status), '{}') FROM counts) AS statuses,
       (SELECT coalesce(array_agg(n ORDER BY status), '{}') FROM counts) AS counts,
       coalesce((SELECT extract(epoch FROM now() - min(not_before))
                   FROM aol.actions
                  WHERE status IN ('pending', 'retry') AND not_before <= now()), 0)::float8
           AS queue_lag_s,
       (SELECT extract(epoch FROM now() - heartbeat_at)::float8
          FROM aol.lease
         WHERE id = 1 AND released_at IS NULL) AS lease_heartbeat_age_s;

-- ===================================================================================
-- The operator's dashboard (aol/web): what the page reads, and the one change it adds.
-- Pause, resume, kill, proof mode and dead-letter retry use the blocks above, as the
-- CLI does, so the two cannot disagree.
-- ===================================================================================

-- name: read_lease_state
-- The lease row as the dashboard shows it, timed on the database clock, with the backend
-- that holds the advisory lock right now (NULL when nobody does).
-- $1 lock key
SELECT l.owner, l.epoch, l.acquired_at, l.heartbeat_at, l.expires_at, l.released_at,
       l.holder_pid, now() AS now,
       extract(epoch FROM now() - l.heartbeat_at)::double precision AS since_heartbeat_s,
       extract(epoch FROM l.expires_at - now())::double precision AS until_expiry_s,
       (SELECT k.pid FROM pg_locks k
         WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
           AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND k.classid = ($1::bigint >> 32)::oid
           AND k.objid = ($1::bigint & 4294967295)::oid
         LIMIT 1) AS lock_pid
  FROM aol.lease l WHERE l.id = 1;

-- name: tick_history
-- Recent ticks in one-minute buckets, for the page's charts. The ledger has no index on
-- time and grows without bound, so only the newest $2 rows are read (backwards along the
-- primary key), then kept if they finished within the last $1 seconds.
-- $1 window seconds, $2 most rows read
SELECT date_trunc('minute', t.finished_at) AS minute, count(*) AS ticks,
       avg(t.duration_ms)::double precision AS avg_ms,
       max(t.duration_ms)::double precision AS max_ms,
       sum(t.claimed)::bigint AS claimed, sum(t.succeeded)::bigint AS succeeded,
       sum(t.retried)::bigint AS retried, sum(t.dead)::bigint AS dead
  FROM (SELECT finished_at, duration_ms, claimed, succeeded, retried, dead
          FROM aol.tick_ledger ORDER BY id DESC LIMIT $2) t
 WHERE t.finished_at > now() - make_interval(secs => $1)
 GROUP BY 1
 ORDER BY 1;

-- name: queue_lag
-- The oldest runnable action that is due (pending or retry, not_before passed): how long
-- it has waited since it became due. No row when nothing is waiting.
SELECT id, action_type, status, not_before,
       extract(epoch FROM now() - not_before)::double precision AS lag_s
  FROM aol.actions
 WHERE status IN ('pending', 'retry') AND not_before <= now()
 ORDER BY not_before, id
 LIMIT 1;

-- name: list_recent_logs
-- The newest execution log rows, with the action type when the row is about an action.
-- $1 limit
SELECT l.id, l.action_id, a.action_type, l.attempt, l.epoch, l.tick, l.level, l.event,
       l.message, l.duration_ms, l.artifact_ref, l.artifact_sha256, l.created_at
  FROM aol.execution_logs l
  LEFT JOIN aol.actions a ON a.id = l.action_id
 ORDER BY l.id DESC
 LIMIT $1;

-- name: list_actions
-- Actions, newest change first, filtered by status and type (NULL: any). An action's last
-- change is its finish when it has finished_at (aol sets updated_at with it), else its last
-- update. Each part is read in the order of an index and cut at the limit (the runnable and
-- running partial indexes; actions_finished_idx, or actions_cancelled_idx for cancelled
-- ones; actions_unstamped_idx for a finished status without finished_at, which only SQL
-- outside aol writes), so a status view costs the same with a long history (a type filter
-- reads finished rows until it has found $3 of that type). Every row is in exactly one
-- part. Planned per call (the dashboard's pool uses custom plans), so a given status
-- reaches only its own parts.
-- $1 status, $2 action type, $3 limit
WITH runnable AS (
    SELECT id, updated_at AS changed_at FROM aol.actions
     WHERE status IN ('pending', 'retry') AND finished_at IS NULL
       AND ($1::text IS NULL OR status = $1::text)
       AND ($2::text IS NULL OR action_type = $2::text)
     ORDER BY updated_at DESC, id DESC
     LIMIT $3
), running AS (
    SELECT id, updated_at AS changed_at FROM aol.actions
     WHERE status = 'running' AND finished_at IS NULL
       AND ($1::text IS NULL OR status = $1::text)
       AND ($2::text IS NULL OR action_type = $2::text)
     ORDER BY updated_at DESC, id DESC
     LIMIT $3
), finished AS (
    SELECT id, finished_at AS changed_at FROM aol.actions
     WHERE finished_at IS NOT NULL
       AND ($1::text IS NULL OR status = $1::text)
       AND ($2::text IS NULL OR action_type = $2::text)
     ORDER BY finished_at DESC, id DESC
     LIMIT $3
), unstamped AS (
    SELECT id, updated_at AS changed_at FROM aol.actions
     WHERE finished_at IS NULL AND status IN ('succeeded', 'cancelled', 'dead')
       AND ($1::text IS NULL OR status = $1::text)
       AND ($2::text IS NULL OR action_type = $2::text)
     ORDER BY updated_at DESC, id DESC
     LIMIT $3
), newest AS (
    SELECT id, changed_at FROM runnable
    UNION ALL SELECT id, changed_at FROM running
    UNION ALL SELECT id, changed_at FROM finished
    UNION ALL SELECT id, changed_at FROM unstamped
     ORDER BY changed_at DESC, id DESC
     LIMIT $3
)
SELECT a.id, a.idempotency_key, a.action_type, a.payload, a.status, a.priority, a.attempts,
       a.max_attempts, a.not_before, a.last_error, a.claimed_by, a.claim_epoch, a.created_at,
       a.updated_at, a.finished_at
  FROM newest n JOIN aol.actions a ON a.id = n.id
 ORDER BY n.changed_at DESC, n.id DESC;

-- name: list_action_types
-- Every action type stored, for the type filter.
SELECT DISTINCT action_type FROM aol.actions ORDER BY action_type;

-- name: read_action_detail
-- One action with every column an operator may want to see.
-- $1 id
SELECT id, idempotency_key, action_type, payload, status, priority, attempts, max_attempts,
       not_before, last_error, claimed_by, claim_epoch, claimed_at, claim_expires_at,
       rescues, created_at, updated_at, finished_at
  FROM aol.actions WHERE id = $1;

-- name: read_log_artifact
-- The artifact an execution log row points to; the dashboard serves files by this id,
-- never by a path taken from the request.
-- $1 execution log id
SELECT l.id, l.action_id, l.artifact_ref, l.artifact_sha256, l.created_at, a.action_type
  FROM aol.execution_logs l
  LEFT JOIN aol.actions a ON a.id = l.action_id
 WHERE l.id = $1 AND l.artifact_ref IS NOT NULL;

-- name: cancel_waiting_action
-- An operator cancels an action that has not started: fenced on its status, so an action
-- the worker has claimed meanwhile (running) or that has finished is left alone. The
-- UPDATE waits for a concurrent claim's row lock and then re-checks the status. One
-- action_cancelled_by_operator row records who and why. Writes only columns the operator
-- role may update (status, finished_at, updated_at).
-- $1 id, $2 changed_by, $3 reason
-- Returns the status before (NULL: no such action) and whether it was cancelled.
WITH before AS (
    SELECT status FROM aol.actions WHERE id = $1
), moved AS (
    UPDATE aol.actions a
       SET status = 'cancelled', finished_at = now(), updated_at = now()
     WHERE a.id = $1 AND a.status IN ('pending', 'retry')
    RETURNING a.id, a.attempts
), logged AS (
    INSERT INTO aol.execution_logs (action_id, attempt, level, event, message)
    SELECT id, attempts, 'warning', 'action_cancelled_by_operator',
           format('by %s: %s', $2::text, $3::text) FROM moved
)
SELECT (SELECT status FROM before) AS status_before,
       EXISTS (SELECT 1 FROM moved) AS cancelled;

-- --- retention (aol prune) -----------------------------------------------------------

-- name: prune_actions
-- One batch of finished actions older than $2 seconds (by finished_at), deleted with their
-- execution log rows (ON DELETE CASCADE). Oldest first; rows locked elsewhere are left for
-- the next batch. Deleting an action frees its idempotency key.
-- $1 statuses to prune, $2 age in seconds, $3 batch size
WITH doomed AS (
    SELECT id
      FROM aol.actions
     WHERE status = ANY ($1::text[])
       AND finished_at < now() - make_interval(secs => $2)
     ORDER BY finished_at
     LIMIT $3
       FOR UPDATE SKIP LOCKED
)
DELETE FROM aol.actions a
 USING doomed
 WHERE a.id = doomed.id
RETURNING a.id;

-- name: count_prunable
-- What prune_actions would delete, by status, without deleting (aol prune --dry-run).
-- $1 statuses, $2 age in seconds
SELECT status, count(*) AS n
  FROM aol.actions
 WHERE status = ANY ($1::text[])
   AND finished_at < now() - make_interval(secs => $2)
 GROUP BY status;

-- name: prune_ticks
-- One batch of tick ledger rows older than $1 seconds, oldest first (by primary key).
-- $1 age in seconds, $2 batch size
DELETE FROM aol.tick_ledger
 WHERE id IN (SELECT id
                FROM aol.tick_ledger
               WHERE finished_at < now() - make_interval(secs => $1)
               ORDER BY id
               LIMIT $2)
RETURNING id;
