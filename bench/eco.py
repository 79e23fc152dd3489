"""server.py with no database: every call the API would send to PostgreSQL is
answered at once with a fixed, well-formed answer. bench/pisos.py runs it
behind HAProxy to measure what HAProxy and the API workers cost per request
when the database costs nothing. Same environment as server.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import server  # noqa: E402

RESPOSTAS = {
    b"transacao": b'{"limite":100000,"saldo":0}',
    b"extrato": b'{"saldo":{"total":0,"data_extrato":"2024-01-17T02:34:41.217753Z","limite":100000},'
    b'"ultimas_transacoes":[]}',
}


class SemBanco:
    def conectar(self):
        pass

    def chamar(self, nome, params, repetivel):
        corpo = RESPOSTAS[nome]
        return "200 OK", [server.JSON, ("Content-Length", str(len(corpo)))], corpo


server.destinos = server.Unico(SemBanco())

if __name__ == "__main__":
    server.main()
