-- One statement of the official mix: random client 1..5.
\set cliente random(1, 5)
select
    status,
    resposta
from api.extrato(:cliente);
-- As server.py does: the answer counts only once the WAL is flushed past
-- what the call could have seen (api.transacao commits without waiting).
select descarregou from api.confirmar(:cliente);
