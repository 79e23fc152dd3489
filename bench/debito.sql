-- One debit of the official mix: random client 1..5, valor 1..10000 and a
-- 10-character descricao (a 10-digit number: pgbench has no string functions).
-- The body is concatenated in SQL because pgbench would turn a variable inside
-- a quoted literal into a bind parameter marker under -M prepared.
\set cliente random(1, 5)
\set valor random(1, 10000)
\set descricao random(1000000000, 9999999999)
select
    status,
    resposta
from api.transacao(:cliente, '{"valor": ' || :valor || ', "tipo": "d", "descricao": "' || :descricao || '"}');
-- As server.py does: the answer counts only once the WAL is flushed past
-- what the call could have seen (api.transacao commits without waiting).
select descarregou from api.confirmar(:cliente);
