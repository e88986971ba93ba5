-- wrk script: every request carries the next value from a file, in order.
--
-- Arguments after "--": DATA FIELD BODY [HEADER ...]
--   DATA    file with one value per line (client assertions, DPoP proofs);
--   FIELD   "body" to send each value as the request body, or the name of
--           the header that carries it;
--   BODY    the fixed body when FIELD names a header ("-" otherwise);
--   HEADER  fixed headers as "Name: value".
-- Values are used once each in file order; past the end the script starts
-- over, and the server then refuses the replays (counted as errors).
local values = {}
local count, next_index = 0, 0
local field, body
local headers = {}

function init(args)
  local path = args[1]
  field = args[2]
  body = args[3]
  for i = 4, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  for line in io.lines(path) do
    count = count + 1
    values[count] = line
  end
end

function request()
  next_index = next_index % count + 1
  if field == "body" then
    return wrk.format("POST", nil, headers, values[next_index])
  end
  headers[field] = values[next_index]
  return wrk.format("POST", nil, headers, body)
end
