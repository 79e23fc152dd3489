-- What is wrong with a POST's parsed body and Idempotency-Key, or null when
-- nothing is. One SQL expression, so PL/pgSQL's planner inlines it into the
-- caller's assignment: no function call on the write path.
create function crebito.problema(pedido jsonb, chave text)
returns text
language sql
immutable
return case
    when jsonb_typeof(pedido) is distinct from 'object'
        then 'o corpo deve ser um objeto JSON válido, sem caracteres NUL'
    when
        jsonb_typeof(pedido -> 'valor') is distinct from 'number'
        or (pedido ->> 'valor')::numeric not between 1 and 9223372036854775807
        or (pedido ->> 'valor')::numeric <> trunc((pedido ->> 'valor')::numeric)
        then 'valor deve ser um inteiro positivo de até 64 bits'
    when jsonb_typeof(pedido -> 'tipo') is distinct from 'string' or pedido ->> 'tipo' not in ('c', 'd')
        then 'tipo deve ser "c" ou "d"'
    when
        jsonb_typeof(pedido -> 'descricao') is distinct from 'string'
        or char_length(pedido ->> 'descricao') not between 1 and 10
        then 'descricao deve ter de 1 a 10 caracteres'
    when chave !~ '^[!-~]{1,64}$'
        then 'Idempotency-Key deve ter de 1 a 64 caracteres ASCII visíveis'
end;
