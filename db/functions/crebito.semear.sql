-- Adds `quantos` clients after the five of the contract (ids 6, 7, ...), for
-- the benchmarks of many accounts. Each limit is drawn from the id and
-- `semente` alone, so the same call gives the same clients on any topology.
-- Ids already present are kept as they are. Returns how many clients there
-- are now (on a cluster, an INSERT ... SELECT counts the rows it sent, not
-- the rows it added).
create function crebito.semear(quantos integer, semente integer default 0)
returns bigint
language plpgsql
set search_path = ''
as $$
begin
    insert into crebito.cliente (id, limite)
    select
        n.id,
        -- From 1,000 to 1,000,000 cents, in steps of 1,000.
        1000 * (1 + (n.id::bigint * 2654435761 + semente) % 1000) as limite
    from generate_series(6, 5 + quantos) as n (id)
    on conflict (id) do nothing;
    return (select count(*) from crebito.cliente);
end;
$$;
