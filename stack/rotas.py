"""Citus: HAProxy's backend per worker node (roteamento.lua picks one by the
request's client).

Each API worker gets a home node: in its node's backend it is an active
server, in every other node's a backup, used only when that node's own are
all down (an instance restarting). Homes alternate within an instance and
between the two, so each node has workers of both instances and a node never
depends on one instance alone while there are workers enough. Each server
tracks its twin in the `api` backend of haproxy.cfg, so the health checks are
not doubled."""


def casas(servidores, portas):
    """{port: [server names]} of each node, from the API workers' names
    (api01_1, ...) in haproxy.cfg's order: worker k of instance j goes to node
    (k + j) mod N."""
    casa = {p: [] for p in portas}
    for nome in servidores:
        api, k = nome.split("_")
        j = int(api[-1]) - 1
        casa[portas[(int(k) - 1 + j) % len(portas)]].append(nome)
    return casa


def configuracao(sockets, portas):
    """HAProxy's text for the node backends: `sockets` as [(server name,
    socket path)], `portas` the workers' ports."""
    caminho = dict(sockets)
    texto = ["# Written by stack/rotas.py at the stack's start; see roteamento.lua."]
    for porta, meus in casas([nome for nome, _ in sockets], portas).items():
        texto += [f"backend no_{porta}", "    balance roundrobin", "    http-reuse always"]
        # As in the api backend: mostly its first worker, warm in the caches.
        for i, nome in enumerate(meus):
            peso = 256 if i == 0 else 1
            texto.append(f'    server {nome} "{caminho[nome]}" maxconn 1 weight {peso} track api/{nome}')
        for nome, _ in sockets:
            if nome not in meus:
                texto.append(f'    server {nome} "{caminho[nome]}" maxconn 1 backup track api/{nome}')
    return "\n".join(texto) + "\n"
