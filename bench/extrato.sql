-- One statement of the official mix: random client 1..5. Its commit waits for
-- the WAL flush past what it read, as api.extrato makes it.
\set cliente random(1, 5)
select
    status,
    resposta
from api.extrato(:cliente);
