-- WAL segments made ahead of the load. A new cluster has one 16 MB segment;
-- each further one is created and zero-filled while every commit waits for
-- it. Filling a few now and checkpointing leaves them recycled, ready under
-- the names the load will write next (as many as min_wal_size keeps).
do $$
begin
    for i in 1..5 loop
        perform pg_catalog.pg_logical_emit_message(false, 'crebito', '');
        perform pg_catalog.pg_switch_wal();
    end loop;
end
$$;
checkpoint;
