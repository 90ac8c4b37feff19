-- wrk script: a ~1 KB non-streaming chat completion (the "small request"
-- rows). The answer is mockllm's default 16-token completion (~600 bytes).
package.path = debug.getinfo(1, "S").source:match("^@?(.*/)") .. "?.lua;" .. package.path
local report = require("report")

wrk.method = "POST"
-- under the URL's own path (a gateway that serves OpenAI below a prefix)
wrk.path = wrk.path:gsub("/$", "") .. "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 19)
wrk.body = '{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"' .. filler .. '"}]}'

done = report.done
