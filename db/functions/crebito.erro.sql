-- The JSON body of an error answer: {"erro": "<mensagem>"}.
create function crebito.erro(mensagem text)
returns text
language sql
immutable
strict
return pg_catalog.json_build_object('erro', mensagem)::text;
