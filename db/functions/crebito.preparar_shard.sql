-- Citus: prepares, once per session, api.transacao_local's two statements on
-- the own tables of one shard group (`shard` of crebito.cliente, which holds
-- `cliente`), so each call runs a kept plain PostgreSQL plan:
--   crebito_lancar_<shard>(cliente, valor, assincrono, tipo, descricao), a
--     credit of `valor` (a debit when negative) and its ledger entry, as
--     api.transacao's UPDATE and INSERT: the balance and limit, or no row when
--     the client is not there or the change does not fit;
--   crebito_cliente_<shard>(cliente), the client's `assincrono`, for a refusal.
-- A session setting remembers it. Setting and statement are both lost with the
-- session; if the transaction that prepared them rolls back, the setting goes
-- and the statements stay, and the next call finds them there. Returns whether
-- it prepared them now.
create function crebito.preparar_shard(shard bigint, cliente integer)
returns boolean
language plpgsql
as $$
declare
    preparado constant text := 'crebito.preparado_' || shard;
    ajustado text;
begin
    if pg_catalog.current_setting(preparado, true) = 'sim' then
        return false;
    end if;
    begin
        execute 'prepare crebito_lancar_' || shard || '(integer, bigint, boolean, "char", text) as'
        || ' with c as (update crebito.cliente_' || shard || ' as c'
        || ' set saldo = c.saldo + $2, ultimo_lancamento = c.ultimo_lancamento + 1, assincrono = $3'
        || ' where c.id = $1 and case when $2 > 0 then c.saldo <= 9223372036854775807 - $2'
        || ' else c.saldo >= -$2 - c.limite end'
        || ' returning c.saldo, c.limite, c.ultimo_lancamento),'
        -- The time is taken here, under the row lock, as api.transacao does.
        || ' t as (insert into crebito.transacao_'
        || pg_catalog.get_shard_id_for_distribution_column('crebito.transacao', cliente)
        || ' (cliente_id, lancamento, valor, tipo, descricao, realizada_em)'
        || ' select $1, c.ultimo_lancamento, abs($2), $4, $5, clock_timestamp() from c)'
        || ' select c.saldo, c.limite from c';
        execute 'prepare crebito_cliente_' || shard || '(integer) as'
        || ' select c.assincrono from crebito.cliente_' || shard || ' as c where c.id = $1';
    exception
        when duplicate_prepared_statement then
            null;
    end;
    ajustado := pg_catalog.set_config(preparado, 'sim', false);
    return true;
end;
$$;
