"""The official load test of the contract (SPEC.md), replayed step by step.

Like the Gatling simulation "RinhaBackendCrebitosSimulation": the validation
phases with their checks, then the three open-model scenarios (debits,
credits, statements) ramping for `--rampa` seconds and holding for `--platô`
seconds. Every virtual user opens its own TCP connection; users arrive on
schedule whether or not earlier ones have finished. Ends with a table of
latency percentiles per group, the official score, a JSON file of all figures
and a self-contained HTML report.

    .venv/bin/python bench/carga.py --url http://127.0.0.1:9999 [--escala 1] [--rampa 120] [--platô 120]

Validation expects a database at its initial state (`make reset`): the first
phase checks that 25 debits of 1 leave client 1 at saldo -25.

Run alone (not by orcamento.py or perfil.py, which keep bench/registro.py's
record), it reads every second the stack's processes exporter
(stack/consumo.py, the `processos` endpoint of its metricas.json) and keeps
each component's CPU and memory in registro.json, the record's format, which
the report draws against compose.yml's limits. `--metricas` names the
exporter (host:port), or `nenhum`; by default (`auto`) it is the one of the
running stack (CREBITO_VAR's, else `make run`'s or `make docker`'s) whose
HAProxy counts a request sent to --url, so a stack other than the one under
load is never read.
"""

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import random
import re
import string
import sys
import threading
import time
import urllib.parse
import urllib.request

import pilha
import relatorio

sys.path.insert(0, os.path.join(pilha.RAIZ, "stack"))
import metricas  # noqa: E402

USER_AGENT = "Agente do Caos - 2024/Q1"
LIMITES = {1: 100000, 2: 80000, 3: 1000000, 4: 10000000, 5: 500000}
GRUPOS = ("debitos", "creditos", "extratos", "validacoes")
TIMEOUT_PEDIDO = 60  # Gatling's default request timeout
LIMIAR_MS = 250  # the official score counts answers under 250 ms
MULTA_INCONSISTENCIA = 803.01
ALFANUMERICOS = string.ascii_letters + string.digits


class Falha(Exception):
    """A failed check: the request counts as KO with this reason, a sentence
    that is the same for every request failing the same way (so they are
    counted together); `exemplo` keeps what this one request saw."""

    def __init__(self, motivo, exemplo=None):
        super().__init__(motivo)
        self.exemplo = exemplo


class Corrida(Falha):
    """A validation check that failed only because the load wrote to the same
    client between the validation's write and its read: what the validation
    wrote is all there, in order, with the load's entries above it (or, at the
    first read, the balance is exactly the sum of the load's entries).

    The simulation makes this race: its load's first debit and credit arrive
    at second 0.000 of the load, when every client's validation is between
    its first reads and writes, and which of two requests sent within a
    millisecond of each other lands first no API decides. Gatling counts
    such a check as a KO, and so does this tool; it names them apart so that
    a KO that is not the race stands out."""


class Resposta:
    __slots__ = ("status", "corpo")

    def __init__(self, status, corpo):
        self.status = status
        self.corpo = corpo

    def json(self):
        try:
            return json.loads(self.corpo)
        except ValueError as e:
            raise Falha("o corpo da resposta não é JSON", trecho(self.corpo)) from e


def trecho(corpo):
    """The start of a body, on one line, to show beside a KO reason."""
    return " ".join(corpo[:120].decode(errors="replace").split())[:80]


TAMANHO_DESCRICAO = 10  # the contract's maximum, which the load's descriptions use


def descricao_aleatoria():
    return "".join(random.choices(ALFANUMERICOS, k=TAMANHO_DESCRICAO))


# What the validations write themselves; every other description in a
# client's ledger is one of descricao_aleatoria's.
DESCRICOES_DA_VALIDACAO = ("validacao", "toma", "devolve", "danada")


def da_carga(item):
    return item["descricao"] not in DESCRICOES_DA_VALIDACAO and len(item["descricao"]) == TAMANHO_DESCRICAO


def trio(item):
    """An entry of ultimas_transacoes as (descricao, tipo, valor)."""
    return item["descricao"], item["tipo"], item["valor"]


def valor_com_sinal(item):
    return item["valor"] if item["tipo"] == "c" else -item["valor"]


class Registro:
    """Every request's outcome, kept in flat lists (about 61,500 of them)."""

    def __init__(self):
        self.inicio_ns = time.perf_counter_ns()
        # The same instant on the wall clock, to lay the series beside bench/registro.py's.
        self.inicio_epoch = time.time()
        self.inicio_fase3_s = None
        self.grupo = []
        self.t = []  # start, seconds since the test began
        self.lat_ns = []
        self.ms_inteiros = []  # Gatling's figure: difference of whole-millisecond timestamps
        self.ok = []
        self.status = []
        self.motivos = {}  # KO reason -> count
        self.motivos_por_grupo = {}  # (group, KO reason) -> [count, the first request's detail]
        self.inconsistencias = 0
        self.kos_da_corrida = 0  # KOs that are the simulation's race (Corrida)
        self.status_ok_rapidos = 0  # expected status in under 250 ms
        self.em_voo = 0

    def anotar(self, grupo, inicio_ns, fim_ns, status, motivo, status_esperado, exemplo=None):
        self.grupo.append(grupo)
        self.t.append((inicio_ns - self.inicio_ns) / 1e9)
        self.lat_ns.append(fim_ns - inicio_ns)
        self.ms_inteiros.append(fim_ns // 1_000_000 - inicio_ns // 1_000_000)
        self.ok.append(motivo is None)
        self.status.append(status)
        if motivo is not None:
            self.motivos[motivo] = self.motivos.get(motivo, 0) + 1
            contagem = self.motivos_por_grupo.setdefault((grupo, motivo), [0, exemplo])
            contagem[0] += 1
        if status_esperado and fim_ns - inicio_ns < LIMIAR_MS * 1_000_000:
            self.status_ok_rapidos += 1

    def __len__(self):
        return len(self.ok)

    def kos(self):
        return len(self.ok) - sum(self.ok)


class Usuario:
    """A virtual user: its own connection, kept alive between its requests
    and closed when it finishes, as Gatling does."""

    def __init__(self, carga):
        self.carga = carga
        self.leitor = None
        self.escritor = None

    async def _trocar(self, metodo, caminho, corpo):
        if self.escritor is None:
            self.leitor, self.escritor = await asyncio.open_connection(self.carga.host, self.carga.porta)
        cabecalhos = self.carga.cabecalhos
        if corpo is None:
            pedido = f"{metodo} {caminho} HTTP/1.1\r\n{cabecalhos}\r\n".encode()
        else:
            pedido = (
                f"{metodo} {caminho} HTTP/1.1\r\n{cabecalhos}content-type: application/json\r\n"
                f"content-length: {len(corpo)}\r\n\r\n"
            ).encode() + corpo
        self.escritor.write(pedido)
        cabeca = await self.leitor.readuntil(b"\r\n\r\n")
        status = int(cabeca[9:12])
        linhas = cabeca.lower()
        tamanho = None
        i = linhas.find(b"\r\ncontent-length:")
        if i >= 0:
            tamanho = int(linhas[i + 17 : linhas.index(b"\r\n", i + 2)])
        if tamanho is None:
            corpo_resposta = await self.leitor.read()
            self.fechar()
        else:
            corpo_resposta = await self.leitor.readexactly(tamanho)
            if b"\r\nconnection: close" in linhas:
                self.fechar()
        return Resposta(status, corpo_resposta)

    async def pedir(self, grupo, metodo, caminho, corpo, esperados, verificar=None):
        """One request: checks its status (in `esperados`) and then runs
        `verificar(resposta)`, which raises Falha; returns the response or
        None when the request failed."""
        registro = self.carga.registro
        registro.em_voo += 1
        inicio = time.perf_counter_ns()
        status = 0
        resposta = None
        motivo = exemplo = None
        try:
            async with asyncio.timeout(TIMEOUT_PEDIDO):
                resposta = await self._trocar(metodo, caminho, corpo)
            status = resposta.status
            if status not in esperados:
                motivo = f"status {status}, esperado {' ou '.join(map(str, esperados))}"
                exemplo = f"{metodo} {caminho}: {trecho(resposta.corpo)}"
        except TimeoutError:
            motivo = f"sem resposta em {TIMEOUT_PEDIDO} s (o tempo limite do Gatling)"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            motivo = motivo_de_conexao(e)
            exemplo = f"{metodo} {caminho}: {type(e).__name__}: {e}"
        fim = time.perf_counter_ns()
        registro.em_voo -= 1
        if motivo is not None:
            self.fechar()
        elif verificar is not None:
            try:
                verificar(resposta)
            except Falha as e:
                motivo, exemplo = str(e), e.exemplo
                registro.kos_da_corrida += isinstance(e, Corrida)
            except (KeyError, TypeError, IndexError, AttributeError) as e:
                motivo = "falta um campo no corpo da resposta, ou tem outro tipo"
                exemplo = f"{metodo} {caminho}: {type(e).__name__} {e}: {trecho(resposta.corpo)}"
        registro.anotar(grupo, inicio, fim, status, motivo, status in esperados, exemplo)
        return resposta if motivo is None else None

    def fechar(self):
        if self.escritor is not None:
            self.escritor.close()
            self.escritor = None
            self.leitor = None


# Why a connection failed, in words; every sentence starts with "conexão".
CONEXAO = {
    ConnectionRefusedError: "conexão recusada",
    ConnectionResetError: "conexão derrubada pelo servidor",
    BrokenPipeError: "conexão fechada pelo servidor durante o envio",
    asyncio.IncompleteReadError: "conexão fechada antes do fim da resposta",
    asyncio.LimitOverrunError: "conexão com um cabeçalho de resposta longo demais",
    ValueError: "conexão com uma resposta HTTP ilegível",
}


def motivo_de_conexao(e):
    for tipo, frase in CONEXAO.items():
        if isinstance(e, tipo):
            return frase
    return f"conexão falhou: {getattr(e, 'strerror', None) or type(e).__name__}"


def checar_saldo(registro, saldo, limite):
    """The official "balance check": a balance below minus the limit is an
    inconsistency, fined on its own."""
    if not isinstance(saldo, int) or not isinstance(limite, int):
        raise Falha("saldo ou limite não é um número inteiro", f"saldo {saldo!r}, limite {limite!r}")
    if saldo < -limite:
        registro.inconsistencias += 1
        raise Falha("saldo abaixo de menos o limite (inconsistência)", f"saldo {saldo}, limite {limite}")


def checar_inicial(cliente, limite, extrato):
    """A validation's first read: balance 0 and the client's limit."""
    saldo, lista = extrato["saldo"], extrato["ultimas_transacoes"]
    if saldo["limite"] != limite or saldo["total"] != 0:
        motivo = f"extrato inicial do cliente {cliente} não tem saldo 0 e limite {limite}"
        exemplo = f"saldo {saldo['total']}, limite {saldo['limite']}"
        # The load's entries above the rest, whole when fewer than ten are shown.
        topo = list(itertools.takewhile(da_carga, lista))
        if saldo["limite"] == limite and 0 < len(topo) < 10 and saldo["total"] == sum(map(valor_com_sinal, topo)):
            raise Corrida(f"{motivo}: a carga escreveu nele antes (a corrida da simulação)", exemplo)
        raise Falha(motivo, exemplo)


def checar_itens(cliente, lista, esperados):
    """The newest entries of ultimas_transacoes are `esperados`, the
    validation's last writes as (descricao, tipo, valor), newest first."""
    for i, (descricao, tipo, valor) in enumerate(esperados):
        item = lista[i]
        visto = trio(item)
        if visto != (descricao, tipo, valor):
            motivo = f"a transação nº {i + 1} de ultimas_transacoes não é «{descricao}» ({tipo}, {valor})"
            exemplo = f"cliente {cliente}: «{visto[0]}» ({visto[1]}, {visto[2]})"
            # The validation's own entries, without those the load wrote above them.
            proprias = [trio(x) for x in lista if not da_carga(x)]
            if da_carga(item) and proprias[: len(esperados)] == list(esperados):
                raise Corrida(
                    f"{motivo}: a carga escreveu no cliente entre a escrita da validação e esta leitura"
                    " (a corrida da simulação)",
                    exemplo,
                )
            raise Falha(motivo, exemplo)


def corpo_transacao(valor, tipo, descricao):
    return json.dumps({"valor": valor, "tipo": tipo, "descricao": descricao}).encode()


class Carga:
    def __init__(self, args):
        url = urllib.parse.urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.porta = url.port or 80
        self.cabecalhos = f"Host: {url.netloc}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
        self.args = args
        self.registro = Registro()
        self.tarefas = set()
        self.validacao_ok = True

    # -- the validation phases -----------------------------------------------

    async def um_pedido(self, grupo, metodo, caminho, corpo, esperados, verificar=None):
        usuario = Usuario(self)
        try:
            return await usuario.pedir(grupo, metodo, caminho, corpo, esperados, verificar)
        finally:
            usuario.fechar()

    def verificador_total(self, esperado):
        def verificar(r):
            total = r.json()["saldo"]["total"]
            if total != esperado:
                raise Falha(f"saldo.total do extrato depois da rajada não é {esperado}", f"saldo.total {total}")

        return verificar

    def verificador_transacao(self):
        def verificar(r):
            dados = r.json()
            checar_saldo(self.registro, dados["saldo"], dados["limite"])

        return verificar

    def verificador_extrato(self):
        def verificar(r):
            saldo = r.json()["saldo"]
            checar_saldo(self.registro, saldo["total"], saldo["limite"])

        return verificar

    async def validar_concorrencia(self, tipo, total_esperado):
        corpo = corpo_transacao(1, tipo, "validacao")
        await asyncio.gather(
            *(self.um_pedido("validacoes", "POST", "/clientes/1/transacoes", corpo, (200,)) for _ in range(25))
        )
        await self.um_pedido(
            "validacoes", "GET", "/clientes/1/extrato", None, (200,), self.verificador_total(total_esperado)
        )

    async def validar_cliente(self, cliente):
        """The per-client checks of the third phase, on one user's connection."""
        u = Usuario(self)
        limite = LIMITES[cliente]
        extrato = f"/clientes/{cliente}/extrato"
        transacoes = f"/clientes/{cliente}/transacoes"

        def inicial(r):
            checar_inicial(cliente, limite, r.json())

        def itens(esperados):
            def verificar(r):
                checar_itens(cliente, r.json()["ultimas_transacoes"], esperados)

            return verificar

        try:
            await u.pedir("validacoes", "GET", extrato, None, (200,), inicial)
            corpo = corpo_transacao(1, "c", "toma")
            await u.pedir("validacoes", "POST", transacoes, corpo, (200,), self.verificador_transacao())
            corpo = corpo_transacao(1, "d", "devolve")
            await u.pedir("validacoes", "POST", transacoes, corpo, (200,), self.verificador_transacao())
            await u.pedir("validacoes", "GET", extrato, None, (200,), itens([("devolve", "d", 1), ("toma", "c", 1)]))
            corpo = corpo_transacao(1, "c", "danada")
            danada = await u.pedir("validacoes", "POST", transacoes, corpo, (200,), self.verificador_transacao())
            lembrado = danada.json() if danada is not None else {"saldo": None, "limite": None}

            def consistente(r):
                itens([("danada", "c", 1)])(r)
                saldo = r.json()["saldo"]
                if saldo["limite"] != lembrado["limite"] or saldo["total"] != lembrado["saldo"]:
                    raise Falha(
                        "o saldo do extrato difere do que a última transação respondeu",
                        f"cliente {cliente}: extrato saldo {saldo['total']} limite {saldo['limite']},"
                        f" transação saldo {lembrado['saldo']} limite {lembrado['limite']}",
                    )

            # Four statements at once, each on its own connection (Gatling's resources).
            await asyncio.gather(
                u.pedir("validacoes", "GET", extrato, None, (200,), consistente),
                *(self.um_pedido("validacoes", "GET", extrato, None, (200,), consistente) for _ in range(3)),
            )
            invalidos = (
                b'{"valor": 1.2, "tipo": "d", "descricao": "devolve"}',
                b'{"valor": 1, "tipo": "x", "descricao": "devolve"}',
                b'{"valor": 1, "tipo": "c", "descricao": "123456789 e mais um pouco"}',
                b'{"valor": 1, "tipo": "c", "descricao": ""}',
                b'{"valor": 1, "tipo": "c", "descricao": null}',
            )
            for corpo in invalidos:
                await u.pedir("validacoes", "POST", transacoes, corpo, (422, 400))
        finally:
            u.fechar()

    # -- the open-model scenarios ------------------------------------------------

    async def debito(self):
        cliente = random.randint(1, 5)
        corpo = corpo_transacao(random.randint(1, 10000), "d", descricao_aleatoria())
        verificar = self.verificador_transacao()
        await self.um_pedido(
            "debitos",
            "POST",
            f"/clientes/{cliente}/transacoes",
            corpo,
            (200, 422),
            lambda r: r.status != 200 or verificar(r),
        )

    async def credito(self):
        cliente = random.randint(1, 5)
        corpo = corpo_transacao(random.randint(1, 10000), "c", descricao_aleatoria())
        await self.um_pedido(
            "creditos", "POST", f"/clientes/{cliente}/transacoes", corpo, (200,), self.verificador_transacao()
        )

    async def extrato(self):
        cliente = random.randint(1, 5)
        await self.um_pedido(
            "extratos", "GET", f"/clientes/{cliente}/extrato", None, (200,), self.verificador_extrato()
        )

    def chegadas(self):
        """Arrival times of every user of the three scenarios, merged in order."""
        a = self.args
        todas = []
        for cenario, pico in ((self.debito, 220), (self.credito, 110), (self.extrato, 10)):
            for t in tempos_de_chegada(a.escala, pico * a.escala, a.rampa, a.plato):
                todas.append((t, cenario))
        todas.sort(key=lambda par: par[0])
        return todas

    def lancar(self, coro):
        tarefa = asyncio.get_running_loop().create_task(coro)
        self.tarefas.add(tarefa)
        tarefa.add_done_callback(self.tarefas.discard)

    async def cenarios(self):
        chegadas = self.chegadas()
        loop = asyncio.get_running_loop()
        inicio = loop.time()
        for t, cenario in chegadas:
            atraso = inicio + t - loop.time()
            if atraso > 0:
                await asyncio.sleep(atraso)
            self.lancar(cenario())
        while self.tarefas:
            await asyncio.wait(list(self.tarefas))

    async def progresso(self, intervalo):
        r = self.registro
        anterior, t_anterior = 0, time.monotonic()
        while True:
            await asyncio.sleep(intervalo)
            agora = time.monotonic()
            n = len(r)
            print(
                f"  {(time.perf_counter_ns() - r.inicio_ns) / 1e9:6.0f}s"
                f"  {(n - anterior) / (agora - t_anterior):6.1f} req/s"
                f"  em voo {r.em_voo:4d}  total {n:6d}  KO {r.kos()}",
                flush=True,
            )
            anterior, t_anterior = n, agora

    async def rodar(self):
        progresso = asyncio.get_running_loop().create_task(self.progresso(self.args.intervalo))
        try:
            print("fase 1: 25 débitos concorrentes", flush=True)
            await self.validar_concorrencia("d", -25)
            print("fase 2: 25 créditos concorrentes", flush=True)
            await self.validar_concorrencia("c", 0)
            # Seconds before this belong to the two bursts of 25 concurrent requests.
            self.registro.inicio_fase3_s = (time.perf_counter_ns() - self.registro.inicio_ns) / 1e9
            print(
                f"fase 3: validações por cliente e carga (rampa {self.args.rampa}s, platô {self.args.plato}s,"
                f" escala {self.args.escala})",
                flush=True,
            )

            async def cliente_6_e_carga():
                await self.um_pedido("validacoes", "GET", "/clientes/6/extrato", None, (404,))
                await asyncio.sleep(self.args.atraso_da_carga / 1000)
                await self.cenarios()

            await asyncio.gather(*(self.validar_cliente(c) for c in LIMITES), cliente_6_e_carga())
        finally:
            progresso.cancel()


def tempos_de_chegada(inicial, final, rampa, plato):
    """Gatling's rampUsersPerSec(inicial).to(final).during(rampa) followed by
    constantUsersPerSec(final).during(plato): the k-th user arrives when the
    integral of the rate reaches k, at regular (not randomised) instants."""
    tempos = []
    if rampa > 0:
        a = (final - inicial) / rampa
        n = int((inicial + final) / 2 * rampa)
        for k in range(n):
            tempos.append(k / inicial if a == 0 else (-inicial + math.sqrt(inicial * inicial + 2 * a * k)) / a)
    n = int(final * plato)
    tempos.extend(rampa + k / final for k in range(n))
    return tempos


# -- the stack's processes, from its exporter ----------------------------------------


ROTULO = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _series(endereco):
    """[(name, {label: value}, value)] of the Prometheus text exposition at
    endereco, asked once."""
    with urllib.request.urlopen(f"http://{endereco}/metrics", timeout=2) as r:
        texto = r.read().decode()
    resultado = []
    for linha in texto.splitlines():
        if linha and not linha.startswith("#"):
            serie, valor = linha.rsplit(" ", 1)
            nome, _, rotulos = serie.partition("{")
            resultado.append((nome, dict(ROTULO.findall(rotulos)), float(valor)))
    return resultado


def _serve(alvos, url):
    """Whether the HAProxy of alvos is the one answering url: its request
    counter moves with one GET sent there."""
    haproxy = metricas.endereco(alvos, "haproxy")

    def contador():
        return sum(
            v
            for n, r, v in _series(haproxy)
            if n == "haproxy_frontend_http_requests_total" and r.get("proxy") == "crebito"
        )

    try:
        antes = contador()
        urllib.request.urlopen(f"{url.rstrip('/')}/clientes/1/extrato", timeout=2).close()
        return contador() > antes
    except (OSError, ValueError):
        return False


def exportador_de_processos(opcao, url):
    """The processes exporter's host:port to read during the run, or None."""
    if opcao != "auto":
        return None if opcao == "nenhum" else opcao
    for pasta in metricas.pastas():
        try:
            alvos = metricas.ler(pasta)
        except (OSError, ValueError):
            continue
        if metricas.rodando(pasta) and any(a.job == "processos" for a in alvos) and _serve(alvos, url):
            return metricas.endereco(alvos, "processos")
    return None


class Consumo:
    """Each second, from the processes exporter, each component's CPU and
    memory, as bench/registro.py records them (`segundos[].cgrupo`, `limites`)
    so the report draws them as it draws that record: CPU as a share of the
    component's quota, memory (the processes' private resident memory: their
    own pages, each counted once) against its limit."""

    CPU = "process_cpu_seconds_total"
    MEMORIA = "process_resident_private_memory_bytes"

    def __init__(self, endereco):
        self.endereco = endereco
        self.limites = pilha.orcamento()[0]
        self.segundos = []
        self.erros = []
        self._parar = threading.Event()
        self._thread = None

    def _ler(self):
        """{component: (CPU s, memory MB)}: a compose service's name (db) as
        the component it is (postgres); processes outside the budget left out."""
        series = _series(self.endereco)
        cpu, memoria = (
            {r["processo"]: v for n, r, v in series if n == nome and "processo" in r}
            for nome in (self.CPU, self.MEMORIA)
        )
        return {
            pilha.SERVICO_COMPOSE[nome]: (segundos, memoria.get(nome, 0) / 2**20)
            for nome, segundos in cpu.items()
            if nome in pilha.SERVICO_COMPOSE
        }

    def _amostrar(self):
        anterior = None
        while True:
            try:
                atual = self._ler()
            except (OSError, ValueError) as e:
                self.erros.append(repr(e))
                atual = None
            if atual is not None and anterior is not None:
                s = int(time.monotonic() - 0.5 - self.t0)
                self.segundos.append(
                    {
                        "s": s,
                        "cgrupo": {
                            # A counter that went back is a restarted process, not CPU.
                            nome: {
                                "cpu_ms": round(1000 * (cpu - anterior[nome][0]), 1)
                                if nome in anterior and cpu >= anterior[nome][0]
                                else None,
                                "mem_mb": round(mb, 1),
                            }
                            for nome, (cpu, mb) in atual.items()
                        },
                    }
                )
            anterior = atual if atual is not None else anterior
            if self._parar.wait(1.0 - (time.monotonic() - self.t0) % 1.0):
                break

    def iniciar(self):
        self.t0 = time.monotonic()
        self.inicio_epoch = time.time()
        self._thread = threading.Thread(target=self._amostrar, daemon=True)
        self._thread.start()

    def parar(self):
        self._parar.set()
        self._thread.join(timeout=5)
        return {
            "inicio_epoch": self.inicio_epoch,
            "fonte": f"http://{self.endereco}/metrics (stack/consumo.py)",
            "memoria": "memória residente privada dos processos",
            "erros": self.erros[:20],
            "limites": {n: list(v) for n, v in self.limites.items()},
            "segundos": self.segundos,
        }


# -- figures ----------------------------------------------------------------------


def percentil(ordenados, p):
    """Nearest rank, as Gatling reports it."""
    if not ordenados:
        return 0
    return ordenados[max(0, math.ceil(p / 100 * len(ordenados)) - 1)]


PERCENTIS = (50, 75, 95, 99)


def estatisticas(lat_ns, ms_inteiros):
    if not lat_ns:
        return None
    inteiros = sorted(ms_inteiros)
    finos = sorted(lat_ns)
    return {
        "n": len(lat_ns),
        "ms": {
            **{f"p{p}": percentil(inteiros, p) for p in PERCENTIS},
            "max": inteiros[-1],
            "min": inteiros[0],
            "media": round(sum(inteiros) / len(inteiros), 2),
        },
        "ms_0_1": {
            **{f"p{p}": round(percentil(finos, p) / 1e6, 1) for p in PERCENTIS},
            "max": round(finos[-1] / 1e6, 1),
            "min": round(finos[0] / 1e6, 1),
            "media": round(sum(finos) / len(finos) / 1e6, 2),
        },
    }


SLOTS = 100  # Gatling's response time distribution: 100 slots from min to max


def distribuicao(ms_inteiros, ok):
    """Gatling's distribution of one group: equal slots of whole milliseconds
    from its min to its max, counting OK and KO requests apart."""
    de, ate = min(ms_inteiros), max(ms_inteiros)
    largura = max(1, math.ceil((ate - de + 1) / SLOTS))
    n = (ate - de) // largura + 1
    contagem = {True: [0] * n, False: [0] * n}
    for ms, bom in zip(ms_inteiros, ok, strict=True):
        contagem[bom][(ms - de) // largura] += 1
    return {"de_ms": de, "largura_ms": largura, "ok": contagem[True], "ko": contagem[False]}


NOMES_GRUPOS = {"debitos": "débito", "creditos": "crédito", "extratos": "extrato", "validacoes": "validação"}


def frases_de_ko(registro):
    """The KO reasons as sentences, most frequent first: how many requests of
    which group failed why, with what the first of them saw."""
    r = []
    for (grupo, motivo), (n, exemplo) in sorted(registro.motivos_por_grupo.items(), key=lambda x: -x[1][0]):
        frase = f"{n} {'requisição' if n == 1 else 'requisições'} de {NOMES_GRUPOS.get(grupo, grupo)}: {motivo}"
        if exemplo:
            frase += f" (a primeira: {exemplo})"
        r.append({"grupo": grupo, "motivo": motivo, "n": n, "exemplo": exemplo, "frase": frase})
    return r


def resumir(registro, duracao, cpu_carga):
    r = registro
    grupos = {}
    distribuicoes = {}
    for g in (*GRUPOS, "all"):
        idx = [i for i, x in enumerate(r.grupo) if g == "all" or x == g]
        est = estatisticas([r.lat_ns[i] for i in idx], [r.ms_inteiros[i] for i in idx])
        if est is not None:
            est["ko"] = sum(1 for i in idx if not r.ok[i])
            grupos[g] = est
            if g != "all":
                distribuicoes[g] = distribuicao([r.ms_inteiros[i] for i in idx], [r.ok[i] for i in idx])
    total = len(r)
    pct = 100.0 * r.status_ok_rapidos / total if total else 0.0
    multa_lentidao = round((98 - pct) * 1000, 2) if pct < 98 else 0.0
    multa_inconsistencia = round(r.inconsistencias * MULTA_INCONSISTENCIA, 2)
    return {
        "total": total,
        "ko": r.kos(),
        "ko_da_corrida": r.kos_da_corrida,
        "motivos_ko": r.motivos,
        "ko_em_frases": frases_de_ko(r),
        "duracao_s": round(duracao, 2),
        "grupos": grupos,
        "pontuacao": {
            "pct_ok_abaixo_250ms": round(pct, 4),
            "multa_lentidao": multa_lentidao,
            "inconsistencias": r.inconsistencias,
            "multa_inconsistencias": multa_inconsistencia,
            "usd": round(100000 - multa_lentidao - multa_inconsistencia, 2),
        },
        "cpu_da_carga": cpu_carga,
        "distribuicao": distribuicoes,
    }


def serie_temporal(registro):
    """Per second of test time: requests started, KOs and latency percentiles (ms)."""
    por_segundo = {}
    for t, lat, ok in zip(registro.t, registro.lat_ns, registro.ok, strict=True):
        por_segundo.setdefault(int(t), []).append((lat, ok))
    serie = []
    for s in range(max(por_segundo, default=-1) + 1):
        amostras = por_segundo.get(s, [])
        lat = sorted(x[0] for x in amostras)
        serie.append(
            {
                "s": s,
                "req": len(amostras),
                "ko": sum(1 for x in amostras if not x[1]),
                **{f"p{p}": round(percentil(lat, p) / 1e6, 2) for p in PERCENTIS},
                "max": round(lat[-1] / 1e6, 2) if lat else 0,
            }
        )
    return serie


def tabela(resumo):
    linhas = []
    cab = f"{'grupo':<11}{'n':>7}{'KO':>6} |"
    cab += "".join(f"{k:>6}" for k in ("p50", "p75", "p95", "p99", "max", "média")) + " | em 0,1 ms:"
    cab += "".join(f"{k:>8}" for k in ("p50", "p75", "p95", "p99", "max", "média"))
    linhas.append(cab)
    for g, e in resumo["grupos"].items():
        ms, fino = e["ms"], e["ms_0_1"]
        linha = f"{g:<11}{e['n']:>7}{e['ko']:>6} |"
        linha += "".join(f"{ms[k]:>6}" for k in ("p50", "p75", "p95", "p99", "max")) + f"{ms['media']:>6.1f}"
        linha += " |           " + "".join(f"{fino[k]:>8.1f}" for k in ("p50", "p75", "p95", "p99", "max"))
        linha += f"{fino['media']:>8.2f}"
        linhas.append(linha)
    p = resumo["pontuacao"]
    linhas.append(
        f"pontuação: {p['pct_ok_abaixo_250ms']:.3f}% OK em < 250 ms, multa lentidão USD {p['multa_lentidao']:.2f},"
        f" {p['inconsistencias']} inconsistências (USD {p['multa_inconsistencias']:.2f}) => USD {p['usd']:.2f}"
    )
    if resumo["ko"]:
        linhas.append(f"KO: {resumo['ko']}, dos quais {resumo['ko_da_corrida']} da corrida da simulação (Corrida)")
    return "\n".join(linhas)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:9999")
    ap.add_argument("--escala", type=float, default=1.0, help="multiplies every arrival rate")
    ap.add_argument("--rampa", type=float, default=120, help="ramp duration, seconds")
    ap.add_argument("--platô", "--plato", dest="plato", type=float, default=120, help="plateau duration, seconds")
    ap.add_argument("--saida", default=None, help="directory for carga.json and relatorio.html")
    ap.add_argument("--intervalo", type=float, default=5, help="seconds between progress lines")
    ap.add_argument("--semente", type=int, default=None, help="random seed, for a repeatable mix")
    ap.add_argument(
        "--atraso-da-carga",
        type=float,
        default=0,
        help="ms the load waits after client 6's 404 (the simulation: 0; see Corrida)",
    )
    ap.add_argument(
        "--metricas",
        default="auto",
        help="the stack's processes exporter (host:port) read every second, `nenhum`, or `auto` (see above)",
    )
    args = ap.parse_args(argv)
    if args.semente is not None:
        random.seed(args.semente)
    saida = args.saida or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", time.strftime("%Y%m%d-%H%M%S")
    )
    os.makedirs(saida, exist_ok=True)

    carga = Carga(args)
    endereco = exportador_de_processos(args.metricas, args.url)
    consumo = Consumo(endereco) if endereco else None
    if consumo is not None:
        print(f"CPU e memória de cada componente: http://{endereco}/metrics a cada segundo", flush=True)
        consumo.iniciar()
    cpu0, t0 = os.times(), time.monotonic()
    # The cyclic collector stays off while requests are timed: its full passes
    # over tens of thousands of records paused this process for up to ~10 ms
    # and showed up as the stack's max latency. Memory stays bounded by the run.
    gc.disable()
    try:
        asyncio.run(carga.rodar())
    finally:
        gc.enable()
    cpu1, duracao = os.times(), time.monotonic() - t0
    gravado = consumo.parar() if consumo is not None else None
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_carga = {"cpu_s": round(cpu_s, 2), "pct_de_um_nucleo": round(100 * cpu_s / duracao, 1)}

    resumo = resumir(carga.registro, duracao, cpu_carga)
    resumo["parametros"] = {
        "url": args.url,
        "escala": args.escala,
        "rampa": args.rampa,
        "plato": args.plato,
        "atraso_da_carga_ms": args.atraso_da_carga,
    }
    resumo["serie"] = serie_temporal(carga.registro)
    resumo["inicio_epoch"] = carga.registro.inicio_epoch
    resumo["inicio_fase3_s"] = carga.registro.inicio_fase3_s
    print(tabela(resumo))
    if resumo["ko_em_frases"]:
        print("motivos de KO:")
        for item in resumo["ko_em_frases"]:
            print(f"  {item['frase']}")
    print(f"CPU da própria carga: {cpu_s:.1f} s em {duracao:.0f} s ({cpu_carga['pct_de_um_nucleo']}% de um núcleo)")
    with open(os.path.join(saida, "carga.json"), "w") as f:
        json.dump(resumo, f, indent=1, ensure_ascii=False)
    if gravado is not None:
        # Where relatorio.py looks for the record when it draws this folder again.
        with open(os.path.join(saida, "registro.json"), "w") as f:
            json.dump(gravado, f, indent=1, ensure_ascii=False)
    relatorio.escrever(saida, resumo, gravado)
    print(f"figuras em {saida}/carga.json, relatório em {saida}/relatorio.html, tabela em resumo.json e resumo.md")
    return resumo


if __name__ == "__main__":
    main()
