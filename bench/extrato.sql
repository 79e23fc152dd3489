-- One statement of the official mix: random client 1..5.
\set cliente random(1, 5)
select
    status,
    resposta
from api.extrato(:cliente);
