-- The whole database of crebito: tables, roles, seed and the API functions.
-- Run once on an empty database with `psql -v ON_ERROR_STOP=1 -f db/schema.sql`
-- (the Docker image's init directory runs it the same way). On a Citus
-- cluster, on the coordinator once the workers are added, with `-v citus=1`
-- and `-v shards=N`: the same schema, sharded by client id into N shards.

-- Roles first. `crebito` owns every schema, table and function but is no
-- superuser and cannot log in (but on a cluster): the SECURITY DEFINER functions run with its
-- rights, so a flaw in one can reach crebito's tables and nothing else.
-- `crebito_api`, the API's login, may only EXECUTE the functions of `api`.
do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'crebito') then
        create role crebito nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'crebito_api') then
        create role crebito_api login;
    end if;
end
$$;

\if :{?citus}
-- Citus creates the shards on the workers as their owner, over TCP, so the
-- owner must log in there (with the password the launcher gave it).
alter role crebito login;
\endif

-- Tables live in `crebito`; the API role sees only the functions in `api`.
create schema crebito authorization crebito;
create schema api authorization crebito;
-- Whatever is created from here on belongs to `crebito`.
set role crebito;

create table crebito.cliente (
    -- Positive, as the API's routes: the API warms its sessions up with calls
    -- for client 0, which therefore never exists.
    id integer primary key check (id > 0),
    limite bigint not null check (limite >= 0),
    saldo bigint not null default 0,
    -- The number of the client's newest ledger entry, taken in the same UPDATE
    -- that takes the row lock, so entries are numbered 1, 2, 3... in the order
    -- they changed the balance, on whichever node the client's rows live.
    ultimo_lancamento bigint not null default 0 check (ultimo_lancamento >= 0),
    -- Whether the last change to this row committed without waiting for the
    -- WAL flush (api.transacao): a read that shows it must wait for the flush.
    assincrono boolean not null default false,
    -- The last line of defence: even a bug in a function cannot overdraw.
    constraint saldo_dentro_do_limite check (saldo >= -limite)
);

-- The ledger, keyed by client and entry number: a client's rows sit together
-- in one index (and on one node when sharded), and its newest ten are the
-- last ten keys of that index. The number, not a sequence, gives the order: a
-- sequence draws from a different range on each node of a cluster.
create table crebito.transacao (
    cliente_id integer not null references crebito.cliente (id),
    lancamento bigint not null check (lancamento > 0),
    valor bigint not null check (valor > 0),
    tipo "char" not null check (tipo in ('c', 'd')),
    descricao text not null check (char_length(descricao) between 1 and 10),
    realizada_em timestamptz not null default clock_timestamp(),
    constraint transacao_pkey primary key (cliente_id, lancamento)
);

-- Idempotency keys, written in the same transaction as the ledger row, so the
-- stored answer exists exactly when the transaction does.
create table crebito.idempotencia (
    cliente_id integer not null references crebito.cliente (id),
    chave text not null,
    pedido jsonb not null,
    status smallint not null,
    resposta text not null,
    -- The entry the key created, if any; it belongs to the key's own client.
    lancamento bigint,
    primary key (cliente_id, chave),
    constraint idempotencia_lancamento_fkey foreign key (cliente_id, lancamento)
    references crebito.transacao (cliente_id, lancamento)
);

\if :{?citus}
-- Distributed load: every table sharded by client id, the shards of one
-- client colocated, so all of a client's rows live on one worker.
select create_distributed_table('crebito.cliente', 'id', shard_count => :shards);
select create_distributed_table('crebito.transacao', 'cliente_id', colocate_with => 'crebito.cliente');
select create_distributed_table('crebito.idempotencia', 'cliente_id', colocate_with => 'crebito.cliente');
\endif

insert into crebito.cliente (id, limite) values
(1, 100000),
(2, 80000),
(3, 1000000),
(4, 10000000),
(5, 500000);

-- The functions, one per file.
\ir functions/crebito.json_ou_nulo.sql
\ir functions/crebito.erro.sql
\ir functions/crebito.recusa.sql
\ir functions/crebito.descarregar_no_commit.sql
\ir functions/crebito.problema.sql
\ir functions/crebito.em_voo.sql
\ir functions/crebito.lancamento_json.sql
\ir functions/crebito.extrato_resposta.sql
\ir functions/api.transacao.sql
\ir functions/api.confirmar.sql
\ir functions/api.extrato.sql
\ir functions/api.auditoria.sql
\ir functions/crebito.semear.sql

\if :{?citus}
-- Each call runs whole on the worker that holds its client's shard: one round
-- trip, one local transaction there. (Citus already copied the helpers they
-- call to every node when they were created.)
select create_distributed_function('api.transacao(integer,text,text)', 'cliente', colocate_with => 'crebito.cliente');
select create_distributed_function('api.extrato(integer)', 'cliente', colocate_with => 'crebito.cliente');
-- The flush must reach the WAL of the node that ran the call it confirms.
select create_distributed_function('api.confirmar(integer)', 'cliente', colocate_with => 'crebito.cliente');
-- A statement on a distributed table kept as a generic plan (PL/pgSQL's
-- default from a session's sixth call on) makes Citus 13.2.2 plan the
-- statement anew on the shard at every execution, and keep each of those
-- plans until the session ends: 70 kB more per call in every API session, so
-- gigabytes over a load test. A custom plan per call is planned once and
-- freed at the call's end, for the same CPU (bench/RESULTADOS.md). Set on the
-- function, it holds for the statements of the functions it calls.
alter function api.transacao(integer, text, text) set plan_cache_mode = force_custom_plan;
alter function api.extrato(integer) set plan_cache_mode = force_custom_plan;
\ir functions/api.shards.sql
\ir functions/crebito.shard_local.sql
\ir functions/api.transacao_local.sql
\ir functions/api.extrato_local.sql
\endif

-- Least privilege, PostgREST style: the API role may only EXECUTE the
-- functions of `api`. They run as their owner, `crebito` (SECURITY DEFINER).
revoke all on schema crebito from public;
revoke execute on all functions in schema api, crebito from public;
grant usage on schema api to crebito_api;
grant execute on all functions in schema api to crebito_api;
-- The same for functions crebito creates later (PUBLIC's default EXECUTE can
-- only be revoked globally, not per schema).
alter default privileges revoke execute on functions from public;
alter default privileges in schema api grant execute on functions to crebito_api;
reset role;
-- A stuck request must not hold a worker forever.
alter role crebito_api set statement_timeout = '5s';

-- The metrics exporter's login and the one view it reads.
\ir metricas.sql

\ir wal_adiantado.sql
