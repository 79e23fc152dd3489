-- Citus: api.transacao for a client whose shard is on this node, applied to
-- the shard's own tables. Through the distributed tables, Citus plans each
-- statement for the cluster, then writes its text out for the shard, parses
-- and plans it again: twice plain PostgreSQL's CPU per call. Here a credit or
-- debit is one statement on the shard tables, prepared once per session and
-- shard and kept as a plain PostgreSQL plan.
--
-- crebito.shard_local finds the shard here, under Citus's shard metadata lock,
-- and prepares the statement.
--
-- Same parameters and answers as api.transacao, but for a client whose shard
-- is not here (the caller's map is older than a move): then every out
-- parameter is null and nothing was done, and the caller sends the call as
-- api.transacao, which Citus runs on the client's node. A call this function
-- does not apply itself (an Idempotency-Key, a body api.transacao refuses)
-- goes to api.transacao here, the client's node.
create function api.transacao_local(
    cliente integer,
    corpo text,
    chave text default null,
    out status integer,
    out resposta text,
    out duravel boolean
)
language plpgsql
security definer
set search_path = ''
-- A session keeps one plan per shard of each statement it prepared: generic
-- from the first call, instead of five custom ones per session and shard
-- (api.transacao, called from here, asks for custom plans for itself).
set plan_cache_mode = force_generic_plan
as $$
declare
    pedido jsonb := crebito.json_ou_nulo(corpo);
    pedido_valor bigint;
    shard bigint := crebito.shard_local(cliente, true);
    sozinho boolean;
    saldo_novo bigint;
    limite_cliente bigint;
    assincrono boolean;
begin
    if shard is null then
        return;
    end if;
    if chave is not null or crebito.problema(pedido, chave) is not null then
        select t.status, t.resposta, t.duravel into status, resposta, duravel
        from api.transacao(cliente, corpo, chave) as t;
        return;
    end if;

    -- (An assignment, not PERFORM, as in crebito.em_voo.)
    sozinho := crebito.em_voo(cliente);
    -- A debit is a negative credit here (see crebito.shard_local).
    pedido_valor := (pedido ->> 'valor')::numeric;
    if pedido ->> 'tipo' = 'd' then
        pedido_valor := -pedido_valor;
    end if;
    -- EXECUTE of a prepared statement takes no $n: its arguments are
    -- literals, every one a number or quoted. One format() and not a chain of
    -- ||: each operator of an expression is set up and checked for EXECUTE
    -- privilege once per transaction: the chain cost 3.5 % more per call.
    execute pg_catalog.format(
        'execute crebito_lancar_%s(%s, %s, %L, %L, %L)',
        shard, cliente, pedido_valor, not sozinho, pedido ->> 'tipo', pedido ->> 'descricao'
    )
    into saldo_novo, limite_cliente;
    if saldo_novo is not null then
        status := 200;
        resposta := '{"limite":' || limite_cliente || ',"saldo":' || saldo_novo || '}';
        duravel := sozinho;
        return;
    end if;

    -- Refused, as crebito.recusa answers, from the row as it is now that the
    -- UPDATE has waited for whoever held it.
    execute pg_catalog.format('execute crebito_cliente_%s(%s)', shard, cliente) into assincrono;
    if assincrono is null then
        status := 404;
        resposta := crebito.erro('cliente não encontrado');
    else
        status := 422;
        resposta := crebito.erro(
            case
                when pedido_valor > 0 then 'o saldo passaria do máximo representável'
                else 'limite insuficiente'
            end
        );
        -- As api.transacao: a refusal that rests on a change made without
        -- waiting for the disk waits for it.
        if assincrono then
            perform crebito.descarregar_no_commit();
        end if;
    end if;
    duravel := true;
end;
$$;
