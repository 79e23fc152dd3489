-- Owner routing for the Citus topology, in HAProxy: a request for a client
-- goes to the backend of the API workers whose calls mostly go to the Citus
-- worker holding the client's shard (backend no_<port>, written by
-- stack/rotas.py). A bjoern worker serves one request at a time, so a worker
-- shared by every node waits on whichever node is slowest; a worker per node
-- keeps a slow or throttled node from holding the others' clients.
--
-- The map is the one server.py reads through api.shards(), written by it to
-- CREBITO_MAPA (one "minimo maximo porta" line per shard) whenever it
-- changes, and read here again every second. Without a map, or for a path
-- without a client, `lua.crebito_no` names the `api` backend (every worker);
-- a stale map costs speed only, as server.py sends each call to its client's
-- node by its own map whatever worker serves it.

local M32 = 0xFFFFFFFF
local arquivo = os.getenv("CREBITO_MAPA")
local minimos, maximos, backends = {}, {}, {}
local lido = nil

local function rot(x, k)
    return ((x << k) | (x >> (32 - k))) & M32
end

-- PostgreSQL's hashint4, as roteamento.py's (Lua 5.3 integers are 64-bit).
local function hashint4(valor)
    local a = (0x9E3779B9 + 4 + 3923095) & M32
    local b, c = a, a
    a = (a + (valor & M32)) & M32
    c = c ~ b; c = (c - rot(b, 14)) & M32
    a = a ~ c; a = (a - rot(c, 11)) & M32
    b = b ~ a; b = (b - rot(a, 25)) & M32
    c = c ~ b; c = (c - rot(b, 16)) & M32
    a = a ~ c; a = (a - rot(c, 4)) & M32
    b = b ~ a; b = (b - rot(a, 14)) & M32
    c = c ~ b; c = (c - rot(b, 24)) & M32
    if c >= 0x80000000 then
        return c - 0x100000000
    end
    return c
end

local function ler()
    local f = arquivo and io.open(arquivo, "r")
    if not f then
        return
    end
    local texto = f:read("a")
    f:close()
    if texto == lido then
        return
    end
    local novos = {}
    for m, x, p in texto:gmatch("(%-?%d+) (%-?%d+) (%d+)\n") do
        novos[#novos + 1] = {tonumber(m), tonumber(x), "no_" .. p}
    end
    table.sort(novos, function(u, v) return u[1] < v[1] end)
    local mi, ma, ba = {}, {}, {}
    for i, s in ipairs(novos) do
        mi[i], ma[i], ba[i] = s[1], s[2], s[3]
    end
    minimos, maximos, backends, lido = mi, ma, ba, texto
end

-- The client id of /clientes/<id>/..., as server.py accepts it.
local function cliente(txn)
    local id = txn.sf:path():match("^/clientes/([1-9]%d*)/[a-z]+$")
    if id and #id <= 10 then
        local n = tonumber(id)
        if n <= 0x7FFFFFFF then
            return n
        end
    end
    return nil
end

local function no(h)
    local lo, hi = 1, #minimos
    while lo <= hi do
        local meio = (lo + hi) // 2
        if h < minimos[meio] then
            hi = meio - 1
        elseif h > maximos[meio] then
            lo = meio + 1
        else
            return backends[meio]
        end
    end
    return nil
end

core.register_task(function()
    while true do
        ler()
        core.msleep(1000)
    end
end)

core.register_fetches("crebito_no", function(txn)
    local c = cliente(txn)
    return c and no(hashint4(c)) or "api"
end)

-- The client's hash alone, for the tests that compare it with PostgreSQL's.
core.register_fetches("crebito_hash", function(txn)
    local c = cliente(txn)
    return c and hashint4(c) or ""
end)
