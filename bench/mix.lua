-- The official request mix for wrk, on keep-alive connections: debits,
-- credits and statements in the proportion 220 : 110 : 10, a random client
-- 1..5 (1..N with `-- N` after the URL, for seeded clients), valor 1..10000 and a random 10-character alphanumeric descricao.
-- A status other than 200 and 422 counts as an error: wrk alone would count
-- every 422 (a debit refused for lack of limit, a legitimate answer) as one.

local alfanumericos = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
local cabecalhos_get = { ["User-Agent"] = "Agente do Caos - 2024/Q1" }
local cabecalhos_post = {
   ["User-Agent"] = "Agente do Caos - 2024/Q1",
   ["Content-Type"] = "application/json",
}
local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   math.randomseed(os.time() * 1000 + id)
   clientes = tonumber(args[1]) or 5
   erros = 0
   respostas_422 = 0
end

local function descricao()
   local t = {}
   for i = 1, 10 do
      local k = math.random(#alfanumericos)
      t[i] = alfanumericos:sub(k, k)
   end
   return table.concat(t)
end

function request()
   local sorteio = math.random(340)
   local cliente = math.random(clientes)
   if sorteio <= 10 then
      return wrk.format("GET", "/clientes/" .. cliente .. "/extrato", cabecalhos_get)
   end
   local tipo = sorteio <= 230 and "d" or "c"
   local corpo = string.format('{"valor": %d, "tipo": "%s", "descricao": "%s"}', math.random(10000), tipo, descricao())
   return wrk.format("POST", "/clientes/" .. cliente .. "/transacoes", cabecalhos_post, corpo)
end

function response(status, headers, body)
   if status == 422 then
      respostas_422 = respostas_422 + 1
   elseif status ~= 200 then
      erros = erros + 1
   end
end

function done(summary, latency, requests)
   local erros_total, r422 = 0, 0
   for _, t in ipairs(threads) do
      erros_total = erros_total + t:get("erros")
      r422 = r422 + t:get("respostas_422")
   end
   local e = summary.errors
   io.write(string.format(
      'RESULTADO {"requisicoes": %d, "duracao_us": %d, "erros_status": %d, "respostas_422": %d, '
         .. '"erros_conexao": %d, "erros_leitura": %d, "erros_escrita": %d, "erros_timeout": %d, '
         .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "media_us": %.1f}\n',
      summary.requests, summary.duration, erros_total, r422, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
