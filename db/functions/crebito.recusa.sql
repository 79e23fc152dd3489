-- The answer to a request that changes nothing: 422 with the problem when the
-- client exists, else 404, so an unknown client is never told about its body.
-- `assincrono` tells whether the client's row it read was last changed by a
-- commit that did not wait for the disk (see api.transacao).
create function crebito.recusa(
    cliente integer,
    problema text,
    out status integer,
    out resposta text,
    out assincrono boolean
)
language plpgsql
stable
-- No SET clause: its only callers, the API's functions, already run with an
-- empty search_path, and a SET would cost every refusal a save and restore of
-- the setting. Every name below is qualified.
as $$
begin
    select c.assincrono into assincrono from crebito.cliente as c where c.id = cliente;
    if found then
        status := 422;
        resposta := crebito.erro(problema);
    else
        status := 404;
        resposta := crebito.erro('cliente não encontrado');
    end if;
end;
$$;
