-- The whole database of crebito: tables, roles, seed and the API functions.
-- Run once on an empty database with `psql -v ON_ERROR_STOP=1 -f db/schema.sql`
-- (the Docker image's init directory runs it the same way).

-- Roles first. `crebito` owns every schema, table and function but is no
-- superuser and cannot log in: the SECURITY DEFINER functions run with its
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

-- Tables live in `crebito`; the API role sees only the functions in `api`.
create schema crebito authorization crebito;
create schema api authorization crebito;
-- Whatever is created from here on belongs to `crebito`.
set role crebito;

create table crebito.cliente (
    id integer primary key,
    limite bigint not null check (limite >= 0),
    saldo bigint not null default 0,
    -- The last line of defence: even a bug in a function cannot overdraw.
    constraint saldo_dentro_do_limite check (saldo >= -limite)
);

-- The ledger. `id` orders one client's transactions in the order their row
-- locks were taken, which is the order in which they changed the balance.
create table crebito.transacao (
    id bigint generated always as identity primary key,
    cliente_id integer not null references crebito.cliente (id),
    valor bigint not null check (valor > 0),
    tipo "char" not null check (tipo in ('c', 'd')),
    descricao text not null check (char_length(descricao) between 1 and 10),
    realizada_em timestamptz not null default clock_timestamp()
);

create index transacao_cliente_recentes on crebito.transacao (cliente_id, id desc);

-- Idempotency keys, written in the same transaction as the ledger row, so the
-- stored answer exists exactly when the transaction does.
create table crebito.idempotencia (
    cliente_id integer not null references crebito.cliente (id),
    chave text not null,
    pedido jsonb not null,
    status smallint not null,
    resposta text not null,
    transacao_id bigint references crebito.transacao (id),
    primary key (cliente_id, chave)
);

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
\ir functions/api.transacao.sql
\ir functions/api.confirmar.sql
\ir functions/api.extrato.sql
\ir functions/api.auditoria.sql

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
