-- Citus: where each client's rows live, for the API to send each call to
-- that node itself (roteamento.py) instead of a worker that forwards it. One
-- row per shard of crebito.cliente (its colocated tables share the ranges):
-- the range of hashint4(id) it holds and the node of its active placement.
create function api.shards()
returns table (minimo integer, maximo integer, endereco text, porta integer)
language sql
stable
security definer
set search_path = ''
begin atomic
    select
        s.shardminvalue::integer as minimo,
        s.shardmaxvalue::integer as maximo,
        n.nodename::text as endereco,
        n.nodeport as porta
    from pg_catalog.pg_dist_shard as s
    inner join pg_catalog.pg_dist_placement as p on s.shardid = p.shardid
    inner join pg_catalog.pg_dist_node as n on p.groupid = n.groupid
    where
        s.logicalrelid = 'crebito.cliente'::regclass
        and p.shardstate = 1
        and n.isactive
        and n.noderole = 'primary'
    order by minimo;
end;
