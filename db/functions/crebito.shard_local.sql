-- Citus: the shard of crebito.cliente that holds `cliente`, when it is on this
-- node; null when it is not (the caller's map is older than a move), and then
-- nothing is done here.
--
-- For a write (`escrever`) it takes what Citus's own writes take first: the
-- shard group's metadata lock, shared, until the commit. A shard move takes it
-- exclusively on every node while it copies (block_writes, the only mode
-- without logical WAL; with logical replication, before the last catch-up)
-- and holds it until the new placement is recorded, so a write that finds the
-- shard here either runs before the move, and is copied, or waits for it and
-- then finds the shard gone from this node. A read takes nothing, as Citus's
-- own reads: until the move records the new placement no write lands
-- anywhere else, so the copy here is whole, and a read keeps being served
-- while the shard is copied.
--
-- Once per session and shard group it prepares the statements the callers run
-- on the group's own tables, so each call runs a kept plain PostgreSQL plan:
--   crebito_lancar_<shard>(cliente, valor, assincrono, tipo, descricao), a
--     credit of `valor` (a debit when negative) and its ledger entry, as
--     api.transacao's UPDATE and INSERT: the balance and limit, or no row when
--     the client is not there or the change does not fit;
--   crebito_cliente_<shard>(cliente), the client's `assincrono`, for a refusal;
--   crebito_extrato_<shard>(cliente), api.extrato's status, answer and
--     `assincrono`, or no row.
-- A session setting remembers it. Setting and statements are both lost with
-- the session; if the transaction that prepared them rolls back, the setting
-- goes and the statements stay, and the next call finds them there.
create function crebito.shard_local(cliente integer, escrever boolean)
returns bigint
language plpgsql
as $$
declare
    -- ShareLock, in lock_shard_metadata's numbering.
    compartilhado constant integer := 5;
    shard bigint := pg_catalog.get_shard_id_for_distribution_column('crebito.cliente', cliente);
    lancamentos bigint;
    travado text;
    ajustado text;
begin
    if escrever then
        -- (An assignment, not PERFORM, as in crebito.em_voo.)
        travado := pg_catalog.lock_shard_metadata(compartilhado, array[shard])::text;
    end if;
    -- Read after the lock: a move that ended meanwhile has recorded its new node.
    if not exists (
        select from pg_catalog.pg_dist_placement as p
        inner join pg_catalog.pg_dist_local_group as g on p.groupid = g.groupid
        where p.shardid = shard
    ) then
        return null;
    end if;
    if pg_catalog.current_setting('crebito.preparado_' || shard, true) = 'sim' then
        return shard;
    end if;
    lancamentos := pg_catalog.get_shard_id_for_distribution_column('crebito.transacao', cliente);
    begin
        execute 'prepare crebito_lancar_' || shard || '(integer, bigint, boolean, "char", text) as'
        || ' with c as (update crebito.cliente_' || shard || ' as c'
        || ' set saldo = c.saldo + $2, ultimo_lancamento = c.ultimo_lancamento + 1, assincrono = $3'
        || ' where c.id = $1 and case when $2 > 0 then c.saldo <= 9223372036854775807 - $2'
        || ' else c.saldo >= -$2 - c.limite end'
        || ' returning c.saldo, c.limite, c.ultimo_lancamento),'
        -- The time is taken here, under the row lock, as api.transacao does.
        || ' t as (insert into crebito.transacao_' || lancamentos
        || ' (cliente_id, lancamento, valor, tipo, descricao, realizada_em)'
        || ' select $1, c.ultimo_lancamento, abs($2), $4, $5, clock_timestamp() from c)'
        || ' select c.saldo, c.limite from c';
        execute 'prepare crebito_cliente_' || shard || '(integer) as'
        || ' select c.assincrono from crebito.cliente_' || shard || ' as c where c.id = $1';
        -- api.extrato's statement, on the group's tables.
        execute 'prepare crebito_extrato_' || shard || '(integer) as'
        || ' select 200, crebito.extrato_resposta(c.saldo, c.limite, ('
        || ' select json_agg(crebito.lancamento_json(t.valor, t.tipo, t.descricao, t.realizada_em)'
        || ' order by t.lancamento desc)'
        || ' from (select t.lancamento, t.valor, t.tipo, t.descricao, t.realizada_em'
        || ' from crebito.transacao_' || lancamentos || ' as t where t.cliente_id = $1'
        || ' order by t.lancamento desc limit 10) as t'
        || ')), c.assincrono from crebito.cliente_' || shard || ' as c where c.id = $1';
    exception
        when duplicate_prepared_statement then
            null;
    end;
    ajustado := pg_catalog.set_config('crebito.preparado_' || shard, 'sim', false);
    return shard;
end;
$$;
