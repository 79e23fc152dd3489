"""The contract over HTTP, end to end through HAProxy, bjoern and PostgreSQL:
status codes, bodies and headers of every kind of answer."""

import json
import re
import socket
from http.client import HTTPConnection

import pytest
from conftest import LIMITES

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus

FORMATO_DATA = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def e_json(r):
    """Every answer, errors included, is JSON and says so."""
    assert r.headers.get("content-type") == "application/json", r.headers
    return r.json


def e_erro(r, status):
    assert r.status == status, (r.status, r.corpo)
    corpo = e_json(r)
    assert set(corpo) == {"erro"} and isinstance(corpo["erro"], str)


def saldo(http, cliente):
    return http.extrato(cliente).json["saldo"]["total"]


# -- transacoes ---------------------------------------------------------------


def test_credito_e_debito(http):
    r = http.transacao(1, 1000, "c", "deposito")
    assert r.status == 200
    assert e_json(r) == {"limite": 100000, "saldo": 1000}
    r = http.transacao(1, 1500, "d", "saque")
    assert r.status == 200
    assert e_json(r) == {"limite": 100000, "saldo": -500}
    assert saldo(http, 1) == -500


@pytest.mark.parametrize("cliente", sorted(LIMITES))
def test_limite_exato_e_um_centavo_a_mais(http, cliente):
    limite = LIMITES[cliente]
    r = http.transacao(cliente, limite, "d", "tudo")
    assert (r.status, e_json(r)) == (200, {"limite": limite, "saldo": -limite})
    e_erro(http.transacao(cliente, 1, "d", "mais um"), 422)
    assert saldo(http, cliente) == -limite
    assert len(http.extrato(cliente).json["ultimas_transacoes"]) == 1


INVALIDOS = [
    {"valor": 1.2, "tipo": "d", "descricao": "devolve"},
    {"valor": 1, "tipo": "x", "descricao": "devolve"},
    {"valor": 1, "tipo": "c", "descricao": "123456789 e mais um pouco"},
    {"valor": 1, "tipo": "c", "descricao": ""},
    {"valor": 1, "tipo": "c", "descricao": None},
    {"valor": "1", "tipo": "c", "descricao": "x"},
    {"valor": 0, "tipo": "c", "descricao": "x"},
    {"valor": -1, "tipo": "d", "descricao": "x"},
    {"valor": 2**63, "tipo": "c", "descricao": "x"},
    {"tipo": "c", "descricao": "x"},
    {"valor": 1, "descricao": "x"},
    {"valor": 1, "tipo": "c"},
    [1, "c", "x"],
]


@pytest.mark.parametrize("corpo", INVALIDOS, ids=[json.dumps(c) for c in INVALIDOS])
def test_corpo_invalido_e_422(http, corpo):
    e_erro(http.pedir("POST", "/clientes/1/transacoes", corpo), 422)
    assert http.extrato(1).json["ultimas_transacoes"] == []
    assert saldo(http, 1) == 0


@pytest.mark.parametrize(
    "corpo",
    [b"", b"nada", b"{", b"\xff\xfe{}", b'{"valor": 1, "tipo": "c", "descricao": "\xc3"}', b"{\x00}"],
    ids=["vazio", "texto", "truncado", "utf8-invalido", "utf8-cortado", "nul"],
)
def test_corpo_que_nao_e_json_utf8_e_422(http, corpo):
    e_erro(http.pedir("POST", "/clientes/1/transacoes", corpo, {"Content-Type": "application/json"}), 422)
    assert saldo(http, 1) == 0


def test_descricao_nao_ascii_conta_caracteres(http):
    assert http.transacao(1, 1, "c", "ação-çãõé!").status == 200
    e_erro(http.transacao(1, 1, "c", "ação-çãõé!x"), 422)
    assert http.extrato(1).json["ultimas_transacoes"][0]["descricao"] == "ação-çãõé!"


def test_valor_inteiro_escrito_com_fracao_zero(http):
    r = http.pedir("POST", "/clientes/1/transacoes", '{"valor": 1e2, "tipo": "c", "descricao": "x"}')
    assert (r.status, e_json(r)) == (200, {"limite": 100000, "saldo": 100})


def test_maior_bigint_e_depois_transbordo(http):
    assert http.transacao(4, 2**63 - 1, "c", "enorme").json == {"limite": 10000000, "saldo": 2**63 - 1}
    e_erro(http.transacao(4, 1, "c", "transborda"), 422)
    assert saldo(http, 4) == 2**63 - 1


# -- not found, wrong method, too large -----------------------------------------

IDS_INVALIDOS = ["6", "0", "-1", "01", "abc", "99999999999", "2147483648", "1.0", "%201", "1a", "%D9%A1", "+1"]


@pytest.mark.parametrize("cliente", IDS_INVALIDOS)
def test_id_invalido_ou_inexistente_e_404(http, cliente):
    e_erro(http.pedir("GET", f"/clientes/{cliente}/extrato"), 404)
    e_erro(http.transacao(cliente, 1, "c", "x"), 404)
    # Even an invalid body: the client's existence is decided first.
    e_erro(http.pedir("POST", f"/clientes/{cliente}/transacoes", "{}"), 404)


@pytest.mark.parametrize(
    "metodo, caminho",
    [
        ("GET", "/"),
        ("GET", "/clientes"),
        ("GET", "/clientes/1"),
        ("GET", "/clientes/1/"),
        ("GET", "/clientes/1/extrato/"),
        ("GET", "/clientes/1/extrato/x"),
        ("GET", "/clientes//extrato"),
        ("GET", "/cliente/1/extrato"),
        ("GET", "/clientes/1/saldo"),
        ("POST", "/clientes/1/transacao"),
        ("POST", "/clientes/1/transacoes/1"),
        ("DELETE", "/qualquer"),
    ],
)
def test_caminho_desconhecido_e_404(http, metodo, caminho):
    e_erro(http.pedir(metodo, caminho, "{}" if metodo == "POST" else None), 404)


@pytest.mark.parametrize(
    "metodo, caminho, permitido",
    [
        ("GET", "/clientes/1/transacoes", "POST"),
        ("PUT", "/clientes/1/transacoes", "POST"),
        ("DELETE", "/clientes/1/transacoes", "POST"),
        ("PATCH", "/clientes/1/transacoes", "POST"),
        ("POST", "/clientes/1/extrato", "GET"),
        ("PUT", "/clientes/1/extrato", "GET"),
        ("DELETE", "/clientes/1/extrato", "GET"),
    ],
)
def test_metodo_errado_e_405_com_allow(http, metodo, caminho, permitido):
    corpo = '{"valor": 1, "tipo": "c", "descricao": "x"}' if metodo != "GET" else None
    r = http.pedir(metodo, caminho, corpo)
    e_erro(r, 405)
    assert r.headers.get("allow") == permitido
    assert saldo(http, 1) == 0


def test_corpo_de_5000_bytes_e_413(http):
    corpo = json.dumps({"valor": 1, "tipo": "c", "descricao": "x"}).ljust(5000)
    assert len(corpo) == 5000
    e_erro(http.pedir("POST", "/clientes/1/transacoes", corpo), 413)
    assert saldo(http, 1) == 0


def test_corpo_de_4096_bytes_ainda_e_aceito(http):
    # The limit is on the body, so 4096 bytes of valid JSON are served.
    corpo = json.dumps({"valor": 1, "tipo": "c", "descricao": "x"}).ljust(4096)
    r = http.pedir("POST", "/clientes/1/transacoes", corpo)
    assert (r.status, e_json(r)) == (200, {"limite": 100000, "saldo": 1})
    e_erro(http.pedir("POST", "/clientes/1/transacoes", corpo + " "), 413)


def post_em_chunks(http, corpo, corte):
    """A POST whose body goes chunked, in two pieces: its size is only known
    after reading it. Returns (status, Content-Type, parsed body)."""
    conn = HTTPConnection("127.0.0.1", http.porta, timeout=10)
    try:
        conn.request(
            "POST",
            "/clientes/1/transacoes",
            body=iter([corpo[:corte], corpo[corte:]]),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), json.loads(r.read())
    finally:
        conn.close()


def test_corpo_grande_sem_content_length_e_413(http):
    corpo = b'{"valor": 1, "tipo": "c", "descricao": "x"}' + b" " * 6000
    status, tipo, resposta = post_em_chunks(http, corpo, 3000)
    assert status == 413
    assert tipo == "application/json"
    assert set(resposta) == {"erro"}
    assert saldo(http, 1) == 0


def test_corpo_pequeno_em_chunks_e_aceito(http):
    corpo = b'{"valor": 3, "tipo": "c", "descricao": "chunks"}'
    status, _, resposta = post_em_chunks(http, corpo, 10)
    assert (status, resposta) == (200, {"limite": 100000, "saldo": 3})


def test_requisicao_http_malformada_e_400(http):
    # HAProxy answers it itself, before any route is matched. Its body stays
    # HAProxy's built-in HTML page: 2.6 ignores custom pages for parse errors
    # (haproxy/haproxy#3032), so only the status is part of this test.
    with socket.create_connection(("127.0.0.1", http.porta), timeout=10) as s:
        s.sendall(b"NADA DISSO\r\n\r\n")
        resposta = b""
        while chunk := s.recv(4096):
            resposta += chunk
    assert resposta.split(b"\r\n")[0].startswith(b"HTTP/1.1 400 ")
    assert saldo(http, 1) == 0


# -- extrato ------------------------------------------------------------------


@pytest.mark.parametrize("cliente", sorted(LIMITES))
def test_extrato_inicial(http, cliente):
    r = http.extrato(cliente)
    assert r.status == 200
    corpo = e_json(r)
    assert corpo["saldo"]["total"] == 0
    assert corpo["saldo"]["limite"] == LIMITES[cliente]
    assert FORMATO_DATA.match(corpo["saldo"]["data_extrato"])
    assert corpo["ultimas_transacoes"] == []


def test_extrato_forma_e_ordem(http):
    for n in range(12):
        assert http.transacao(2, n + 1, "c" if n % 2 else "d", f"item {n}").status == 200
    corpo = e_json(http.extrato(2))
    assert set(corpo) == {"saldo", "ultimas_transacoes"}
    assert set(corpo["saldo"]) == {"total", "data_extrato", "limite"}
    esperado_total = sum((n + 1) if n % 2 else -(n + 1) for n in range(12))
    assert corpo["saldo"]["total"] == esperado_total
    assert corpo["saldo"]["limite"] == 80000
    itens = corpo["ultimas_transacoes"]
    assert [i["descricao"] for i in itens] == [f"item {n}" for n in range(11, 1, -1)]
    for n, item in zip(range(11, 1, -1), itens, strict=True):
        assert set(item) == {"valor", "tipo", "descricao", "realizada_em"}
        assert item["valor"] == n + 1 and item["tipo"] == ("c" if n % 2 else "d")
        assert FORMATO_DATA.match(item["realizada_em"])
    assert [i["realizada_em"] for i in itens] == sorted((i["realizada_em"] for i in itens), reverse=True)


def test_varias_requisicoes_na_mesma_conexao(http):
    # Keep-alive: a client may reuse its connection, as each virtual user does.
    conn = HTTPConnection("127.0.0.1", http.porta, timeout=10)
    try:
        for n in range(1, 6):
            conn.request(
                "POST",
                "/clientes/3/transacoes",
                body=json.dumps({"valor": 10, "tipo": "c", "descricao": "ka"}),
                headers={"Content-Type": "application/json"},
            )
            r = conn.getresponse()
            assert (r.status, json.loads(r.read())) == (200, {"limite": 1000000, "saldo": 10 * n})
            conn.request("GET", "/clientes/3/extrato")
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["saldo"]["total"] == 10 * n
    finally:
        conn.close()
