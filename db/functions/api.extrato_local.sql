-- Citus: api.extrato for a client whose shard is on this node, read from the
-- shard's own tables with the statement crebito.shard_local prepared, kept as
-- a plain PostgreSQL plan; through the distributed tables Citus plans the
-- statement twice per call, for the cluster and again for the shard, and an
-- extrato cost a worker 4.5 times single-node's CPU.
--
-- Same parameter and answers as api.extrato, but for a client whose shard is
-- not here (the caller's map is older than a move): then every out parameter
-- is null, and the caller sends the call as api.extrato, which Citus runs on
-- the client's node.
create function api.extrato_local(
    cliente integer,
    out status integer,
    out resposta text,
    out duravel boolean
)
language plpgsql
security definer
set search_path = ''
-- As api.transacao_local, and as api.extrato: one generic plan per session
-- and shard, reading the ten newest entries from the end of the index.
set plan_cache_mode = force_generic_plan
set enable_sort = off
as $$
declare
    shard bigint := crebito.shard_local(cliente, false);
    assincrono boolean;
begin
    if shard is null then
        return;
    end if;
    execute pg_catalog.format('execute crebito_extrato_%s(%s)', shard, cliente)
    into status, resposta, assincrono;
    -- (EXECUTE leaves FOUND as it was: no row leaves the status null.)
    if status is null then
        status := 404;
        resposta := crebito.erro('cliente não encontrado');
    end if;
    -- As api.extrato: when the row's last change did not wait for the disk,
    -- this commit waits for that flush.
    if assincrono then
        perform crebito.descarregar_no_commit();
    end if;
    duravel := true;
end;
$$;
