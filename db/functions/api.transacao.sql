-- POST /clientes/{cliente}/transacoes: validates the raw body, applies the
-- credit or debit under the client's row lock and appends it to the ledger, in
-- the caller's single transaction. Returns the HTTP status and JSON body.
-- `chave` is the optional Idempotency-Key: a repeated key answers what its first
-- request answered and changes nothing.
-- It commits without waiting for the WAL flush, so the row lock is free for
-- the next request at once: its answer may be shown only after api.confirmar
-- has returned (server.py sends both in one round trip).
create function api.transacao(
    cliente integer,
    corpo text,
    chave text default null,
    out status integer,
    out resposta text
)
language plpgsql
security definer
set search_path = ''
as $$
declare
    pedido jsonb := crebito.json_ou_nulo(corpo);
    numero numeric;
    pedido_valor bigint;
    pedido_tipo text := pedido ->> 'tipo';
    pedido_descricao text;
    saldo_novo bigint;
    limite_cliente bigint;
    anterior record;
    lancamento_novo bigint;
    problema text;
    agora timestamptz;
begin
    -- Local to this transaction and set in the body, so it lasts until the
    -- commit (a function's SET clause is undone when the function returns).
    perform pg_catalog.set_config('synchronous_commit', 'off', true);
    if jsonb_typeof(pedido -> 'valor') = 'number' then
        numero := (pedido ->> 'valor')::numeric;
    end if;
    if jsonb_typeof(pedido -> 'descricao') = 'string' then
        pedido_descricao := pedido ->> 'descricao';
    end if;

    if jsonb_typeof(pedido) is distinct from 'object' then
        problema := 'o corpo deve ser um objeto JSON válido, sem caracteres NUL';
    elsif numero is null or numero < 1 or numero > 9223372036854775807 or numero <> trunc(numero) then
        problema := 'valor deve ser um inteiro positivo de até 64 bits';
    elsif pedido_tipo is null or pedido_tipo not in ('c', 'd') or jsonb_typeof(pedido -> 'tipo') <> 'string' then
        problema := 'tipo deve ser "c" ou "d"';
    elsif pedido_descricao is null or char_length(pedido_descricao) not between 1 and 10 then
        problema := 'descricao deve ter de 1 a 10 caracteres';
    elsif chave !~ '^[!-~]{1,64}$' then
        problema := 'Idempotency-Key deve ter de 1 a 64 caracteres ASCII visíveis';
    end if;

    if problema is not null then
        select r.status, r.resposta into status, resposta from crebito.recusa(cliente, problema) as r;
        return;
    end if;
    pedido_valor := numero;

    if chave is not null then
        -- Taking the row lock first serialises requests that share a key.
        perform from crebito.cliente as c where c.id = cliente for update;
        if not found then
            status := 404;
            resposta := crebito.erro('cliente não encontrado');
            return;
        end if;
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
            return;
        end if;
    end if;

    -- The WHERE clauses keep the arithmetic inside bigint and the balance
    -- inside the limit; a concurrent writer waits for the row lock and then
    -- re-checks them against the balance it left. The same UPDATE numbers the
    -- entry, so numbers follow the order in which the balance changed.
    if pedido_tipo = 'c' then
        update crebito.cliente as c set saldo = c.saldo + pedido_valor, ultimo_lancamento = c.ultimo_lancamento + 1
        where c.id = cliente and c.saldo <= 9223372036854775807 - pedido_valor
        returning c.saldo, c.limite, c.ultimo_lancamento into saldo_novo, limite_cliente, lancamento_novo;
        problema := 'o saldo passaria do máximo representável';
    else
        update crebito.cliente as c set saldo = c.saldo - pedido_valor, ultimo_lancamento = c.ultimo_lancamento + 1
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
        status := 200;
        resposta := '{"limite":' || limite_cliente || ',"saldo":' || saldo_novo || '}';
    else
        select r.status, r.resposta into status, resposta from crebito.recusa(cliente, problema) as r;
        if status = 404 then
            return;
        end if;
    end if;

    if chave is not null then
        insert into crebito.idempotencia (cliente_id, chave, pedido, status, resposta, lancamento)
        values (cliente, chave, pedido, status, resposta, lancamento_novo);
    end if;
end;
$$;
