-- GET /clientes/{cliente}/extrato: the balance, the limit and the ten most
-- recent transactions, newest first, read from one snapshot so the balance and
-- the list always agree. Returns the HTTP status and JSON body, and `duravel`
-- true: when what it shows was last changed by a commit that did not wait for
-- the disk, its own commit waits for that flush, so the answer may leave at
-- once (see api.transacao).
create function api.extrato(
    cliente integer,
    out status integer,
    out resposta text,
    out duravel boolean
)
language plpgsql
security definer
set search_path = ''
-- Each session keeps the plan it first made for the statement below. Made
-- while the ledger was small, that plan fetched every row of the client and
-- sorted them, a cost that grew with the ledger for as long as the session
-- lived. With sorting ruled out, the only plan left reads the ten newest rows
-- in order from the end of transacao_pkey, whatever the ledger's size.
set enable_sort = off
as $$
declare
    assincrono boolean;
begin
    select
        200,
        crebito.extrato_resposta(
            c.saldo,
            c.limite,
            (
                select
                    json_agg(
                        crebito.lancamento_json(t.valor, t.tipo, t.descricao, t.realizada_em)
                        order by t.lancamento desc
                    )
                from (
                    select t.lancamento, t.valor, t.tipo, t.descricao, t.realizada_em
                    from crebito.transacao as t
                    -- The parameter, not c.id: on a cluster a filter on
                    -- the distribution column keeps the query on one shard.
                    where t.cliente_id = cliente
                    order by t.lancamento desc
                    limit 10
                ) as t
            )
        ),
        c.assincrono
    into status, resposta, assincrono
    from crebito.cliente as c
    where c.id = cliente;

    if not found then
        status := 404;
        resposta := crebito.erro('cliente não encontrado');
    end if;
    -- The row's last change is the newest commit the answer shows: a sync
    -- one was flushed before anyone could see it, and so was all before it.
    if assincrono then
        perform crebito.descarregar_no_commit();
    end if;
    duravel := true;
end;
$$;
