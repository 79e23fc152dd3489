"""Idempotency-Key, Stripe style: a repeated request with the same key answers
what the first one answered and changes nothing, so a client may retry any
request whose answer it never saw. Tested through HTTP and checked in SQL."""

import json
import threading

import pytest

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus

CHAVES_INVALIDAS = {
    "vazia": "",
    "65 caracteres": "k" * 65,
    "espaco no meio": "a b",
    "nao ascii": "chave-é",
    "tab no meio": "a\tb",
}


def estado(db, cliente):
    """What a repeated request must not change: the balance and the ledger."""
    saldo = db.execute("select saldo from crebito.cliente where id = %s", [cliente]).fetchone()[0]
    livro = db.execute("select count(*) from crebito.transacao where cliente_id = %s", [cliente]).fetchone()[0]
    chaves = db.execute("select count(*) from crebito.idempotencia where cliente_id = %s", [cliente]).fetchone()[0]
    return saldo, livro, chaves


def com_chave(chave):
    return {"Idempotency-Key": chave}


@pytest.mark.parametrize("chave", list(CHAVES_INVALIDAS.values()), ids=list(CHAVES_INVALIDAS))
def test_chave_invalida_e_422_sem_efeito(http, db, chave):
    r = http.transacao(1, 100, "c", "invalida", headers=com_chave(chave))
    assert r.status == 422, r.corpo
    assert "erro" in r.json
    assert estado(db, 1) == (0, 0, 0)


@pytest.mark.parametrize("chave", ["a", "k" * 64, "!~" * 5, "550e8400-e29b-41d4-a716-446655440000"])
def test_chave_valida_nos_limites(http, db, chave):
    r = http.transacao(1, 100, "c", "valida", headers=com_chave(chave))
    assert r.status == 200, r.corpo
    assert db.execute("select chave from crebito.idempotencia").fetchall() == [(chave,)]


def test_repeticao_devolve_a_primeira_resposta(http, db):
    primeira = http.transacao(1, 700, "d", "primeira", headers=com_chave("k1"))
    assert primeira.status == 200
    assert primeira.json == {"limite": 100000, "saldo": -700}
    antes = estado(db, 1)
    # Another transaction moves the balance: the repeat must still show the
    # first answer, not the current balance.
    assert http.transacao(1, 50, "c", "outra").status == 200
    depois_da_outra = estado(db, 1)
    for _ in range(3):
        r = http.transacao(1, 700, "d", "primeira", headers=com_chave("k1"))
        assert (r.status, r.corpo) == (primeira.status, primeira.corpo)
    assert estado(db, 1) == depois_da_outra
    assert depois_da_outra[0] == antes[0] + 50
    assert db.execute("select count(*) from crebito.transacao where descricao = 'primeira'").fetchone()[0] == 1


def test_repeticao_de_422_por_limite_continua_422(http, db):
    # Client 1's limit is 100000: this debit cannot be applied.
    primeira = http.transacao(1, 100001, "d", "grande", headers=com_chave("sem-limite"))
    assert primeira.status == 422
    antes = estado(db, 1)
    assert antes == (0, 0, 1)
    # A credit makes the same debit possible now, but the key already has its answer.
    assert http.transacao(1, 5000, "c", "credito").status == 200
    r = http.transacao(1, 100001, "d", "grande", headers=com_chave("sem-limite"))
    assert (r.status, r.corpo) == (primeira.status, primeira.corpo)
    saldo, livro, chaves = estado(db, 1)
    assert (saldo, livro, chaves) == (5000, 1, 1)


def test_mesma_chave_com_outro_corpo_e_422_sem_efeito(http, db):
    primeira = http.transacao(1, 100, "c", "original", headers=com_chave("k"))
    assert primeira.status == 200
    antes = estado(db, 1)
    for valor, tipo, descricao in [(101, "c", "original"), (100, "d", "original"), (100, "c", "outra")]:
        r = http.transacao(1, valor, tipo, descricao, headers=com_chave("k"))
        assert r.status == 422, (valor, tipo, descricao, r.corpo)
        assert "erro" in r.json
    assert estado(db, 1) == antes
    # The stored answer is still the first one.
    r = http.transacao(1, 100, "c", "original", headers=com_chave("k"))
    assert (r.status, r.corpo) == (primeira.status, primeira.corpo)


def test_mesma_chave_em_outro_cliente_e_independente(http, db):
    r1 = http.transacao(1, 100, "c", "um", headers=com_chave("compartilhada"))
    r2 = http.transacao(2, 100, "c", "um", headers=com_chave("compartilhada"))
    assert r1.status == r2.status == 200
    assert r1.json == {"limite": 100000, "saldo": 100}
    assert r2.json == {"limite": 80000, "saldo": 100}
    assert estado(db, 1)[:2] == (100, 1)
    assert estado(db, 2)[:2] == (100, 1)


def test_corpo_igual_em_json_e_o_mesmo_pedido(http, db):
    primeira = http.pedir(
        "POST", "/clientes/1/transacoes", '{"valor":100,"tipo":"c","descricao":"x"}', headers=com_chave("json")
    )
    assert primeira.status == 200
    antes = estado(db, 1)
    for corpo in [
        '{ "valor" : 100 , "tipo" : "c" , "descricao" : "x" }',
        '{"descricao":"x","tipo":"c","valor":100}',
        '\n\t{"tipo": "c",\n "descricao": "x",\n "valor": 100}\n',
    ]:
        r = http.pedir("POST", "/clientes/1/transacoes", corpo, headers=com_chave("json"))
        assert (r.status, r.corpo) == (primeira.status, primeira.corpo), corpo
    assert estado(db, 1) == antes


def test_chave_concorrente_aplica_uma_vez(http, db):
    n = 16
    respostas = []
    barreira = threading.Barrier(n)

    def pedir():
        barreira.wait()
        r = http.transacao(3, 1234, "d", "concorre", headers=com_chave("corrida"))
        respostas.append((r.status, r.corpo))

    threads = [threading.Thread(target=pedir) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(respostas) == n
    # Every request sees the same answer: the one of the single application.
    assert {s for s, _ in respostas} == {200}
    assert len({c for _, c in respostas}) == 1
    assert json.loads(respostas[0][1]) == {"limite": 1000000, "saldo": -1234}
    assert estado(db, 3) == (-1234, 1, 1)


def test_sem_chave_cada_pedido_conta(http, db):
    for _ in range(3):
        assert http.transacao(1, 100, "c", "semchave").status == 200
    assert estado(db, 1) == (300, 3, 0)
    r = http.transacao(1, 100301, "d", "semchave")
    assert r.status == 422
    assert estado(db, 1) == (300, 3, 0)


def test_chave_com_corpo_invalido_nao_e_gravada(http, db):
    r = http.transacao(1, 100, "x", "invalido", headers=com_chave("k"))
    assert r.status == 422
    assert estado(db, 1) == (0, 0, 0)
    # The key is still free for a valid request.
    r = http.transacao(1, 100, "c", "valido", headers=com_chave("k"))
    assert r.status == 200
    assert estado(db, 1) == (100, 1, 1)


def test_chave_em_cliente_inexistente_e_404(http, db):
    r = http.transacao(6, 100, "c", "ninguem", headers=com_chave("k"))
    assert r.status == 404
    assert db.execute("select count(*) from crebito.idempotencia").fetchone()[0] == 0


def test_sql_repeticao_direta(db):
    """The same rules at the function level, which is the contract the shim forwards."""
    corpo = '{"valor": 10, "tipo": "c", "descricao": "sql"}'
    primeira = db.execute("select status, resposta from api.transacao(4, %s, 'sql-1')", [corpo]).fetchone()
    assert primeira == (200, '{"limite":10000000,"saldo":10}')
    repetida = db.execute(
        "select status, resposta from api.transacao(4, %s, 'sql-1')", [corpo.replace(" ", "")]
    ).fetchone()
    assert repetida == primeira
    outro = db.execute(
        "select status, resposta from api.transacao(4, %s, 'sql-1')", [corpo.replace("10", "11")]
    ).fetchone()
    assert outro[0] == 422
    assert estado(db, 4) == (10, 1, 1)
