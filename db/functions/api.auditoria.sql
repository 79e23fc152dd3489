-- Checks every invariant of the ledger and returns one row per violation; no
-- rows means the books are sound. Meant for operators and for the fault tests.
create function api.auditoria()
returns table (cliente integer, violacao text)
language sql
stable
security definer
set search_path = ''
begin atomic
    select
        c.id,
        'saldo ' || c.saldo || ' difere da soma do livro ' || coalesce(l.soma, 0) as violacao
    from crebito.cliente as c
    left join (
        select
            t.cliente_id,
            sum(case t.tipo when 'c' then t.valor else -t.valor end) as soma
        from crebito.transacao as t
        group by t.cliente_id
    ) as l on c.id = l.cliente_id
    where c.saldo <> coalesce(l.soma, 0)
    union all
    -- Entries are numbered 1, 2, 3... per client with no gap (the key forbids
    -- duplicates), and the client's row names the newest.
    select
        c.id,
        'lancamentos ' || coalesce(n.quantos, 0) || ' numerados ate ' || coalesce(n.maior, 0)
        || ', ultimo_lancamento ' || c.ultimo_lancamento as violacao
    from crebito.cliente as c
    left join (
        select
            t.cliente_id,
            count(*) as quantos,
            max(t.lancamento) as maior
        from crebito.transacao as t
        group by t.cliente_id
    ) as n on c.id = n.cliente_id
    where
        c.ultimo_lancamento <> coalesce(n.maior, 0)
        or coalesce(n.quantos, 0) <> coalesce(n.maior, 0)
    union all
    select
        c.id,
        'saldo ' || c.saldo || ' abaixo de -limite ' || c.limite as violacao
    from crebito.cliente as c
    where c.saldo < -c.limite
    union all
    select
        t.cliente_id,
        'transacao ' || t.lancamento || ' malformada' as violacao
    from crebito.transacao as t
    where
        t.valor <= 0
        or t.tipo not in ('c', 'd')
        or char_length(t.descricao) not between 1 and 10
        or t.realizada_em > clock_timestamp()
    union all
    select
        i.cliente_id,
        'chave ' || i.chave || ' aponta para transacao inexistente' as violacao
    from crebito.idempotencia as i
    where
        i.status = 200
        and not exists (
            select from crebito.transacao as t
            where t.cliente_id = i.cliente_id and t.lancamento = i.lancamento
        )
    union all
    -- A replay answers what the key stored, so a refusal tied to a ledger row
    -- would mislead it. (A key cannot name another client's row: its
    -- reference holds its own client id.)
    select
        i.cliente_id,
        'chave ' || i.chave || ' recusada (' || i.status || ') aponta para transacao ' || i.lancamento as violacao
    from crebito.idempotencia as i
    where i.status <> 200 and i.lancamento is not null
    union all
    select
        i.cliente_id,
        'transacao ' || i.lancamento || ' aceita por ' || count(*) || ' chaves' as violacao
    from crebito.idempotencia as i
    where i.lancamento is not null
    group by i.cliente_id, i.lancamento
    having count(*) > 1
    union all
    select
        x.cliente_id,
        'transacao ' || x.lancamento || ' fora de ordem no tempo' as violacao
    from (
        select
            t.cliente_id,
            t.lancamento,
            t.realizada_em < lag(t.realizada_em) over (partition by t.cliente_id order by t.lancamento) as fora
        from crebito.transacao as t
    ) as x
    where x.fora;
end;
