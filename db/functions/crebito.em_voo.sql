-- Marks the caller as a writer of `cliente` in flight until its commit, and
-- returns whether it is alone (early lock release, see api.transacao).
--
-- A writer of this client holds this lock until it commits: one that finds
-- no other holder takes it exclusively, and its commit may wait for the disk,
-- as nobody queues behind its row lock (one who comes meanwhile waits here as
-- briefly). The others hold it shared and commit without waiting, so the row
-- lock is free for the next one at once. The lone writer, the official load's
-- usual case, pays one call.
create function crebito.em_voo(cliente integer)
returns boolean
language plpgsql
-- No SET clause, as crebito.recusa: its callers run with an empty search_path.
as $$
declare
    -- First key of the advisory locks that mark a client's writers in flight.
    em_voo constant integer := 1;
    sozinho boolean;
    ajustado text;
begin
    -- (Assignments, not PERFORM: a lone function call is then evaluated
    -- directly instead of as a query, and this is on every write.)
    sozinho := pg_catalog.pg_try_advisory_xact_lock(em_voo, cliente);
    if not sozinho and not pg_catalog.pg_try_advisory_xact_lock_shared(em_voo, cliente) then
        -- One that was alone holds it exclusively until its commit; once it
        -- has committed, this one may be alone in turn.
        perform pg_catalog.pg_advisory_xact_lock_shared(em_voo, cliente);
        sozinho := pg_catalog.pg_try_advisory_xact_lock(em_voo, cliente);
    end if;
    -- Set in the body, a local setting lasts until the commit (a SET clause
    -- would be undone when the function returns). Set either way, so a
    -- caller's own session setting cannot make a lone commit skip the flush
    -- its `duravel` promises.
    ajustado := pg_catalog.set_config('synchronous_commit', case when sozinho then 'on' else 'off' end, true);
    return sozinho;
end;
$$;
