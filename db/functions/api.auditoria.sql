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
    select
        c.id,
        'saldo ' || c.saldo || ' abaixo de -limite ' || c.limite as violacao
    from crebito.cliente as c
    where c.saldo < -c.limite
    union all
    select
        t.cliente_id,
        'transacao ' || t.id || ' malformada' as violacao
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
            where t.id = i.transacao_id
        )
    union all
    -- A replay answers what the key stored, so a key tied to another
    -- client's ledger row, or a refusal tied to any row, would mislead it.
    select
        i.cliente_id,
        'chave ' || i.chave || ' aponta para transacao ' || t.id || ' do cliente ' || t.cliente_id as violacao
    from crebito.idempotencia as i
    inner join crebito.transacao as t on i.transacao_id = t.id
    where t.cliente_id <> i.cliente_id
    union all
    select
        i.cliente_id,
        'chave ' || i.chave || ' recusada (' || i.status || ') aponta para transacao ' || i.transacao_id as violacao
    from crebito.idempotencia as i
    where i.status <> 200 and i.transacao_id is not null
    union all
    select
        min(i.cliente_id) as cliente_id,
        'transacao ' || i.transacao_id || ' aceita por ' || count(*) || ' chaves' as violacao
    from crebito.idempotencia as i
    where i.transacao_id is not null
    group by i.transacao_id
    having count(*) > 1
    union all
    select
        x.cliente_id,
        'transacao ' || x.id || ' fora de ordem no tempo' as violacao
    from (
        select
            t.cliente_id,
            t.id,
            t.realizada_em < lag(t.realizada_em) over (partition by t.cliente_id order by t.id) as fora
        from crebito.transacao as t
    ) as x
    where x.fora;
end;
