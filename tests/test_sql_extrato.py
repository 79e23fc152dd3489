"""api.extrato called directly, as the API role calls it: the statement of
GET /clientes/{id}/extrato."""

import json
import re
from datetime import UTC, datetime

import psycopg
import pytest
from conftest import LIMITES

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus

FORMATO_DATA = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def extrato(api_db, cliente):
    status, resposta = api_db.execute("select status, resposta from api.extrato(%s)", (cliente,)).fetchone()
    return status, json.loads(resposta)


def transacao(api_db, cliente, valor, tipo, descricao):
    corpo = json.dumps({"valor": valor, "tipo": tipo, "descricao": descricao})
    return api_db.execute("select status from api.transacao(%s, %s)", (cliente, corpo)).fetchone()[0]


def data(texto):
    assert FORMATO_DATA.match(texto), texto
    return datetime.strptime(texto, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@pytest.fixture(autouse=True)
def livros_em_ordem(api_db):
    yield
    assert api_db.execute("select * from api.auditoria()").fetchall() == []


@pytest.mark.parametrize("cliente", sorted(LIMITES))
def test_extrato_inicial(api_db, cliente):
    status, corpo = extrato(api_db, cliente)
    assert status == 200
    assert list(corpo) == ["saldo", "ultimas_transacoes"]
    assert set(corpo["saldo"]) == {"total", "data_extrato", "limite"}
    assert corpo["saldo"]["total"] == 0
    assert corpo["saldo"]["limite"] == LIMITES[cliente]
    assert corpo["ultimas_transacoes"] == []


@pytest.mark.parametrize("cliente", [6, 0, -1, 2**31 - 1])
def test_extrato_de_cliente_inexistente_e_404(api_db, cliente):
    status, corpo = extrato(api_db, cliente)
    assert status == 404
    assert set(corpo) == {"erro"}


def test_data_extrato_e_o_momento_da_consulta(api_db, db):
    antes = db.execute("select clock_timestamp()").fetchone()[0]
    _, corpo = extrato(api_db, 1)
    depois = db.execute("select clock_timestamp()").fetchone()[0]
    assert antes <= data(corpo["saldo"]["data_extrato"]) <= depois


def test_itens_do_extrato(api_db, db):
    antes = db.execute("select clock_timestamp()").fetchone()[0]
    assert transacao(api_db, 1, 1000, "c", "salário") == 200
    assert transacao(api_db, 1, 250, "d", "pão") == 200
    depois = db.execute("select clock_timestamp()").fetchone()[0]
    _, corpo = extrato(api_db, 1)
    itens = corpo["ultimas_transacoes"]
    assert [{k: i[k] for k in ("valor", "tipo", "descricao")} for i in itens] == [
        {"valor": 250, "tipo": "d", "descricao": "pão"},
        {"valor": 1000, "tipo": "c", "descricao": "salário"},
    ]
    for item in itens:
        assert set(item) == {"valor", "tipo", "descricao", "realizada_em"}
        assert type(item["valor"]) is int
        assert antes <= data(item["realizada_em"]) <= depois
    assert data(itens[0]["realizada_em"]) >= data(itens[1]["realizada_em"])
    assert data(corpo["saldo"]["data_extrato"]) >= data(itens[0]["realizada_em"])
    assert corpo["saldo"] == {"total": 750, "limite": 100000, "data_extrato": corpo["saldo"]["data_extrato"]}


def test_no_maximo_dez_mais_recentes_primeiro(api_db):
    for n in range(1, 16):
        assert transacao(api_db, 3, n, "c" if n % 3 else "d", f"t{n}") == 200
    _, corpo = extrato(api_db, 3)
    itens = corpo["ultimas_transacoes"]
    assert [i["descricao"] for i in itens] == [f"t{n}" for n in range(15, 5, -1)]
    assert [i["valor"] for i in itens] == list(range(15, 5, -1))
    assert [i["tipo"] for i in itens] == ["c" if n % 3 else "d" for n in range(15, 5, -1)]
    momentos = [data(i["realizada_em"]) for i in itens]
    assert momentos == sorted(momentos, reverse=True)


def test_total_e_o_saldo_nao_a_soma_dos_itens(api_db):
    # The oldest of eleven transactions is not listed but still counts.
    assert transacao(api_db, 5, 100000, "c", "antigo") == 200
    for n in range(10):
        assert transacao(api_db, 5, 1, "d", f"d{n}") == 200
    _, corpo = extrato(api_db, 5)
    assert len(corpo["ultimas_transacoes"]) == 10
    assert corpo["saldo"]["total"] == 100000 - 10
    assert "antigo" not in [i["descricao"] for i in corpo["ultimas_transacoes"]]


def test_recusadas_nao_aparecem_e_clientes_nao_se_misturam(api_db):
    assert transacao(api_db, 2, 80000, "d", "tudo") == 200
    assert transacao(api_db, 2, 1, "d", "recusada") == 422
    assert transacao(api_db, 1, 7, "c", "outro") == 200
    _, corpo = extrato(api_db, 2)
    assert corpo["saldo"]["total"] == -80000
    assert [i["descricao"] for i in corpo["ultimas_transacoes"]] == ["tudo"]
    _, corpo = extrato(api_db, 1)
    assert [i["descricao"] for i in corpo["ultimas_transacoes"]] == ["outro"]


def test_descricao_nao_ascii_volta_intacta(api_db):
    assert transacao(api_db, 1, 1, "c", "ação-çãõé!") == 200
    assert transacao(api_db, 1, 1, "c", 'aspas"\\') == 200
    _, corpo = extrato(api_db, 1)
    assert [i["descricao"] for i in corpo["ultimas_transacoes"]] == ['aspas"\\', "ação-çãõé!"]


def test_extrato_com_saldo_de_64_bits(api_db):
    assert transacao(api_db, 4, 2**63 - 1, "c", "enorme") == 200
    _, corpo = extrato(api_db, 4)
    assert corpo["saldo"]["total"] == 2**63 - 1
    assert corpo["ultimas_transacoes"][0]["valor"] == 2**63 - 1
    assert transacao(api_db, 4, 2**63 - 1, "d", "volta") == 200


def test_papel_da_api_so_executa_funcoes(api_db):
    # Least privilege: the API role cannot read or write the tables directly.
    for sql in ("select * from crebito.cliente", "update crebito.cliente set saldo = 1"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            api_db.execute(sql)


@pytest.mark.unico  # reads the local index's counters: on a cluster the rows are on the workers
def test_plano_guardado_com_livro_vazio_le_so_os_dez_mais_recentes(db):
    """A session keeps the plan it made for the statement while the ledger was
    empty. Once the ledger is large, that plan must still read the ten newest
    rows through the index, not every row of the client and sort them."""

    def lidos():
        sql = "select pg_stat_get_xact_tuples_returned('crebito.transacao_pkey'::regclass)"
        return db.execute(sql).fetchone()[0]

    with db.transaction(force_rollback=True):
        db.execute("truncate crebito.transacao, crebito.idempotencia")
        for _ in range(8):  # past the plan cache's five custom plans
            db.execute("select * from api.extrato(1)")
        db.execute(
            "insert into crebito.transacao (cliente_id, lancamento, valor, tipo, descricao)"
            " select 1, n, 1, 'c', 'x' from generate_series(1, 5000) as n"
        )
        antes = lidos()
        status, resposta = db.execute("select status, resposta from api.extrato(1)").fetchone()
        assert status == 200
        assert len(json.loads(resposta)["ultimas_transacoes"]) == 10
        assert lidos() - antes <= 10


def test_ordem_e_a_do_numero_do_lancamento_nao_a_de_gravacao(api_db, db):
    """The ten newest are the ten highest entry numbers, whatever order the
    rows were written in (on a cluster, a shard moved or rebuilt is rewritten
    in any order) and whatever their timestamps say to the second."""
    with db.transaction():
        for n in (12, 3, 11, 1, 7, 2, 10, 5, 9, 4, 8, 6):
            db.execute(
                "insert into crebito.transacao (cliente_id, lancamento, valor, tipo, descricao, realizada_em)"
                " values (1, %s, %s, 'c', %s, '2024-01-01T00:00:00Z')",
                [n, n, f"n{n}"],
            )
        db.execute("update crebito.cliente set saldo = 78, ultimo_lancamento = 12 where id = 1")
    _, corpo = extrato(api_db, 1)
    assert [i["descricao"] for i in corpo["ultimas_transacoes"]] == [f"n{n}" for n in range(12, 2, -1)]
    # The next entry, numbered 13, comes first.
    assert transacao(api_db, 1, 1, "d", "n13") == 200
    _, corpo = extrato(api_db, 1)
    assert [i["descricao"] for i in corpo["ultimas_transacoes"]][:2] == ["n13", "n12"]
