"""api.transacao called directly, as the API role calls it: every rule of the
contract for POST /clientes/{id}/transacoes, decided inside PostgreSQL."""

import json
import random
import threading

import psycopg
import pytest
from conftest import LIMITES

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus

MAX_BIGINT = 2**63 - 1


def transacao(api_db, cliente, corpo):
    """Calls api.transacao like server.py does; a dict or list is sent as JSON."""
    if not isinstance(corpo, str) and corpo is not None:
        corpo = json.dumps(corpo)
    status, resposta = api_db.execute("select status, resposta from api.transacao(%s, %s)", (cliente, corpo)).fetchone()
    return status, json.loads(resposta)


def pedido(valor=1, tipo="c", descricao="descricao"):
    return {"valor": valor, "tipo": tipo, "descricao": descricao}


def estado(db, cliente):
    """(saldo, rows in the ledger) of one client, read as the superuser."""
    return db.execute(
        "select c.saldo, (select count(*) from crebito.transacao as t where t.cliente_id = c.id)"
        " from crebito.cliente as c where c.id = %s",
        (cliente,),
    ).fetchone()


@pytest.fixture(autouse=True)
def livros_em_ordem(api_db):
    """Whatever a test did, the ledger must still agree with every balance."""
    yield
    assert api_db.execute("select * from api.auditoria()").fetchall() == []


# -- accepted transactions ---------------------------------------------------


def test_credito_responde_limite_e_saldo(api_db, db):
    status, corpo = transacao(api_db, 1, pedido(1000, "c", "deposito"))
    assert status == 200
    assert corpo == {"limite": 100000, "saldo": 1000}
    assert list(corpo) == ["limite", "saldo"]
    linha = db.execute("select cliente_id, valor, tipo::text, descricao from crebito.transacao").fetchall()
    assert linha == [(1, 1000, "c", "deposito")]


def test_debito_responde_limite_e_saldo(api_db, db):
    status, corpo = transacao(api_db, 2, pedido(300, "d", "saque"))
    assert (status, corpo) == (200, {"limite": 80000, "saldo": -300})
    status, corpo = transacao(api_db, 2, pedido(500, "c", "deposito"))
    assert (status, corpo) == (200, {"limite": 80000, "saldo": 200})
    assert estado(db, 2) == (200, 2)


def test_corpo_do_200_e_exatamente_limite_e_saldo(api_db):
    # The wire format: an object with exactly these two integer members.
    status, resposta = api_db.execute(
        "select status, resposta from api.transacao(3, %s)", (json.dumps(pedido(7, "d")),)
    ).fetchone()
    assert status == 200
    assert json.loads(resposta) == {"limite": 1000000, "saldo": -7}
    assert all(type(v) is int for v in json.loads(resposta).values())


@pytest.mark.parametrize("cliente", sorted(LIMITES))
def test_debito_ate_exatamente_menos_limite_e_aceito_um_centavo_a_mais_nao(api_db, db, cliente):
    limite = LIMITES[cliente]
    status, corpo = transacao(api_db, cliente, pedido(limite, "d", "tudo"))
    assert (status, corpo) == (200, {"limite": limite, "saldo": -limite})

    antes = estado(db, cliente)
    status, corpo = transacao(api_db, cliente, pedido(1, "d", "um a mais"))
    assert status == 422
    assert set(corpo) == {"erro"}
    assert estado(db, cliente) == antes == (-limite, 1)


def test_debito_maior_que_o_limite_desde_zero_e_recusado(api_db, db):
    status, _ = transacao(api_db, 1, pedido(100001, "d"))
    assert status == 422
    assert estado(db, 1) == (0, 0)


def test_debito_recusado_depois_de_aceitos_nao_muda_nada(api_db, db):
    assert transacao(api_db, 1, pedido(60000, "d"))[0] == 200
    assert transacao(api_db, 1, pedido(40000, "d"))[0] == 200
    assert transacao(api_db, 1, pedido(1, "d"))[0] == 422
    # A credit makes room again: the limit is on the balance, not on the sum of debits.
    assert transacao(api_db, 1, pedido(1, "c")) == (200, {"limite": 100000, "saldo": -99999})
    assert transacao(api_db, 1, pedido(1, "d")) == (200, {"limite": 100000, "saldo": -100000})
    assert estado(db, 1) == (-100000, 4)


# -- unknown clients ------------------------------------------------------------


@pytest.mark.parametrize("cliente", [6, 0, -1, 2**31 - 1, -(2**31)])
@pytest.mark.parametrize(
    "corpo",
    [pedido(1, "c"), pedido(1, "d"), pedido(1.5, "x", ""), "não é json", None],
    ids=["credito", "debito", "invalido", "nao-json", "nulo"],
)
def test_cliente_inexistente_e_404_mesmo_com_corpo_invalido(api_db, db, cliente, corpo):
    status, resposta = transacao(api_db, cliente, corpo)
    assert status == 404
    assert set(resposta) == {"erro"}
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)
    assert db.execute("select count(*) from crebito.cliente").fetchone() == (5,)


# -- invalid payloads -----------------------------------------------------------

INVALIDOS = {
    # The five invalid posts of the official test.
    "oficial-valor-1.2": '{"valor": 1.2, "tipo": "d", "descricao": "devolve"}',
    "oficial-tipo-x": '{"valor": 1, "tipo": "x", "descricao": "devolve"}',
    "oficial-descricao-longa": '{"valor": 1, "tipo": "c", "descricao": "123456789 e mais um pouco"}',
    "oficial-descricao-vazia": '{"valor": 1, "tipo": "c", "descricao": ""}',
    "oficial-descricao-null": '{"valor": 1, "tipo": "c", "descricao": null}',
    # Missing fields.
    "sem-valor": '{"tipo": "c", "descricao": "x"}',
    "sem-tipo": '{"valor": 1, "descricao": "x"}',
    "sem-descricao": '{"valor": 1, "tipo": "c"}',
    "objeto-vazio": "{}",
    # valor of the wrong type or outside the positive 64-bit integers.
    "valor-string": '{"valor": "1", "tipo": "c", "descricao": "x"}',
    "valor-string-vazia": '{"valor": "", "tipo": "c", "descricao": "x"}',
    "valor-null": '{"valor": null, "tipo": "c", "descricao": "x"}',
    "valor-true": '{"valor": true, "tipo": "c", "descricao": "x"}',
    "valor-array": '{"valor": [1], "tipo": "c", "descricao": "x"}',
    "valor-objeto": '{"valor": {"v": 1}, "tipo": "c", "descricao": "x"}',
    "valor-zero": '{"valor": 0, "tipo": "c", "descricao": "x"}',
    "valor-menos-zero": '{"valor": -0, "tipo": "c", "descricao": "x"}',
    "valor-negativo": '{"valor": -1, "tipo": "c", "descricao": "x"}',
    "valor-negativo-debito": '{"valor": -5, "tipo": "d", "descricao": "x"}',
    "valor-1.5": '{"valor": 1.5, "tipo": "c", "descricao": "x"}',
    "valor-0.5": '{"valor": 0.5, "tipo": "c", "descricao": "x"}',
    "valor-1e-400": '{"valor": 1e-400, "tipo": "c", "descricao": "x"}',
    "valor-2^63": f'{{"valor": {2**63}, "tipo": "c", "descricao": "x"}}',
    "valor-2^64": f'{{"valor": {2**64}, "tipo": "c", "descricao": "x"}}',
    "valor-2^63-debito": f'{{"valor": {2**63}, "tipo": "d", "descricao": "x"}}',
    "valor-enorme": f'{{"valor": {10**100}, "tipo": "c", "descricao": "x"}}',
    "valor-1e400": '{"valor": 1e400, "tipo": "c", "descricao": "x"}',
    "valor-max-mais-meio": f'{{"valor": {MAX_BIGINT}.5, "tipo": "c", "descricao": "x"}}',
    # tipo other than the strings "c" and "d".
    "tipo-C": '{"valor": 1, "tipo": "C", "descricao": "x"}',
    "tipo-D": '{"valor": 1, "tipo": "D", "descricao": "x"}',
    "tipo-cd": '{"valor": 1, "tipo": "cd", "descricao": "x"}',
    "tipo-espaco": '{"valor": 1, "tipo": " c", "descricao": "x"}',
    "tipo-vazio": '{"valor": 1, "tipo": "", "descricao": "x"}',
    "tipo-null": '{"valor": 1, "tipo": null, "descricao": "x"}',
    "tipo-numero": '{"valor": 1, "tipo": 1, "descricao": "x"}',
    "tipo-array": '{"valor": 1, "tipo": ["c"], "descricao": "x"}',
    "tipo-objeto": '{"valor": 1, "tipo": {"c": "c"}, "descricao": "x"}',
    "tipo-true": '{"valor": 1, "tipo": true, "descricao": "x"}',
    # descricao other than a string of 1 to 10 characters.
    "descricao-11": '{"valor": 1, "tipo": "c", "descricao": "12345678901"}',
    "descricao-numero": '{"valor": 1, "tipo": "c", "descricao": 1234}',
    "descricao-array": '{"valor": 1, "tipo": "c", "descricao": ["x"]}',
    "descricao-objeto": '{"valor": 1, "tipo": "c", "descricao": {"x": "y"}}',
    "descricao-true": '{"valor": 1, "tipo": "c", "descricao": true}',
    "descricao-false": '{"valor": 1, "tipo": "c", "descricao": false}',
    "descricao-nul": '{"valor": 1, "tipo": "c", "descricao": "a\\u0000b"}',
    # A body that is JSON but not an object.
    "corpo-array": '[{"valor": 1, "tipo": "c", "descricao": "x"}]',
    "corpo-string": '"{\\"valor\\": 1, \\"tipo\\": \\"c\\", \\"descricao\\": \\"x\\"}"',
    "corpo-numero": "1",
    "corpo-null": "null",
    "corpo-true": "true",
    # Not JSON at all.
    "vazio": "",
    "espacos": "   ",
    "truncado": '{"valor": 1, "tipo": "c", "descricao": "x"',
    "formulario": "valor=1&tipo=c&descricao=x",
    "aspas-simples": "{'valor': 1, 'tipo': 'c', 'descricao': 'x'}",
    "nan": '{"valor": NaN, "tipo": "c", "descricao": "x"}',
    "infinity": '{"valor": Infinity, "tipo": "c", "descricao": "x"}',
    "hexadecimal": '{"valor": 0x10, "tipo": "c", "descricao": "x"}',
    "lixo-depois": '{"valor": 1, "tipo": "c", "descricao": "x"} lixo',
}


@pytest.mark.parametrize("corpo", INVALIDOS.values(), ids=INVALIDOS.keys())
def test_corpo_invalido_e_422_e_nao_muda_nada(api_db, db, corpo):
    status, resposta = transacao(api_db, 1, corpo)
    assert status == 422
    assert set(resposta) == {"erro"}
    assert isinstance(resposta["erro"], str) and resposta["erro"]
    assert estado(db, 1) == (0, 0)


def test_corpo_sql_nulo_e_422(api_db, db):
    status, _ = transacao(api_db, 1, None)
    assert status == 422
    assert estado(db, 1) == (0, 0)


# -- valor: integers in every JSON spelling, up to 64 bits ---------------------


@pytest.mark.parametrize(
    "texto, valor",
    [("1", 1), ("1.0", 1), ("1e2", 100), ("1E2", 100), ("100.000", 100), ("2.5e1", 25), ("1e+2", 100)],
)
def test_valor_com_parte_fracionaria_zero_e_inteiro(api_db, db, texto, valor):
    # As JSON Schema's "integer": a number whose fractional part is zero.
    status, corpo = transacao(api_db, 1, f'{{"valor": {texto}, "tipo": "c", "descricao": "x"}}')
    assert (status, corpo) == (200, {"limite": 100000, "saldo": valor})
    assert db.execute("select valor from crebito.transacao").fetchall() == [(valor,)]


def test_maior_bigint_como_credito_e_aceito_e_o_proximo_credito_nao_transborda(api_db, db):
    status, corpo = transacao(api_db, 4, pedido(MAX_BIGINT, "c", "enorme"))
    assert (status, corpo) == (200, {"limite": 10000000, "saldo": MAX_BIGINT})
    # One more cent would overflow bigint: refused cleanly, never an SQL error.
    status, corpo = transacao(api_db, 4, pedido(1, "c", "transborda"))
    assert status == 422
    assert set(corpo) == {"erro"}
    assert estado(db, 4) == (MAX_BIGINT, 1)
    # Debits still work from there.
    assert transacao(api_db, 4, pedido(MAX_BIGINT, "d", "volta")) == (200, {"limite": 10000000, "saldo": 0})


def test_debito_do_maior_bigint_e_recusado_sem_transbordar(api_db, db):
    status, _ = transacao(api_db, 1, pedido(MAX_BIGINT, "d"))
    assert status == 422
    assert estado(db, 1) == (0, 0)


def test_membros_a_mais_sao_ignorados(api_db):
    # Current behaviour, not a rule of the contract: only the three fields are read.
    status, corpo = transacao(api_db, 1, {**pedido(5, "c"), "extra": [1, 2]})
    assert (status, corpo) == (200, {"limite": 100000, "saldo": 5})


# -- descricao: counted in characters, not bytes ------------------------------


@pytest.mark.parametrize("descricao", ["ação-çãõé!", "😀" * 10, "a", " ", "日本語のテキスト10"])
def test_descricao_de_1_a_10_caracteres_e_aceita(api_db, db, descricao):
    assert 1 <= len(descricao) <= 10
    status, _ = transacao(api_db, 1, pedido(1, "c", descricao))
    assert status == 200
    assert db.execute("select descricao from crebito.transacao").fetchall() == [(descricao,)]


@pytest.mark.parametrize("descricao", ["ação-çãõé!x", "😀" * 11, "x" * 11, "日本語のテキスト10!"])
def test_descricao_de_11_caracteres_e_recusada(api_db, db, descricao):
    assert len(descricao) == 11
    assert transacao(api_db, 1, pedido(1, "c", descricao))[0] == 422
    assert estado(db, 1) == (0, 0)


def test_descricao_com_escapes_json_conta_o_caractere(api_db, db):
    # "\u00e7" is one character once decoded.
    status, _ = transacao(api_db, 1, '{"valor": 1, "tipo": "c", "descricao": "\\u00e7\\u00e3o123456\\n"}')
    assert status == 200
    assert db.execute("select descricao from crebito.transacao").fetchone() == ("ção123456\n",)


# -- concurrency ----------------------------------------------------------------


def _debitar_em_paralelo(stack, cliente, valores_por_thread):
    """Each thread has its own connection as the API role; all start together."""
    barreira = threading.Barrier(len(valores_por_thread))
    resultados = [[] for _ in valores_por_thread]
    erros = []

    def trabalhar(i):
        try:
            with psycopg.connect(stack.dsn("crebito_api"), autocommit=True) as conn:
                barreira.wait(timeout=30)
                for valor in valores_por_thread[i]:
                    status, corpo = transacao(conn, cliente, pedido(valor, "d", f"t{i}"))
                    resultados[i].append((valor, status, corpo))
        except Exception as e:  # reported below, a thread cannot fail the test itself
            erros.append(e)

    threads = [threading.Thread(target=trabalhar, args=(i,)) for i in range(len(valores_por_thread))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert erros == []
    return [r for rs in resultados for r in rs]


def test_debitos_concorrentes_nunca_passam_do_limite(stack, api_db, db):
    rng = random.Random(2024)
    cliente, limite = 2, LIMITES[2]
    valores = [[rng.randint(1, 10000) for _ in range(25)] for _ in range(8)]
    resultados = _debitar_em_paralelo(stack, cliente, valores)

    aceitos = [(v, c) for v, s, c in resultados if s == 200]
    recusados = [v for v, s, c in resultados if s == 422]
    assert len(aceitos) + len(recusados) == 200
    assert aceitos and recusados
    saldo, linhas = estado(db, cliente)
    assert saldo == -sum(v for v, _ in aceitos)
    assert saldo >= -limite
    assert linhas == len(aceitos)
    # Debits only: the room left only shrinks, so every refused debit was larger
    # than the room left at the end; none was refused while it still fitted.
    assert saldo + limite < min(recusados)
    # Sorted by the balance they answered, the accepted debits form one chain:
    # each answer is the previous balance minus its own valor.
    anterior = 0
    for valor, corpo in sorted(aceitos, key=lambda a: -a[1]["saldo"]):
        assert corpo == {"limite": limite, "saldo": anterior - valor}
        anterior = corpo["saldo"]


# -- entry numbers ----------------------------------------------------------


def test_lancamentos_numerados_por_cliente_sem_lacunas(api_db, db):
    # Each client counts its own entries from 1; a refusal takes no number.
    assert transacao(api_db, 2, pedido(80000, "d", "tudo"))[0] == 200
    assert transacao(api_db, 1, pedido(5, "c", "um"))[0] == 200
    assert transacao(api_db, 2, pedido(1, "d", "recusada"))[0] == 422
    assert transacao(api_db, 2, pedido(7, "c", "volta"))[0] == 200
    linhas = db.execute(
        "select cliente_id, lancamento, descricao from crebito.transacao order by cliente_id, lancamento"
    ).fetchall()
    assert linhas == [(1, 1, "um"), (2, 1, "tudo"), (2, 2, "volta")]
    ultimos = db.execute("select id, ultimo_lancamento from crebito.cliente order by id").fetchall()
    assert ultimos == [(1, 1), (2, 2), (3, 0), (4, 0), (5, 0)]


def test_concorrentes_recebem_numeros_distintos_e_seguidos(stack, db):
    def credita():
        with psycopg.connect(stack.dsn("crebito_api"), autocommit=True) as conn:
            for _ in range(25):
                assert transacao(conn, 4, pedido(1, "c", "paralelo"))[0] == 200

    threads = [threading.Thread(target=credita) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numeros = [n for (n,) in db.execute("select lancamento from crebito.transacao where cliente_id = 4")]
    assert sorted(numeros) == list(range(1, 101))
    assert db.execute("select saldo, ultimo_lancamento from crebito.cliente where id = 4").fetchone() == (100, 100)


# -- many accounts ------------------------------------------------------------


def test_semear_muitos_clientes_reprodutiveis(api_db, db):
    assert db.execute("select crebito.semear(1000, 42)").fetchone() == (1005,)
    # Again: nothing added, nothing changed.
    assert db.execute("select crebito.semear(1000, 42)").fetchone() == (1005,)
    limites = db.execute("select id, limite from crebito.cliente order by id").fetchall()
    assert [i for i, _ in limites] == list(range(1, 1006))
    assert dict(limites[:5]) == LIMITES
    assert all(1000 <= lim <= 1000000 and lim % 1000 == 0 for _, lim in limites[5:])
    assert len({lim for _, lim in limites[5:]}) > 500
    # The same seed draws the same limits, another seed others.
    with db.transaction(force_rollback=True):
        db.execute("delete from crebito.cliente where id > 5")
        db.execute("select crebito.semear(1000, 42)")
        assert db.execute("select id, limite from crebito.cliente order by id").fetchall() == limites
        db.execute("delete from crebito.cliente where id > 5")
        db.execute("select crebito.semear(1000, 7)")
        assert db.execute("select id, limite from crebito.cliente order by id").fetchall() != limites
    # A seeded client is served like any other.
    limite = dict(limites)[1005]
    assert transacao(api_db, 1005, pedido(limite, "d", "tudo")) == (200, {"limite": limite, "saldo": -limite})
    assert transacao(api_db, 1005, pedido(1, "d", "mais"))[0] == 422


def test_api_nao_semeia(api_db):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        api_db.execute("select crebito.semear(1)")
