"""Slow and silent clients (slowloris) must not take the single-threaded
workers away from everyone else: HAProxy buffers a request whole before it
picks a worker (option http-buffer-request) and cuts a connection that has not
delivered its request within `timeout http-request` (3s)."""

import select
import socket
import threading
import time

# Bounds, not speed targets: the cut is due at 3s; anything under this passes.
CORTE_ATE = 10
# More trickling connections than the session stack has workers in all (2 x 2).
LENTOS = 6


class Conexao(threading.Thread):
    """One misbehaving client: sends `cabeca` at once, then `gotejar` one byte
    every `intervalo` seconds, and notes when (and how) the server ends it."""

    def __init__(self, porta, cabeca=b"", gotejar=b"", intervalo=0.1):
        super().__init__(daemon=True)
        self.porta = porta
        self.cabeca = cabeca
        self.gotejar = gotejar
        self.intervalo = intervalo
        self.aberta = threading.Event()
        self.fechada_em = None  # seconds from connect to the server's close
        self.recebido = b""

    def run(self):
        with socket.create_connection(("127.0.0.1", self.porta), timeout=CORTE_ATE) as s:
            inicio = time.monotonic()
            self.aberta.set()
            try:
                if self.cabeca:
                    s.sendall(self.cabeca)
                restante = self.gotejar
                while time.monotonic() - inicio < CORTE_ATE:
                    if restante:
                        s.send(restante[:1])
                        restante = restante[1:]
                    pronto, _, _ = select.select([s], [], [], self.intervalo)
                    if pronto:
                        parte = s.recv(65536)
                        self.recebido += parte
                        if not parte:
                            break
            except (BrokenPipeError, ConnectionResetError):
                pass
            else:
                if time.monotonic() - inicio >= CORTE_ATE:
                    return
            self.fechada_em = time.monotonic() - inicio


def post(descricao, tamanho=None):
    corpo = b'{"valor": 1, "tipo": "c", "descricao": "' + descricao + b'"}'
    cabeca = (
        b"POST /clientes/1/transacoes HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(tamanho or len(corpo)).encode() + b"\r\n\r\n"
    )
    return cabeca, corpo


def test_lentos_e_calados_nao_atrasam_os_outros(http, db):
    cabeca, corpo = post(b"lento")
    conexoes = (
        # Opens and says nothing.
        [Conexao(http.porta) for _ in range(2)]
        # Trickles the request line and headers, far slower than 3s allows.
        + [Conexao(http.porta, gotejar=cabeca + corpo) for _ in range(LENTOS)]
        # Sends whole headers, then trickles the body.
        + [Conexao(http.porta, cabeca=cabeca, gotejar=corpo) for _ in range(LENTOS)]
    )
    for c in conexoes:
        c.start()
    for c in conexoes:
        assert c.aberta.wait(5)

    # While all of them hang, normal clients are served. The timeout is a
    # generous bound for a request that would otherwise wait behind them.
    atendidos = 0
    for i in range(2 * http.workers * 2 + 2):
        r = http.pedir(
            "POST",
            f"/clientes/{1 + i % 5}/transacoes",
            {"valor": 10, "tipo": "c", "descricao": "normal"},
            headers={"Idempotency-Key": f"normal-{i}"},
            timeout=2,
        )
        assert r.status == 200, r.corpo
        assert http.pedir("GET", f"/clientes/{1 + i % 5}/extrato", timeout=2).status == 200
        atendidos += 1
        time.sleep(0.1)
    assert atendidos == 2 * http.workers * 2 + 2
    assert all(c.is_alive() for c in conexoes[2:]), "the trickling clients should still be hanging"

    for c in conexoes:
        c.join(timeout=CORTE_ATE + 5)
    # HAProxy cut every one of them, within the bound.
    for c in conexoes:
        assert c.fechada_em is not None, c.recebido
        assert c.fechada_em < CORTE_ATE
        # Anything said before the cut is a 408.
        assert c.recebido == b"" or c.recebido.startswith(b"HTTP/1.1 408"), c.recebido
    # Once the headers are in, the 408 is the JSON one of haproxy.cfg. (While
    # still reading headers, HAProxy 2.6 answers with its built-in HTML page.)
    for c in conexoes[2 + LENTOS :]:
        assert c.recebido.startswith(b"HTTP/1.1 408"), c.recebido
        assert c.recebido.partition(b"\r\n\r\n")[2].startswith(b'{"erro":'), c.recebido
    # Trickled requests never reached a worker, so nothing of theirs was applied.
    assert db.execute("select count(*) from crebito.transacao where descricao = 'lento'").fetchone() == (0,)
    assert db.execute("select count(*) from crebito.transacao where descricao = 'normal'").fetchone() == (
        2 * http.workers * 2 + 2,
    )


def test_corpo_menor_que_o_anunciado_e_cortado(http, db):
    # Content-Length promises more than ever arrives: the worker must never be
    # handed this request and left waiting for the rest.
    cabeca, corpo = post(b"curto", tamanho=200)
    c = Conexao(http.porta, cabeca=cabeca + corpo)
    c.start()
    r = http.pedir("GET", "/clientes/1/extrato", timeout=2)
    assert r.status == 200
    c.join(timeout=CORTE_ATE + 5)
    assert c.fechada_em is not None and c.fechada_em < CORTE_ATE
    assert c.recebido == b"" or c.recebido.startswith(b"HTTP/1.1 408"), c.recebido
    assert db.execute("select count(*) from crebito.transacao").fetchone() == (0,)
