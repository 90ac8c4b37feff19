-- Shared by the wrk scripts in this folder: prints one machine-readable
-- line that bench/run.sh parses (requests, rate, latency percentiles in
-- microseconds, and every kind of error, so a failing target cannot pass as
-- a fast one).
local M = {}
function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d rps=%.1f p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
return M
