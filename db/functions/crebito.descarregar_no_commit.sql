-- Makes the caller's commit wait until the WAL is flushed past every commit
-- record written so far, and so past every commit its transaction could have
-- seen. Returns whether that needed a write: when the WAL is already flushed
-- up to where it is being written, nothing is written and the commit is free.
-- A read that could show a commit made without waiting for the disk calls it
-- last, so its answer leaves only once what it showed is durable.
create function crebito.descarregar_no_commit()
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    -- Flushed here is enough only where this disk is the only one promised:
    -- with a synchronous standby (the HA topology) the commit below is what
    -- waits for the standby's flush too, so it is always made.
    if pg_catalog.current_setting('synchronous_standby_names') = ''
        and pg_catalog.pg_current_wal_flush_lsn() >= pg_catalog.pg_current_wal_insert_lsn() then
        return false;
    end if;
    -- A commit waits for its flush only if it has an xid and wrote WAL
    -- before its commit record: a transactional logical message has both
    -- (an xid alone does not). Local and set in the body, the setting lasts
    -- until the commit; a SET clause would be undone when this returns.
    perform pg_catalog.set_config('synchronous_commit', 'on', true);
    perform pg_catalog.pg_logical_emit_message(true, 'crebito', '');
    return true;
end;
$$;
