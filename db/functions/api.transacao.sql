-- POST /clientes/{cliente}/transacoes: validates the raw body, applies the
-- credit or debit under the client's row lock and appends it to the ledger, in
-- the caller's single transaction. Returns the HTTP status and JSON body.
-- `chave` is the optional Idempotency-Key: a repeated key answers what its first
-- request answered and changes nothing.
-- `duravel` false means the call committed without waiting for the WAL flush,
-- because another request of the same client was in flight and would have
-- queued behind its row lock (early lock release): its answer may be shown
-- only after api.confirmar has returned. True means the commit itself waits
-- for the flush past everything the answer rests on: it may leave at once.
create function api.transacao(
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
as $$
declare
    sozinho boolean;
    leu_assincrono boolean := false;
    pedido jsonb := crebito.json_ou_nulo(corpo);
    pedido_valor bigint;
    pedido_tipo text;
    pedido_descricao text;
    saldo_novo bigint;
    limite_cliente bigint;
    anterior record;
    lancamento_novo bigint;
    problema text;
    agora timestamptz;
begin
    <<pedido_aplicado>>
    begin
        problema := crebito.problema(pedido, chave);

        if problema is not null then
            select r.status, r.resposta, r.assincrono into status, resposta, leu_assincrono
            from crebito.recusa(cliente, problema) as r;
            exit pedido_aplicado;
        end if;
        pedido_valor := (pedido ->> 'valor')::numeric;
        pedido_tipo := pedido ->> 'tipo';
        pedido_descricao := pedido ->> 'descricao';
        sozinho := crebito.em_voo(cliente);

        if chave is not null then
            -- Taking the row lock first serialises requests that share a key.
            perform from crebito.cliente as c where c.id = cliente for update;
            if not found then
                status := 404;
                resposta := crebito.erro('cliente não encontrado');
                exit pedido_aplicado;
            end if;
            -- The row lock took an xid and wrote WAL: the commit, waiting or
            -- not, covers whatever is answered from here on.
            duravel := sozinho;
            select i.pedido, i.status, i.resposta into anterior
            from crebito.idempotencia as i
            where i.cliente_id = cliente and i.chave = transacao.chave;
            if found then
                if anterior.pedido = pedido then
                    status := anterior.status;
                    resposta := anterior.resposta;
                else
                    status := 422;
                    resposta := crebito.erro('Idempotency-Key já usada com outro pedido');
                end if;
                exit pedido_aplicado;
            end if;
        end if;

        -- The WHERE clauses keep the arithmetic inside bigint and the balance
        -- inside the limit; a concurrent writer waits for the row lock and then
        -- re-checks them against the balance it left. The same UPDATE numbers the
        -- entry, so numbers follow the order in which the balance changed.
        if pedido_tipo = 'c' then
            update crebito.cliente as c
            set saldo = c.saldo + pedido_valor, ultimo_lancamento = c.ultimo_lancamento + 1, assincrono = not sozinho
            where c.id = cliente and c.saldo <= 9223372036854775807 - pedido_valor
            returning c.saldo, c.limite, c.ultimo_lancamento into saldo_novo, limite_cliente, lancamento_novo;
            problema := 'o saldo passaria do máximo representável';
        else
            update crebito.cliente as c
            set saldo = c.saldo - pedido_valor, ultimo_lancamento = c.ultimo_lancamento + 1, assincrono = not sozinho
            where c.id = cliente and c.saldo >= pedido_valor - c.limite
            returning c.saldo, c.limite, c.ultimo_lancamento into saldo_novo, limite_cliente, lancamento_novo;
            problema := 'limite insuficiente';
        end if;

        if found then
            -- The time is taken here, under the row lock, not by the column's
            -- default: on a cluster a statement without volatile functions keeps
            -- its plan from call to call, and this one is on every request.
            agora := clock_timestamp();
            insert into crebito.transacao (cliente_id, lancamento, valor, tipo, descricao, realizada_em)
            values (cliente, lancamento_novo, pedido_valor, pedido_tipo::"char", pedido_descricao, agora);
            duravel := sozinho;
            status := 200;
            resposta := '{"limite":' || limite_cliente || ',"saldo":' || saldo_novo || '}';
        else
            select r.status, r.resposta, r.assincrono into status, resposta, leu_assincrono
            from crebito.recusa(cliente, problema) as r;
            if status = 404 then
                exit pedido_aplicado;
            end if;
        end if;

        if chave is not null then
            insert into crebito.idempotencia (cliente_id, chave, pedido, status, resposta, lancamento)
            values (cliente, chave, pedido, status, resposta, lancamento_novo);
            duravel := sozinho;
        end if;
    end pedido_aplicado;

    if duravel is null then
        -- Nothing written and no row locked: the commit flushes nothing, so
        -- if the answer rests on a change made without waiting for the disk,
        -- this commit must wait for it.
        if leu_assincrono then
            perform crebito.descarregar_no_commit();
        end if;
        duravel := true;
    end if;
end;
$$;
