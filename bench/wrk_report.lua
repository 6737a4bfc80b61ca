-- wrk script of bench/api.py and bench/e2e.py: sends one request and counts answers by status.
--
--   wrk ... -s bench/wrk_report.lua URL -- METHOD BODY_FILE|- AUTHORIZATION|- accepted|- [USERS]
--
-- With "accepted" it also counts the items of each response body whose status is "accepted"
-- and those that carry an "error" (the batch endpoint's per-item results).
-- With USERS the body file is a template: each request gets its own body, "{n}" replaced by a
-- number no other request of the run has and "{user}" by that number modulo USERS (so that
-- content dedup does not take the messages of a closed loop for copies of each other).
-- done() prints one line, "WRK_JSON {...}", that bench/api.py reads.

local threads = {}

function setup(thread)
   thread:set("thread_number", #threads)
   table.insert(threads, thread)
end

function unique_request()
   local n = sent * 1000 + thread_number
   sent = sent + 1
   local body = template:gsub("{n}", tostring(n)):gsub("{user}", tostring(n % users))
   return wrk.format(nil, nil, nil, body)
end

function init(args)
   wrk.method = args[1]
   if args[2] ~= "-" then
      local file = assert(io.open(args[2], "rb"))
      wrk.body = file:read("*a")
      file:close()
      wrk.headers["Content-Type"] = "application/json"
   end
   if args[3] ~= "-" then
      wrk.headers["Authorization"] = args[3]
   end
   count_items = args[4] == "accepted"
   users = tonumber(args[5])
   if users then
      -- wrk asks for each request only when the script has a request(): set after init.
      template = wrk.body
      sent = 0
      request = unique_request
   end
   statuses = {}
   items_accepted = 0
   items_failed = 0
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if count_items and body then
      local _, accepted = string.gsub(body, '"status"%s*:%s*"accepted"', "")
      local _, failed = string.gsub(body, '"error"%s*:', "")
      items_accepted = items_accepted + accepted
      items_failed = items_failed + failed
   end
end

function done(summary, latency, requests)
   local statuses_total = {}
   local accepted, failed = 0, 0
   for _, thread in ipairs(threads) do
      for key, n in pairs(thread:get("statuses")) do
         statuses_total[key] = (statuses_total[key] or 0) + n
      end
      accepted = accepted + thread:get("items_accepted")
      failed = failed + thread:get("items_failed")
   end
   local parts = {}
   for key, n in pairs(statuses_total) do
      table.insert(parts, string.format('"%s":%d', key, n))
   end
   local errors = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us":%d,"requests":%d,"statuses":{%s},"items_accepted":%d,' ..
      '"items_failed":%d,"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
      summary.duration, summary.requests, table.concat(parts, ","), accepted, failed,
      errors.connect, errors.read, errors.write, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
