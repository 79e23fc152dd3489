-- Makes durable every commit the caller's last call could have seen: returns
-- once the WAL is flushed past every commit record written so far. The API
-- calls it before answering a call of api.transacao that returned `duravel`
-- false, one that committed without waiting for the disk so as to release its
-- client's row lock at once (early lock release). When nothing is waiting to
-- be flushed it writes nothing. `cliente` names the client whose call it
-- confirms, so that a distributed deployment runs it on the node that ran
-- that call.
create function api.confirmar(
    cliente integer,
    out descarregou boolean
)
language plpgsql
security definer
set search_path = ''
as $$
begin
    descarregou := crebito.descarregar_no_commit();
end;
$$;
