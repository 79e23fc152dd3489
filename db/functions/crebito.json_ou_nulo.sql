-- The body parsed as jsonb, or null when it is not JSON. PostgreSQL 15 has no
-- IS JSON test, so the cast's error is caught; the subtransaction this costs is
-- cheap because nothing has been written yet.
create function crebito.json_ou_nulo(corpo text)
returns jsonb
language plpgsql
immutable
strict
as $$
begin
    return corpo::jsonb;
exception
    when others then
        return null;
end;
$$;
