-- wrk script: the same POST on every request, built once by wrk.
--
-- Arguments after "--": BODY [HEADER ...], headers as "Name: value".
-- No request() function is defined, so wrk sends a precomputed request and
-- spends no Lua time per request.
function init(args)
  wrk.method = "POST"
  wrk.body = args[1]
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end
