-- One credit of the official mix: random client 1..5, valor 1..10000 and a
-- 10-character descricao (a 10-digit number: pgbench has no string functions).
-- The body is concatenated in SQL because pgbench would turn a variable inside
-- a quoted literal into a bind parameter marker under -M prepared.
\set cliente random(1, 5)
\set valor random(1, 10000)
\set descricao random(1000000000, 9999999999)
select
    status,
    resposta,
    duravel::int as duravel
from api.transacao(:cliente, '{"valor": ' || :valor || ', "tipo": "c", "descricao": "' || :descricao || '"}') \gset
-- As server.py does: a call that committed without waiting for the disk (another
-- call of the client was in flight) counts only once confirmed.
\if :duravel = 0
select descarregou from api.confirmar(:cliente);
\endif
