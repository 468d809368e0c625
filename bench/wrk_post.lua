-- wrk script for `make bench`: POSTs whose body varies per request.
--   BENCH_MODE=send   a v1 send, its "to" and text varying per request
--   BENCH_MODE=v2send a v2 send (the passthrough), its "to" and text varying per request
--   BENCH_MODE=event  a v2 message-delivered event (one per POST) for each id of the file
--                     BENCH_IDS, in order, each once; the thread stops once every event is
--                     answered (a connection with no id left waits instead of sending: an
--                     extra request would be cut short by the stop, and a cut event is lost)
--   BENCH_AUTH        the Authorization header
--   BENCH_LIMIT       stop after this many responses (0: run for wrk's -d only)
--   BENCH_DONE        a file written at the stop: "<first request> <last response>" (epoch
--                     seconds), since wrk itself reports its whole -d (bench/run.py then sends
--                     SIGINT to end wrk early)
-- done() prints one line "WRK_JSON {...}" that bench/run.py parses. Use with -t 1.

local mode = os.getenv("BENCH_MODE") or "send"
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0")
local ids = {}
local issued = 0
local reserved = 0
-- ids reserved by delay(), taken in order by request(). Explicit head and tail: `#` on a table
-- with holes (taken slots are set to nil) has no defined value, and once put a new id below head.
local queue, head, tail = {}, 1, 0
local answered = 0

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(0, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local first = nil

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

if mode == "event" then
  -- Called once before each request: a connection takes an id here or waits.
  delay = function()
    if reserved >= #ids then return 3600000 end
    reserved = reserved + 1
    tail = tail + 1
    queue[tail] = reserved
    return 0
  end
end

request = function()
  issued = issued + 1
  if first == nil then first = now() end
  if mode == "event" then
    local i = queue[head]
    if i == nil then
      -- wrk calls request() once before the run to check the script: not sent, no id taken.
      return wrk.format(nil, nil, nil, string.format(event, ids[1]))
    end
    queue[head] = nil
    head = head + 1
    return wrk.format(nil, nil, nil, string.format(event, ids[i]))
  end
  if mode == "v2send" then
    return wrk.format(nil, nil, nil, string.format(
      '{"applicationId":"app-bench","to":["+1555%07d"],"from":"+15551230001","text":"bench %d"}',
      issued % 10000000, issued))
  end
  return wrk.format(nil, nil, nil, string.format(
    '{"from":"+15551230001","to":"+1555%07d","text":"bench %d"}', issued % 10000000, issued))
end

if limit > 0 then
  response = function()
    answered = answered + 1
    if answered >= limit then
      local f = io.open(os.getenv("BENCH_DONE"), "w")
      f:write(string.format("%.6f %.6f\n", first, now()))
      f:close()
      wrk.thread:stop()
    end
  end
end

done = function(summary, latency)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
