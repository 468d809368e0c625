-- wrk script for `make bench`: POSTs whose body varies per request.
--   BENCH_MODE=send   a v1 send, its "to" and text varying per request
--   BENCH_MODE=event  a v2 message-delivered event (one per POST) for each id of the file
--                     BENCH_IDS, in order; the thread stops once every event is answered (the
--                     few requests issued after the last id are GET /healthz, not events)
--   BENCH_AUTH        the Authorization header
--   BENCH_LIMIT       stop after this many responses (0: run for wrk's -d only)
-- done() prints one line "WRK_JSON {...}" that bench/run.py parses. Use with -t 1.

local mode = os.getenv("BENCH_MODE") or "send"
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local ids = {}
local issued = 0
local answered = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")

if mode == "event" then
  for line in io.lines(os.getenv("BENCH_IDS")) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  if limit == 0 or limit > #ids then limit = #ids end
end

local event = '[{"type":"message-delivered","time":"2026-01-01T00:00:00Z","to":"+15550000000",' ..
  '"description":"ok","message":{"id":"%s","owner":"+15551230001","applicationId":"app-bench",' ..
  '"time":"2026-01-01T00:00:00Z","segmentCount":1,"direction":"out","to":["+15550000000"],' ..
  '"from":"+15551230001","text":""}}]'

request = function()
  issued = issued + 1
  if mode == "event" then
    if issued > #ids then
      return wrk.format("GET", "/healthz", nil, "")
    end
    return wrk.format(nil, nil, nil, string.format(event, ids[issued]))
  end
  return wrk.format(nil, nil, nil, string.format(
    '{"from":"+15551230001","to":"+1555%07d","text":"bench %d"}', issued % 10000000, issued))
end

if limit > 0 then
  response = function()
    answered = answered + 1
    if answered >= limit then wrk.thread:stop() end
  end
end

done = function(summary, latency)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
