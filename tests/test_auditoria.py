"""api.auditoria() checks the books: one row per violation, none when sound.

Each kind of violation is produced by corrupting the data as superuser inside
a transaction that is rolled back (dropping the constraint that would prevent
it first, which PostgreSQL allows transactionally), so the shared database is
never left corrupt."""

import os
import subprocess
import sys

import psycopg
import pytest
from conftest import RAIZ

# On the single-node and the Citus stack (conftest.py).
pytestmark = pytest.mark.citus


def auditar(db):
    return set(db.execute("select cliente, violacao from api.auditoria()").fetchall())


@pytest.fixture
def corromper(db):
    """The superuser connection inside a transaction that is always rolled back."""
    with db.transaction(force_rollback=True):
        # As the tables' owner, the role api.auditoria() reads them as: on a
        # cluster, a transaction may not read shards another role changed in it.
        db.execute("set local role crebito")
        yield db
    assert auditar(db) == set()


def inserir(db, cliente, valor, tipo, descricao="x", realizada_em="now()"):
    """Appends an entry numbered as api.transacao numbers it; returns its number."""
    return db.execute(
        "with c as (update crebito.cliente set ultimo_lancamento = ultimo_lancamento + 1 where id = %s"
        " returning ultimo_lancamento)"
        " insert into crebito.transacao (cliente_id, lancamento, valor, tipo, descricao, realizada_em)"
        f" select %s, c.ultimo_lancamento, %s, %s, %s, {realizada_em} from c returning lancamento",
        [cliente, cliente, valor, tipo, descricao],
    ).fetchone()[0]


def test_dados_limpos_nao_reportam_nada(http, db):
    assert auditar(db) == set()
    # Real traffic, keyed and not, accepted and refused, keeps the books sound.
    for i in range(20):
        http.transacao(1 + i % 5, 1000 + i, "c" if i % 3 else "d", f"limpo{i}", headers={"Idempotency-Key": f"a{i}"})
        http.transacao(2, 30000, "d", "semchave")
    assert db.execute("select count(*) from crebito.transacao").fetchone()[0] > 20
    assert db.execute("select count(*) from crebito.idempotencia where status = 422").fetchone()[0] == 0
    assert db.execute("select count(*) from crebito.transacao where cliente_id = 2 and tipo = 'd'").fetchone()[0] > 0
    assert auditar(db) == set()


def test_saldo_diferente_do_livro(corromper):
    inserir(corromper, 1, 500, "c")
    corromper.execute("update crebito.cliente set saldo = 499 where id = 1")
    assert auditar(corromper) == {(1, "saldo 499 difere da soma do livro 500")}


def test_saldo_sem_livro(corromper):
    corromper.execute("update crebito.cliente set saldo = 7 where id = 3")
    assert auditar(corromper) == {(3, "saldo 7 difere da soma do livro 0")}


def test_saldo_abaixo_do_limite(corromper):
    corromper.execute("alter table crebito.cliente drop constraint saldo_dentro_do_limite")
    # The ledger agrees with the balance, so only the overdraft is reported.
    inserir(corromper, 1, 100001, "d")
    corromper.execute("update crebito.cliente set saldo = -100001 where id = 1")
    assert auditar(corromper) == {(1, "saldo -100001 abaixo de -limite 100000")}


def test_transacao_de_valor_nao_positivo(corromper):
    corromper.execute("alter table crebito.transacao drop constraint transacao_valor_check")
    t = inserir(corromper, 2, 0, "c")
    assert auditar(corromper) == {(2, f"transacao {t} malformada")}


def test_transacao_de_tipo_invalido(corromper):
    corromper.execute("alter table crebito.transacao drop constraint transacao_tipo_check")
    t = inserir(corromper, 2, 5, "x")
    # An unknown tipo counts as a debit in the sum, so the balance disagrees too.
    assert auditar(corromper) == {(2, f"transacao {t} malformada"), (2, "saldo 0 difere da soma do livro -5")}


@pytest.mark.parametrize("descricao", ["", "onze chars!"])
def test_transacao_de_descricao_invalida(corromper, descricao):
    corromper.execute("alter table crebito.transacao drop constraint transacao_descricao_check")
    t = inserir(corromper, 4, 5, "c", descricao)
    corromper.execute("update crebito.cliente set saldo = 5 where id = 4")
    assert auditar(corromper) == {(4, f"transacao {t} malformada")}


def test_transacao_no_futuro(corromper):
    t = inserir(corromper, 5, 5, "c", realizada_em="now() + interval '1 day'")
    corromper.execute("update crebito.cliente set saldo = 5 where id = 5")
    assert auditar(corromper) == {(5, f"transacao {t} malformada")}


def test_transacao_fora_de_ordem(corromper):
    inserir(corromper, 3, 10, "c", realizada_em="now() - interval '1 minute'")
    t = inserir(corromper, 3, 10, "d", realizada_em="now() - interval '2 minutes'")
    assert auditar(corromper) == {(3, f"transacao {t} fora de ordem no tempo")}


def guardar_chave(db, cliente, chave, status, lancamento):
    db.execute(
        "insert into crebito.idempotencia (cliente_id, chave, pedido, status, resposta, lancamento)"
        " values (%s, %s, '{}', %s, '{}', %s)",
        [cliente, chave, status, lancamento],
    )


def test_chave_apontando_para_transacao_inexistente(corromper):
    corromper.execute("alter table crebito.idempotencia drop constraint idempotencia_lancamento_fkey")
    guardar_chave(corromper, 1, "orfa", 200, 999999)
    assert auditar(corromper) == {(1, "chave orfa aponta para transacao inexistente")}


def test_chave_aceita_sem_transacao(corromper):
    guardar_chave(corromper, 2, "sem-id", 200, None)
    assert auditar(corromper) == {(2, "chave sem-id aponta para transacao inexistente")}


def test_chave_recusada_sem_transacao_e_normal(corromper):
    # A 422 (insufficient limit) is stored without a ledger row: that is sound.
    guardar_chave(corromper, 2, "recusada", 422, None)
    assert auditar(corromper) == set()


def test_chave_nao_alcanca_transacao_de_outro_cliente(corromper):
    # The key's reference holds its own client id: entry 1 of client 4 is not
    # entry 1 of client 1, so the key is refused, and reported once forced in.
    t = inserir(corromper, 4, 10, "c")
    corromper.execute("update crebito.cliente set saldo = 10 where id = 4")
    with pytest.raises(psycopg.errors.ForeignKeyViolation), corromper.transaction():
        guardar_chave(corromper, 1, "alheia", 200, t)
    corromper.execute("alter table crebito.idempotencia drop constraint idempotencia_lancamento_fkey")
    guardar_chave(corromper, 1, "alheia", 200, t)
    assert auditar(corromper) == {(1, "chave alheia aponta para transacao inexistente")}


def test_lancamento_pulado(corromper):
    inserir(corromper, 2, 10, "c")
    corromper.execute("update crebito.transacao set lancamento = 3 where cliente_id = 2")
    corromper.execute("update crebito.cliente set saldo = 10, ultimo_lancamento = 3 where id = 2")
    assert auditar(corromper) == {(2, "lancamentos 1 numerados ate 3, ultimo_lancamento 3")}


def test_ultimo_lancamento_atrasado(corromper):
    inserir(corromper, 3, 10, "c")
    inserir(corromper, 3, 5, "d")
    corromper.execute("update crebito.cliente set saldo = 5, ultimo_lancamento = 1 where id = 3")
    assert auditar(corromper) == {(3, "lancamentos 2 numerados ate 2, ultimo_lancamento 1")}


def test_chave_recusada_apontando_para_transacao(corromper):
    t = inserir(corromper, 2, 10, "c")
    corromper.execute("update crebito.cliente set saldo = 10 where id = 2")
    guardar_chave(corromper, 2, "k422", 422, t)
    assert auditar(corromper) == {(2, f"chave k422 recusada (422) aponta para transacao {t}")}


def test_transacao_aceita_por_duas_chaves(corromper):
    t = inserir(corromper, 5, 10, "c")
    corromper.execute("update crebito.cliente set saldo = 10 where id = 5")
    guardar_chave(corromper, 5, "primeira", 200, t)
    guardar_chave(corromper, 5, "segunda", 200, t)
    assert auditar(corromper) == {(5, f"transacao {t} aceita por 2 chaves")}


def test_varias_violacoes_de_uma_vez(corromper):
    corromper.execute("update crebito.cliente set saldo = 1 where id in (1, 2)")
    assert auditar(corromper) == {(1, "saldo 1 difere da soma do livro 0"), (2, "saldo 1 difere da soma do livro 0")}


def make_auditoria(stack):
    env = dict(os.environ, CREBITO_VAR=stack.var)
    return subprocess.run(
        [sys.executable, os.path.join(RAIZ, "stack", "launcher.py"), "--auditoria"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_comando_auditoria_sai_zero_com_livros_sao(stack, db):
    r = make_auditoria(stack)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == ""


def test_comando_auditoria_sai_nao_zero_com_violacao(stack, db):
    # The command runs in its own session, so the corruption must be committed;
    # the db fixture of the next test resets the data.
    db.execute("update crebito.cliente set saldo = 42 where id = 2")
    try:
        r = make_auditoria(stack)
    finally:
        db.execute("update crebito.cliente set saldo = 0 where id = 2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "saldo 42 difere da soma do livro 0" in r.stdout
    assert auditar(db) == set()
