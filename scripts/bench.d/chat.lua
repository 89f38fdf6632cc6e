-- wrk script for scripts/bench: POST the chat body in $BENCH_BODY, whose text
-- holds one @@N@@ marker. With $BENCH_UNIQUE=1 the marker becomes a per-request
-- counter, so no two requests share a text (a cold guardrail cache); otherwise
-- it is a constant and every request is identical. done() prints one line,
-- "BENCH {json}", that scripts/bench parses.
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local head, tail = file:read("*a"):match("^(.-)@@N@@(.*)$")
file:close()

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-test"

if os.getenv("BENCH_UNIQUE") == "1" then
    local threads = 0
    -- Runs in wrk's main Lua state; thread:set defines a global in the thread's.
    function setup(thread)
        threads = threads + 1
        thread:set("thread_id", threads)
    end

    -- $BENCH_SALT differs per wrk run, so a run never replays an earlier one's texts.
    local salt = os.getenv("BENCH_SALT") or ""
    local counter = 0
    function request()
        counter = counter + 1
        return wrk.format(nil, nil, nil, head .. salt .. "-" .. thread_id .. "-" .. counter .. tail)
    end
else
    wrk.body = head .. "0" .. tail
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
            .. '"non2xx": %d, "socket_errors": %d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        e.status, e.connect + e.read + e.write + e.timeout))
end
