-- The answer to a request that changes nothing: 422 with the problem when the
-- client exists, else 404, so an unknown client is never told about its body.
create function crebito.recusa(
    cliente integer,
    problema text,
    out status integer,
    out resposta text
)
language plpgsql
stable
set search_path = ''
as $$
begin
    if exists (select from crebito.cliente as c where c.id = cliente) then
        status := 422;
        resposta := crebito.erro(problema);
    else
        status := 404;
        resposta := crebito.erro('cliente não encontrado');
    end if;
end;
$$;
