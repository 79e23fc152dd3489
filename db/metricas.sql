-- What monitoring may read: PostgreSQL's statistics (pg_monitor) and
-- crebito's own figures, from one function, for the login of the metrics
-- exporter (stack/metricas.yml holds its queries). Run by db/schema.sql, and
-- again on every start of the native stack, so a database made before it
-- gets it too: every statement may run twice.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'crebito_metricas') then
        create role crebito_metricas login;
    end if;
end
$$;
-- Every session's state and waits, the replication and WAL views.
grant pg_monitor to crebito_metricas;
-- A scrape that hangs must not pile up sessions.
alter role crebito_metricas set statement_timeout = '2s';

create schema if not exists ops authorization crebito;
set role crebito;

-- crebito's figures, as one row. SECURITY DEFINER, so the exporter reads these
-- figures and no table; and on Citus the coordinator reaches the shards as
-- crebito, which may log in on the workers (a view would reach them as the
-- caller, who may not). PL/pgSQL: Citus plans no SQL function with
-- parameters. The figures that read the whole ledger (the audit, the counts)
-- only when com_livro: stack/metricas.yml asks for them less often than for
-- the rest, which read the clients' rows alone.
create or replace function ops.metricas(com_livro boolean)
returns table (
    clientes bigint,
    lancamentos numeric,
    saldo_total numeric,
    clientes_assincronos bigint,
    saldos_abaixo_do_limite bigint,
    violacoes bigint,
    linhas bigint,
    chaves_aceitas bigint,
    chaves_recusadas bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
    -- Entries are numbered 1, 2, 3... per client with no gap (the audit checks
    -- it), so the newest numbers add up to the ledger's rows without reading
    -- the ledger.
    select
        count(*),
        coalesce(sum(cl.ultimo_lancamento), 0),
        coalesce(sum(cl.saldo), 0),
        count(*) filter (where cl.assincrono),
        count(*) filter (where cl.saldo < -cl.limite)
    into clientes, lancamentos, saldo_total, clientes_assincronos, saldos_abaixo_do_limite
    from crebito.cliente as cl;
    if com_livro then
        select count(*) into violacoes from api.auditoria();
        select count(*) into linhas from crebito.transacao;
        select
            count(*) filter (where i.status = 200),
            count(*) filter (where i.status <> 200)
        into chaves_aceitas, chaves_recusadas
        from crebito.idempotencia as i;
    end if;
    return next;
end;
$$;

reset role;
revoke execute on function ops.metricas(boolean) from public;
grant usage on schema ops to crebito_metricas;
grant execute on function ops.metricas(boolean) to crebito_metricas;
