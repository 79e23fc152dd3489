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
