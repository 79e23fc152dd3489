-- The JSON body of an extrato, from the client's balance and limit and its
-- newest entries (crebito.lancamento_json, newest first; null for none). One
-- definition for every statement that answers an extrato: SQL functions of one
-- expression, which the planner copies into the statement, so they cost what
-- the expression written there would.
create function crebito.extrato_resposta(saldo bigint, limite bigint, lancamentos json)
returns text
language sql
stable
return json_build_object(
    'saldo', json_build_object(
        'total', saldo,
        'data_extrato', to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'limite', limite
    ),
    'ultimas_transacoes', coalesce(lancamentos, '[]')
)::text;
