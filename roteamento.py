"""Owner routing for the Citus topology: which worker holds a client's shard.

Citus places a row by PostgreSQL's hashint4 of its distribution column (the
client id): each shard holds a range of hashes, each placement lives on a
node. A call sent to the node that holds its client's shard runs there alone;
sent to any other worker, Citus forwards it, and the cluster pays about one
more call's CPU. The map is read through api.shards() (the API's role may
only execute functions of `api`) and is only ever a speed-up: a call sent
with a stale map still reaches the right rows, through Citus.
"""

import bisect

M32 = 0xFFFFFFFF


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & M32


def hashint4(valor):
    """PostgreSQL's hashint4 (hash_bytes_uint32, Bob Jenkins' lookup3 `final`
    mix on one word), as the signed int4 the server returns."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & M32
    a = (a + (valor & M32)) & M32
    c ^= b
    c = (c - _rot(b, 14)) & M32
    a ^= c
    a = (a - _rot(c, 11)) & M32
    b ^= a
    b = (b - _rot(a, 25)) & M32
    c ^= b
    c = (c - _rot(b, 16)) & M32
    a ^= c
    a = (a - _rot(c, 4)) & M32
    b ^= a
    b = (b - _rot(a, 14)) & M32
    c ^= b
    c = (c - _rot(b, 24)) & M32
    return c - (1 << 32) if c & 0x80000000 else c


class Mapa:
    """Hash ranges to nodes: rows of (minimo, maximo, endereco, porta), as
    api.shards() returns them, sorted by minimo."""

    def __init__(self, linhas):
        linhas = sorted(linhas)
        self.minimos = [m for m, _, _, _ in linhas]
        self.maximos = [x for _, x, _, _ in linhas]
        self.nos = [(h, int(p)) for _, _, h, p in linhas]

    def no(self, cliente):
        """(host, port) of the node holding `cliente`'s shard, or None."""
        h = hashint4(cliente)
        i = bisect.bisect_right(self.minimos, h) - 1
        if i < 0 or h > self.maximos[i]:
            return None
        return self.nos[i]


def conninfos_por_no(conninfo):
    """{(host, port): conninfo of that node alone} from a multi-host conninfo
    (host=a,b port=p,q ...): one connection string per node it names."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    partes = conninfo_to_dict(conninfo)
    hosts = partes.pop("host", "").split(",")
    portas = str(partes.pop("port", "5432")).split(",")
    if len(portas) == 1:
        portas = portas * len(hosts)
    return {(h, int(p)): make_conninfo(**partes, host=h, port=p) for h, p in zip(hosts, portas, strict=True)}
