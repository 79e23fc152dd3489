-- One entry of an extrato's ultimas_transacoes (see crebito.extrato_resposta).
create function crebito.lancamento_json(valor bigint, tipo "char", descricao text, realizada_em timestamptz)
returns json
language sql
stable
return json_build_object(
    'valor', valor,
    'tipo', tipo::text,
    'descricao', descricao,
    'realizada_em', to_char(realizada_em at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
);
