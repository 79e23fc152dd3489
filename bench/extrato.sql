-- One statement of the official mix: random client 1..5. When what it read was
-- committed without waiting for the disk, api.extrato's own commit waits for it.
\set cliente random(1, 5)
select
    status,
    resposta
from api.extrato(:cliente);
