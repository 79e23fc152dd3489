-- Makes durable every commit the caller's last call could have seen: returns
-- once the WAL is flushed past every commit record written so far. The API
-- holds each answer until this returns, which lets api.transacao commit
-- without waiting for the disk and so release its client's row lock at once
-- (early lock release). When nothing is waiting to be flushed it writes
-- nothing. `cliente` names the client whose call it confirms, so that a
-- distributed deployment runs it on the node that ran that call.
create function api.confirmar(
    cliente integer,
    out descarregou boolean
)
language plpgsql
security definer
set search_path = ''
as $$
begin
    descarregou := pg_catalog.pg_current_wal_flush_lsn() < pg_catalog.pg_current_wal_insert_lsn();
    if descarregou then
        -- A commit waits for its flush only if it has an xid and wrote WAL
        -- before its commit record: a transactional logical message has both
        -- (an xid alone does not). Set here, the setting lasts until this
        -- transaction commits; a SET clause would be undone before that.
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
        perform pg_catalog.pg_logical_emit_message(true, 'crebito', '');
    end if;
end;
$$;
