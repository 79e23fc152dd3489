"""openapi.yaml against the live stack: the document is valid OpenAPI, every
status it documents is one the API really answers (with the documented body),
and schemathesis, generating valid and invalid requests from the document,
finds no answer outside it and leaves the books sound."""

import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from http.client import HTTPConnection

import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate

RAIZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTO = os.path.join(RAIZ, "openapi.yaml")
TRANSACOES = "/clientes/{id}/transacoes"
EXTRATO = "/clientes/{id}/extrato"
METODOS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Bounds for schemathesis (examples per operation): about a minute on two cores.
EXEMPLOS_OPERACOES = 700
EXEMPLOS_405 = 10


@pytest.fixture(scope="module")
def spec():
    with open(DOCUMENTO) as f:
        return yaml.safe_load(f)


def resolver(spec, no):
    """The node with every $ref inlined (the document has no recursive refs)."""
    if isinstance(no, dict):
        if "$ref" in no:
            alvo = spec
            for parte in no["$ref"].lstrip("#/").split("/"):
                alvo = alvo[parte]
            return resolver(spec, alvo)
        return {k: resolver(spec, v) for k, v in no.items()}
    if isinstance(no, list):
        return [resolver(spec, v) for v in no]
    return no


def documentados(spec):
    """{(path, method): {status: resolved response}} for every operation."""
    ops = {}
    for caminho, item in spec["paths"].items():
        for metodo in METODOS:
            if metodo in item:
                respostas = resolver(spec, item[metodo]["responses"])
                ops[(caminho, metodo)] = {int(s): r for s, r in respostas.items()}
    return ops


def pedir(porta, metodo, alvo, corpo=None, headers=None):
    conn = HTTPConnection("127.0.0.1", porta, timeout=10)
    try:
        conn.request(metodo, alvo, body=corpo, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_documento_valido(spec):
    validate(spec)
    ops = documentados(spec)
    assert set(spec["paths"]) == {TRANSACOES, EXTRATO}
    # Each path serves exactly one method; the others are documented as 405.
    servidos = {k: r for k, r in ops.items() if set(r) != {405}}
    assert set(servidos) == {(TRANSACOES, "post"), (EXTRATO, "get")}
    assert {k for k in ops if k not in servidos} == {(c, m) for c in (TRANSACOES, EXTRATO) for m in METODOS} - set(
        servidos
    )
    for respostas in ops.values():
        for resposta in respostas.values():
            assert set(resposta["content"]) == {"application/json"}
    for caminho in (TRANSACOES, EXTRATO):
        (param,) = resolver(spec, spec["paths"][caminho]["parameters"])
        assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == 2**31 - 1
    corpo = resolver(spec, spec["paths"][TRANSACOES]["post"]["requestBody"])["content"]["application/json"]["schema"]
    assert set(corpo["required"]) == {"valor", "tipo", "descricao"}
    assert corpo["properties"]["valor"]["maximum"] == 2**63 - 1


# One request per documented answer: (path, method, request target, body, headers, expected status).
# 503 (database unreachable, outcome unknown) is left to the fault tests.
CORPO_OK = json.dumps({"valor": 1, "tipo": "c", "descricao": "openapi"})
PEDIDOS = [
    (TRANSACOES, "post", "/clientes/1/transacoes", CORPO_OK, {}, 200),
    (TRANSACOES, "post", "/clientes/%zz/transacoes", CORPO_OK, {}, 400),
    (TRANSACOES, "post", "/clientes/6/transacoes", CORPO_OK, {}, 404),
    (TRANSACOES, "post", "/clientes/01/transacoes", CORPO_OK, {}, 404),
    (TRANSACOES, "post", "/clientes/2147483648/transacoes", CORPO_OK, {}, 404),
    (TRANSACOES, "post", "/clientes/1/transacoes", "x" * 4097, {}, 413),
    (TRANSACOES, "post", "/clientes/1/transacoes", '{"valor": 1.5, "tipo": "c", "descricao": "x"}', {}, 422),
    (TRANSACOES, "post", "/clientes/1/transacoes", '{"valor": 1, "tipo": "c", "descricao": "\\u0000"}', {}, 422),
    (TRANSACOES, "post", "/clientes/1/transacoes", CORPO_OK, {"Idempotency-Key": "x" * 65}, 422),
    (EXTRATO, "get", "/clientes/1/extrato", None, {}, 200),
    (EXTRATO, "get", "/clientes/%zz/extrato", None, {}, 400),
    (EXTRATO, "get", "/clientes/6/extrato", None, {}, 404),
    (EXTRATO, "get", "/clientes/0/extrato", None, {}, 404),
    (EXTRATO, "get", "/clientes/1/extrato", "x" * 4097, {}, 413),
] + [
    (caminho, metodo, alvo, None, {}, 405)
    for caminho, alvo, servido in (
        (TRANSACOES, "/clientes/1/transacoes", "post"),
        (EXTRATO, "/clientes/6/extrato", "get"),
    )
    for metodo in METODOS
    if metodo != servido
]


def test_cada_status_documentado_acontece(spec, http):
    ops = documentados(spec)
    # Eleven transactions first, so the statement shows its cap of ten.
    for i in range(11):
        assert http.transacao(1, 1, "c", f"t{i}").status == 200
    vistos = set()
    for caminho, metodo, alvo, corpo, headers, esperado in PEDIDOS:
        status, h, corpo_resp = pedir(http.porta, metodo.upper(), alvo, corpo, headers)
        contexto = f"{metodo.upper()} {alvo} -> {status} {corpo_resp[:200]!r}"
        assert status == esperado, contexto
        assert status in ops[(caminho, metodo)], contexto
        assert h["content-type"] == "application/json", contexto
        resposta = ops[(caminho, metodo)][status]
        if status == 405:
            assert h["allow"] == next(m for (c, m), r in ops.items() if c == caminho and set(r) != {405}).upper()
        if metodo != "head":
            dados = json.loads(corpo_resp)
            schema = resposta["content"]["application/json"]["schema"]
            OAS30Validator(schema, format_checker=oas30_format_checker).validate(dados)
            if caminho == EXTRATO and status == 200:
                assert len(dados["ultimas_transacoes"]) == 10
                datetime.datetime.fromisoformat(dados["saldo"]["data_extrato"])
        vistos.add((caminho, metodo, status))
    todos = {(c, m, s) for (c, m), r in ops.items() for s in r}
    assert todos - vistos == {(TRANSACOES, "post", 503), (EXTRATO, "get", 503)}


def test_caminhos_fora_do_documento_sao_404(http):
    for alvo in ("/", "/clientes", "/clientes/1", "/clientes/1/saldo", "/clientes/1/extrato/x", "/x/1/extrato"):
        status, h, corpo = pedir(http.porta, "GET", alvo)
        assert status == 404, alvo
        assert h["content-type"] == "application/json"
        assert set(json.loads(corpo)) == {"erro"}


def _schemathesis(porta, pasta, relatorio, exemplos, filtro):
    cli = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "response_headers_conformance",
            "negative_data_rejection",
        ]
    )
    comando = [
        cli,
        "run",
        DOCUMENTO,
        "--url",
        f"http://127.0.0.1:{porta}",
        "--checks",
        checks,
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(exemplos),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        relatorio,
        *filtro,
    ]
    # Its own example database and report folder stay in the temporary folder.
    return subprocess.run(comando, cwd=pasta, capture_output=True, text=True, timeout=300)


def _interacoes(relatorio):
    with open(relatorio) as f:
        for linha in f:
            evento = json.loads(linha).get("ScenarioFinished")
            if evento:
                yield from evento["recorder"].get("interactions", {}).values()


def test_schemathesis_contra_a_stack(db, stack, request):
    servidos = ["--include-operation-id", "transacao", "--include-operation-id", "extrato"]
    outros = ["--exclude-operation-id", "transacao", "--exclude-operation-id", "extrato"]
    status = Counter()
    por_operacao = Counter()
    with tempfile.TemporaryDirectory() as pasta:
        for nome, exemplos, filtro in (("servidos", EXEMPLOS_OPERACOES, servidos), ("405", EXEMPLOS_405, outros)):
            relatorio = os.path.join(pasta, f"{nome}.ndjson")
            r = _schemathesis(stack.porta, pasta, relatorio, exemplos, filtro)
            assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
            for i in _interacoes(relatorio):
                assert i.get("response"), i
                st = i["response"]["status_code"]
                status[st] += 1
                por_operacao[(i["request"]["method"], i["request"]["uri"].split("/")[-1], st)] += 1
    total = sum(status.values())
    linha = f"schemathesis: {total} requests, by status {dict(sorted(status.items()))}"
    # Shown even when pytest captures output, like capsys.disabled().
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{linha}")
    assert not [s for s in status if s >= 500]
    # Both valid and invalid transactions were generated and answered as such.
    assert por_operacao[("POST", "transacoes", 200)] > 0
    assert por_operacao[("POST", "transacoes", 422)] > 0
    assert por_operacao[("GET", "extrato", 200)] > 0
    assert total > 2 * EXEMPLOS_OPERACOES
    assert db.execute("select cliente, violacao from api.auditoria()").fetchall() == []
