/* Answers of mockllm: the JSON bodies, SSE events and error bodies of the
 * OpenAI and Anthropic APIs, written straight into a libevent evbuffer with
 * printf-style appends (no JSON tree: the shapes are fixed, only numbers,
 * ids, the model and the token words vary). Shapes follow the providers'
 * API references so the official SDKs parse them. */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "tools/mockllm/mockllm.h"

/* Appends formatted text; a failure is remembered in *rc as -1. */
#define P(...)                                                     \
    do {                                                           \
        if (evbuffer_add_printf(out, __VA_ARGS__) < 0) rc = -1;    \
    } while (0)

static const char *const words[8] = {" Hello", " from", " the", " mock",
                                     " upstream", " model", " of", " Tollgate"};

/* The arguments of every mock tool call, as a JSON text and as the two
 * pieces a stream sends. */
#define TOOL_ARGS "{\"q\":\"mock\"}"
#define TOOL_ARGS_ESC "{\\\"q\\\":\\\"mock\\\"}"
static const char *const tool_parts_esc[2] = {"{\\\"q\\\":", "\\\"mock\\\"}"};

const char *tg_mock_token(long i) { return i == 0 ? "Hello" : words[i % 8]; }

int tg_mock_json_str(struct evbuffer *out, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    int rc = 0;
    size_t run = 0;
    if (evbuffer_add(out, "\"", 1) < 0) return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        size_t en = 0;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            en = 2;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            en = 6;
        } else {
            run++;
            continue;
        }
        if (run && evbuffer_add(out, s + i - run, run) < 0) rc = -1;
        run = 0;
        if (evbuffer_add(out, esc, en) < 0) rc = -1;
    }
    if (run && evbuffer_add(out, s + len - run, run) < 0) rc = -1;
    if (evbuffer_add(out, "\"", 1) < 0) rc = -1;
    return rc;
}

static int model(struct evbuffer *out, const tg_mock_gen_t *g) {
    return tg_mock_json_str(out, g->gn_model, strlen(g->gn_model));
}

/* The visible text of one choice, without quotes (the words need no escaping). */
static int text(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    for (long i = 0; i < g->gn_plan.pl_output; i++) P("%s", tg_mock_token(i));
    if (g->gn_scn->sc_lone_surrogate) P("\\ud83d");
    return rc;
}

/* Broken JSON for the malformed scenario: valid start, cut mid-string. */
static int malformed(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    P("{\"id\":\"mock-%s\",\"object\":\"malformed\",\"choices\":[{\"text\":\"Hel", g->gn_id);
    return rc;
}

/* Token events of a stream: one per output token, or two for a tool call
 * (its head, then its arguments), whatever the protocol. */
static long token_steps(const tg_mock_gen_t *g) {
    return g->gn_plan.pl_tool ? 2 : g->gn_plan.pl_output;
}

/* ---- OpenAI Chat Completions --------------------------------------------- */

/* The counts usage blocks report: the plan's, or zeros for zero-usage. */
static tg_mock_plan_t reported(const tg_mock_gen_t *g) {
    tg_mock_plan_t u = g->gn_plan;
    if (g->gn_scn->sc_zero_usage)
        u.pl_prompt = u.pl_cached = u.pl_cache_write = u.pl_output = u.pl_reasoning = 0;
    return u;
}

/* The output count of a usage block: the plan's, or report-output's text. */
static int output_count(struct evbuffer *out, const tg_mock_gen_t *g, long n) {
    int rc = 0;
    if (g->gn_scn->sc_report_output[0]) P("%s", g->gn_scn->sc_report_output);
    else P("%ld", n);
    return rc;
}

/* Chat usage; `tokens` >= 0 reports a running total of that many visible
 * tokens per choice (running-usage), -1 the final figures. */
static int chat_usage(struct evbuffer *out, const tg_mock_gen_t *g, long tokens) {
    tg_mock_plan_t u = reported(g);
    const tg_mock_plan_t *pl = &u;
    long completion = ((tokens >= 0 ? tokens : pl->pl_output) + pl->pl_reasoning) * pl->pl_n;
    int rc = 0;
    P("{\"prompt_tokens\":%ld,\"completion_tokens\":", pl->pl_prompt);
    rc |= output_count(out, g, completion);
    P(",\"total_tokens\":%ld,", pl->pl_prompt + completion);
    switch (g->gn_scn->sc_usage_shape) {
    case TG_MOCK_SHAPE_DEEPSEEK: /* its own names only, as its API documents them */
        P("\"prompt_cache_hit_tokens\":%ld,\"prompt_cache_miss_tokens\":%ld,"
          "\"completion_tokens_details\":{\"reasoning_tokens\":%ld}}",
          pl->pl_cached, pl->pl_prompt - pl->pl_cached, pl->pl_reasoning * pl->pl_n);
        return rc;
    case TG_MOCK_SHAPE_KIMI: /* Moonshot: cached_tokens beside prompt_tokens */
        P("\"cached_tokens\":%ld}", pl->pl_cached);
        return rc;
    case TG_MOCK_SHAPE_QWEN:
    case TG_MOCK_SHAPE_GLM:
    case TG_MOCK_SHAPE_GEMINI: /* OpenAI's cached_tokens, without OpenAI's other details */
        P("\"prompt_tokens_details\":{\"cached_tokens\":%ld}}", pl->pl_cached);
        return rc;
    }
    P("\"prompt_tokens_details\":{\"cached_tokens\":%ld,\"audio_tokens\":0},"
      "\"completion_tokens_details\":{\"reasoning_tokens\":%ld,\"audio_tokens\":0,"
      "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
      pl->pl_cached, pl->pl_reasoning * pl->pl_n);
    return rc;
}

static const char *chat_finish(const tg_mock_gen_t *g) {
    if (g->gn_plan.pl_tool) return "tool_calls";
    return g->gn_plan.pl_truncated ? "length" : "stop";
}

static int chat_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    P("{\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion\",\"created\":%ld,\"model\":",
      g->gn_id, g->gn_created);
    rc |= model(out, g);
    if (g->gn_scn->sc_nested_usage)
        P(",\"metadata\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}");
    P(",\"choices\":[");
    for (int i = 0; i < g->gn_plan.pl_n; i++) {
        P("%s{\"index\":%d,\"message\":{\"role\":\"assistant\",", i ? "," : "", i);
        if (g->gn_plan.pl_tool) {
            P("\"content\":null,\"tool_calls\":[{\"id\":\"call_%s_%d\",\"type\":\"function\","
              "\"function\":{\"name\":",
              g->gn_id, i);
            rc |= tg_mock_json_str(out, g->gn_req->rq_tool, strlen(g->gn_req->rq_tool));
            P(",\"arguments\":\"" TOOL_ARGS_ESC "\"}}],");
        } else {
            P("\"content\":\"");
            rc |= text(out, g);
            P("\",");
        }
        P("\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"%s\"}",
          chat_finish(g));
    }
    P("]");
    if (!g->gn_scn->sc_no_usage) {
        P(",\"usage\":");
        rc |= chat_usage(out, g, -1);
    }
    P(",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mockllm\"}");
    return rc;
}

/* Opens one chunk up to the choice's delta object. */
static int chunk_head(struct evbuffer *out, const tg_mock_gen_t *g, int choice) {
    int rc = 0;
    P("data: {\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion.chunk\",\"created\":%ld,"
      "\"model\":",
      g->gn_id, g->gn_created);
    rc |= model(out, g);
    P(",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mockllm\",\"choices\":"
      "[{\"index\":%d,\"delta\":",
      choice);
    return rc;
}

/* Closes a chunk opened by chunk_head; `sent` is the visible tokens sent so
 * far (for running-usage). */
static int chunk_tail(struct evbuffer *out, const tg_mock_gen_t *g, const char *finish, long sent) {
    int rc = 0;
    if (finish) P("},\"logprobs\":null,\"finish_reason\":\"%s\"}]", finish);
    else P("},\"logprobs\":null,\"finish_reason\":null}]");
    if (finish && g->gn_scn->sc_usage_on_finish && !g->gn_scn->sc_no_usage) {
        P(",\"usage\":");
        rc |= chat_usage(out, g, -1);
    } else if (g->gn_scn->sc_running_usage && !g->gn_scn->sc_no_usage) {
        P(",\"usage\":");
        rc |= chat_usage(out, g, sent);
    } else if (g->gn_req->rq_include_usage && !g->gn_scn->sc_no_usage) {
        P(",\"usage\":null");
    }
    P("}\n\n");
    return rc;
}

static int chat_step(struct evbuffer *out, const tg_mock_gen_t *g, long step) {
    long toks = token_steps(g);
    int rc = 0;
    if (g->gn_scn->sc_malformed && step == 1) {
        P("data: ");
        rc |= malformed(out, g);
        P("\n\n");
        return rc;
    }
    for (int i = 0; i < g->gn_plan.pl_n; i++) {
        if (step == 0) {
            rc |= chunk_head(out, g, i);
            P("{\"role\":\"assistant\",\"content\":%s,\"refusal\":null",
              g->gn_plan.pl_tool ? "null" : "\"\"");
            rc |= chunk_tail(out, g, NULL, 0);
        } else if (step <= toks && g->gn_plan.pl_tool) {
            rc |= chunk_head(out, g, i);
            if (step == 1) {
                P("{\"tool_calls\":[{\"index\":0,\"id\":\"call_%s_%d\",\"type\":\"function\","
                  "\"function\":{\"name\":",
                  g->gn_id, i);
                rc |= tg_mock_json_str(out, g->gn_req->rq_tool, strlen(g->gn_req->rq_tool));
                P(",\"arguments\":\"\"}}]");
            } else {
                P("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"" TOOL_ARGS_ESC
                  "\"}}]");
            }
            rc |= chunk_tail(out, g, NULL, step == toks ? g->gn_plan.pl_output : 0);
        } else if (step <= toks) {
            rc |= chunk_head(out, g, i);
            P("{\"content\":\"%s\"", tg_mock_token(step - 1));
            rc |= chunk_tail(out, g, NULL, step);
        } else {
            rc |= chunk_head(out, g, i);
            P("{");
            rc |= chunk_tail(out, g, chat_finish(g), g->gn_plan.pl_output);
        }
    }
    if (step == toks + 1) {
        if (g->gn_req->rq_include_usage && !g->gn_scn->sc_no_usage && !g->gn_scn->sc_usage_on_finish) {
            P("data: {\"id\":\"chatcmpl-%s\",\"object\":\"chat.completion.chunk\",\"created\":%ld,"
              "\"model\":",
              g->gn_id, g->gn_created);
            rc |= model(out, g);
            P(",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mockllm\",\"choices\":[],"
              "\"usage\":");
            rc |= chat_usage(out, g, -1);
            P("}\n\n");
        }
        P("data: [DONE]\n\n");
    }
    return rc;
}

/* ---- Anthropic Messages --------------------------------------------------- */

static int msg_usage(struct evbuffer *out, const tg_mock_gen_t *g, long output) {
    tg_mock_plan_t u = reported(g);
    const tg_mock_plan_t *pl = &u;
    int rc = 0;
    if (g->gn_scn->sc_zero_usage) output = 0;
    /* Anthropic's input_tokens exclude cache reads and writes. */
    P("{\"input_tokens\":%ld,\"cache_creation_input_tokens\":%ld,\"cache_read_input_tokens\":%ld,"
      "\"output_tokens\":%ld,\"service_tier\":\"standard\"}",
      pl->pl_prompt - pl->pl_cached - pl->pl_cache_write, pl->pl_cache_write, pl->pl_cached,
      output);
    return rc;
}

static const char *msg_stop(const tg_mock_gen_t *g) {
    if (g->gn_plan.pl_tool) return "tool_use";
    return g->gn_plan.pl_truncated ? "max_tokens" : "end_turn";
}

static long msg_output(const tg_mock_gen_t *g) {
    return g->gn_plan.pl_output + g->gn_plan.pl_reasoning;
}

/* Thinking tokens: with reasoning=R an Anthropic answer opens with a
 * thinking block of R words (and a signature), as extended thinking does. */
static long msg_thinking(const tg_mock_gen_t *g) { return g->gn_plan.pl_reasoning; }

/* The answer's main block (text or tool_use) as first announced (start = 1:
 * empty, for content_block_start) or complete. */
static int msg_block(struct evbuffer *out, const tg_mock_gen_t *g, int start) {
    int rc = 0;
    if (g->gn_plan.pl_tool) {
        P("{\"type\":\"tool_use\",\"id\":\"toolu_%s\",\"name\":", g->gn_id);
        rc |= tg_mock_json_str(out, g->gn_req->rq_tool, strlen(g->gn_req->rq_tool));
        P(",\"input\":%s}", start ? "{}" : TOOL_ARGS);
    } else {
        P("{\"type\":\"text\",\"text\":\"");
        if (!start) rc |= text(out, g);
        P("\"}");
    }
    return rc;
}

static int msg_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    P("{\"id\":\"msg_%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", g->gn_id);
    rc |= model(out, g);
    P(",\"content\":[");
    if (msg_thinking(g) > 0) {
        P("{\"type\":\"thinking\",\"thinking\":\"");
        for (long i = 0; i < msg_thinking(g); i++) P("%s", tg_mock_token(i));
        P("\",\"signature\":\"mocksig_%s\"},", g->gn_id);
    }
    rc |= msg_block(out, g, 0);
    P("],\"stop_reason\":\"%s\",\"stop_sequence\":null", msg_stop(g));
    if (!g->gn_scn->sc_no_usage) {
        P(",\"usage\":");
        rc |= msg_usage(out, g, msg_output(g));
    }
    P("}");
    return rc;
}

static int msg_block_start(struct evbuffer *out, const tg_mock_gen_t *g, int index) {
    int rc = 0;
    P("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":%d,"
      "\"content_block\":",
      index);
    rc |= msg_block(out, g, 1);
    P("}\n\n");
    return rc;
}

/* Ends the thinking block (its signature, its stop) and opens the main one. */
static int msg_switch(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    P("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"signature_delta\",\"signature\":\"mocksig_%s\"}}\n\n"
      "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
      g->gn_id);
    rc |= msg_block_start(out, g, 1);
    return rc;
}

/* Steps: 0 message_start (+ the first block's start, ping); then one per
 * thinking token; then one per main token (the first also switches blocks);
 * then the epilogue. */
static int msg_step(struct evbuffer *out, const tg_mock_gen_t *g, long step) {
    long th = msg_thinking(g), toks = token_steps(g), j = step - th - 1;
    int main_idx = th > 0 ? 1 : 0, rc = 0;
    if (step == 0) {
        P("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_%s\","
          "\"type\":\"message\",\"role\":\"assistant\",\"model\":",
          g->gn_id);
        rc |= model(out, g);
        P(",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null");
        if (!g->gn_scn->sc_no_usage) {
            P(",\"usage\":");
            rc |= msg_usage(out, g, 1); /* the API reports a running 1 here */
        }
        P("}}\n\n");
        if (th > 0)
            P("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
              "\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n");
        else
            rc |= msg_block_start(out, g, 0);
        P("event: ping\ndata: {\"type\":\"ping\"}\n\n");
    } else if (step == 1 && g->gn_scn->sc_malformed) {
        P("event: content_block_delta\ndata: ");
        rc |= malformed(out, g);
        P("\n\n");
    } else if (step <= th) {
        P("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
          "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"%s\"}}\n\n",
          tg_mock_token(step - 1));
    } else if (j < toks) {
        if (th > 0 && j == 0) rc |= msg_switch(out, g);
        if (g->gn_plan.pl_tool)
            P("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":%d,"
              "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n",
              main_idx, tool_parts_esc[j]);
        else
            P("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":%d,"
              "\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n",
              main_idx, tg_mock_token(j));
    } else {
        if (th > 0 && toks == 0) rc |= msg_switch(out, g);
        P("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":%d}\n\n",
          main_idx);
        P("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
          "\"%s\",\"stop_sequence\":null}",
          msg_stop(g));
        if (!g->gn_scn->sc_no_usage) {
            P(",\"usage\":");
            rc |= msg_usage(out, g, msg_output(g));
        }
        P("}\n\n");
        P("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }
    return rc;
}

/* ---- OpenAI Responses ----------------------------------------------------- */

static int resp_usage(struct evbuffer *out, const tg_mock_gen_t *g) {
    tg_mock_plan_t u = reported(g);
    const tg_mock_plan_t *pl = &u;
    long output = pl->pl_output + pl->pl_reasoning;
    int rc = 0;
    P("{\"input_tokens\":%ld,\"input_tokens_details\":{\"cached_tokens\":%ld},\"output_tokens\":",
      pl->pl_prompt, pl->pl_cached);
    rc |= output_count(out, g, output);
    P(",\"output_tokens_details\":{\"reasoning_tokens\":%ld},\"total_tokens\":%ld}", pl->pl_reasoning,
      pl->pl_prompt + output);
    return rc;
}

/* The output item; done = 0 writes it as first announced (empty). */
static int resp_item(struct evbuffer *out, const tg_mock_gen_t *g, int done) {
    int rc = 0;
    if (g->gn_plan.pl_tool) {
        P("{\"type\":\"function_call\",\"id\":\"fc_%s\",\"call_id\":\"call_%s\",\"name\":",
          g->gn_id, g->gn_id);
        rc |= tg_mock_json_str(out, g->gn_req->rq_tool, strlen(g->gn_req->rq_tool));
        P(",\"arguments\":\"%s\",\"status\":\"%s\"}", done ? TOOL_ARGS_ESC : "",
          done ? "completed" : "in_progress");
        return rc;
    }
    P("{\"type\":\"message\",\"id\":\"msg_%s\",\"status\":\"%s\",\"role\":\"assistant\","
      "\"content\":[",
      g->gn_id, done ? "completed" : "in_progress");
    if (done) {
        P("{\"type\":\"output_text\",\"text\":\"");
        rc |= text(out, g);
        P("\",\"annotations\":[],\"logprobs\":[]}");
    }
    P("]}");
    return rc;
}

/* The response object; done = 0 is the in-progress snapshot of a stream. */
static int resp_object(struct evbuffer *out, const tg_mock_gen_t *g, int done) {
    const char *status = !done ? "in_progress" : g->gn_plan.pl_truncated ? "incomplete" : "completed";
    int rc = 0;
    P("{\"id\":\"resp_%s\",\"object\":\"response\",\"created_at\":%ld,\"status\":\"%s\","
      "\"error\":null,\"incomplete_details\":%s,\"instructions\":null,\"max_output_tokens\":",
      g->gn_id, g->gn_created, status,
      done && g->gn_plan.pl_truncated ? "{\"reason\":\"max_output_tokens\"}" : "null");
    if (g->gn_req->rq_max_tokens >= 0) P("%ld", g->gn_req->rq_max_tokens);
    else P("null");
    P(",\"model\":");
    rc |= model(out, g);
    P(",\"output\":[");
    if (done) rc |= resp_item(out, g, 1);
    P("],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
      "\"reasoning\":{\"effort\":null,\"summary\":null},\"store\":true,\"temperature\":1.0,"
      "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":%s,"
      "\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":",
      g->gn_req->rq_tools_json[0] ? g->gn_req->rq_tools_json : "[]");
    if (done && !g->gn_scn->sc_no_usage) rc |= resp_usage(out, g);
    else P("null");
    P(",\"user\":null,\"metadata\":{}}");
    return rc;
}

static int resp_step(struct evbuffer *out, const tg_mock_gen_t *g, long step) {
    long toks = token_steps(g);
    int tool = g->gn_plan.pl_tool;
    long seq = step == 0 ? 0 : (tool ? 3 : 4) + step - 1; /* sequence_number of the first event */
    int rc = 0;
    if (step == 0) {
        P("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":%ld,"
          "\"response\":",
          seq++);
        rc |= resp_object(out, g, 0);
        P("}\n\nevent: response.in_progress\ndata: {\"type\":\"response.in_progress\","
          "\"sequence_number\":%ld,\"response\":",
          seq++);
        rc |= resp_object(out, g, 0);
        P("}\n\nevent: response.output_item.added\ndata: {\"type\":\"response.output_item.added\","
          "\"sequence_number\":%ld,\"output_index\":0,\"item\":",
          seq++);
        rc |= resp_item(out, g, 0);
        P("}\n\n");
        if (!tool)
            P("event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\","
              "\"sequence_number\":%ld,\"item_id\":\"msg_%s\",\"output_index\":0,"
              "\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\","
              "\"annotations\":[]}}\n\n",
              seq++, g->gn_id);
    } else if (step == 1 && g->gn_scn->sc_malformed) {
        P("event: response.output_text.delta\ndata: ");
        rc |= malformed(out, g);
        P("\n\n");
    } else if (step <= toks && tool) {
        P("event: response.function_call_arguments.delta\ndata: {\"type\":"
          "\"response.function_call_arguments.delta\",\"sequence_number\":%ld,\"item_id\":"
          "\"fc_%s\",\"output_index\":0,\"delta\":\"%s\"}\n\n",
          seq, g->gn_id, tool_parts_esc[step - 1]);
    } else if (step <= toks) {
        P("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","
          "\"sequence_number\":%ld,\"item_id\":\"msg_%s\",\"output_index\":0,\"content_index\":0,"
          "\"delta\":\"%s\",\"logprobs\":[]}\n\n",
          seq, g->gn_id, tg_mock_token(step - 1));
    } else {
        if (tool) {
            P("event: response.function_call_arguments.done\ndata: {\"type\":"
              "\"response.function_call_arguments.done\",\"sequence_number\":%ld,\"item_id\":"
              "\"fc_%s\",\"output_index\":0,\"arguments\":\"" TOOL_ARGS_ESC "\"}\n\n",
              seq++, g->gn_id);
        } else {
            P("event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\","
              "\"sequence_number\":%ld,\"item_id\":\"msg_%s\",\"output_index\":0,"
              "\"content_index\":0,\"text\":\"",
              seq++, g->gn_id);
            rc |= text(out, g);
            P("\",\"logprobs\":[]}\n\nevent: response.content_part.done\ndata: {\"type\":"
              "\"response.content_part.done\",\"sequence_number\":%ld,\"item_id\":\"msg_%s\","
              "\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\","
              "\"text\":\"",
              seq++, g->gn_id);
            rc |= text(out, g);
            P("\",\"annotations\":[]}}\n\n");
        }
        P("event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\","
          "\"sequence_number\":%ld,\"output_index\":0,\"item\":",
          seq++);
        rc |= resp_item(out, g, 1);
        P("}\n\n");
        {
            const char *ev = g->gn_plan.pl_truncated ? "response.incomplete" : "response.completed";
            if (g->gn_scn->sc_malformed_final) {
                P("event: %s\ndata: ", ev);
                rc |= malformed(out, g);
                P("\n\n");
                return rc;
            }
            P("event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%ld,\"response\":", ev, ev,
              seq++);
        }
        rc |= resp_object(out, g, 1);
        P("}\n\n");
    }
    return rc;
}

/* ---- embeddings, images, count_tokens, models ----------------------------- */

static int b64(struct evbuffer *out, const unsigned char *p, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int rc = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                     i + 2 < n ? tab[v & 63] : '='};
        if (evbuffer_add(out, q, 4) < 0) rc = -1;
    }
    return rc;
}

/* Component k of embedding i: a fixed pattern in [-0.5, 0.49]. */
static float emb_value(int i, int k) { return (float)((i * 31 + k * 7) % 100) / 100.0f - 0.5f; }

static int embeddings_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    int inputs = g->gn_req->rq_inputs > 0 ? g->gn_req->rq_inputs : 1;
    int dims = g->gn_req->rq_dimensions > 0 ? g->gn_req->rq_dimensions : 8;
    int rc = 0;
    P("{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < inputs; i++) {
        P("%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":", i ? "," : "", i);
        if (g->gn_req->rq_base64) {
            unsigned char raw[4096 * 4];
            for (int k = 0; k < dims; k++) {
                float f = emb_value(i, k);
                memcpy(raw + 4 * k, &f, 4); /* little-endian float32, as the API sends */
            }
            P("\"");
            rc |= b64(out, raw, (size_t)dims * 4);
            P("\"");
        } else {
            P("[");
            for (int k = 0; k < dims; k++) P("%s%g", k ? "," : "", (double)emb_value(i, k));
            P("]");
        }
        P("}");
    }
    P("],\"model\":");
    rc |= model(out, g);
    if (!g->gn_scn->sc_no_usage)
        P(",\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}", reported(g).pl_prompt,
          reported(g).pl_prompt);
    P("}");
    return rc;
}

/* A 1x1 transparent PNG. */
static const char png_b64[] =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

static int images_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    tg_mock_plan_t u = reported(g);
    const tg_mock_plan_t *pl = &u;
    long output = pl->pl_output * pl->pl_n;
    int rc = 0;
    P("{\"created\":%ld,\"data\":[", g->gn_created);
    for (int i = 0; i < pl->pl_n; i++) {
        if (g->gn_req->rq_base64) P("%s{\"b64_json\":\"%s\"}", i ? "," : "", png_b64);
        else P("%s{\"url\":\"http://mockllm.invalid/images/%s-%d.png\"}", i ? "," : "", g->gn_id, i);
    }
    P("]");
    if (!g->gn_scn->sc_no_usage)
        P(",\"usage\":{\"input_tokens\":%ld,\"input_tokens_details\":{\"text_tokens\":%ld,"
          "\"image_tokens\":0},\"output_tokens\":%ld,\"total_tokens\":%ld}",
          pl->pl_prompt, pl->pl_prompt, output, pl->pl_prompt + output);
    P("}");
    return rc;
}

static const char *const model_ids[] = {"gpt-4o-mini", "gpt-4o", "o3-mini",
                                        "text-embedding-3-small", "gpt-image-1",
                                        "claude-sonnet-4-5", "claude-haiku-4-5"};
#define NMODELS (sizeof model_ids / sizeof model_ids[0])

static int models_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    int rc = 0;
    P("{%s\"data\":[", g->gn_anthropic ? "" : "\"object\":\"list\",");
    for (size_t i = 0; i < NMODELS; i++) {
        if (g->gn_anthropic)
            P("%s{\"type\":\"model\",\"id\":\"%s\",\"display_name\":\"%s\","
              "\"created_at\":\"2025-01-01T00:00:00Z\"}",
              i ? "," : "", model_ids[i], model_ids[i]);
        else
            P("%s{\"id\":\"%s\",\"object\":\"model\",\"created\":1735689600,\"owned_by\":\"mockllm\"}",
              i ? "," : "", model_ids[i]);
    }
    P("]");
    if (g->gn_anthropic)
        P(",\"has_more\":false,\"first_id\":\"%s\",\"last_id\":\"%s\"", model_ids[0],
          model_ids[NMODELS - 1]);
    P("}");
    return rc;
}

/* ---- dispatch ------------------------------------------------------------ */

int tg_mock_write_json(struct evbuffer *out, const tg_mock_gen_t *g) {
    if (g->gn_scn->sc_malformed && g->gn_proto != TG_MOCK_MODELS) return malformed(out, g);
    switch (g->gn_proto) {
    case TG_MOCK_CHAT: return chat_json(out, g);
    case TG_MOCK_MESSAGES: return msg_json(out, g);
    case TG_MOCK_RESPONSES: {
        int rc = resp_object(out, g, 1);
        return rc;
    }
    case TG_MOCK_EMBEDDINGS: return embeddings_json(out, g);
    case TG_MOCK_IMAGES: return images_json(out, g);
    case TG_MOCK_COUNT: return evbuffer_add_printf(out, "{\"input_tokens\":%ld}", g->gn_plan.pl_prompt) < 0 ? -1 : 0;
    case TG_MOCK_MODELS: return models_json(out, g);
    }
    return -1;
}

long tg_mock_stream_steps(const tg_mock_gen_t *g) {
    switch (g->gn_proto) {
    case TG_MOCK_MESSAGES: return msg_thinking(g) + token_steps(g) + 2; /* + thinking tokens */
    case TG_MOCK_CHAT:
    case TG_MOCK_RESPONSES: return token_steps(g) + 2; /* preamble + tokens + epilogue */
    default: return 0;
    }
}

int tg_mock_write_step(struct evbuffer *out, const tg_mock_gen_t *g, long step) {
    switch (g->gn_proto) {
    case TG_MOCK_CHAT: return chat_step(out, g, step);
    case TG_MOCK_MESSAGES: return msg_step(out, g, step);
    case TG_MOCK_RESPONSES: return resp_step(out, g, step);
    default: return -1;
    }
}

int tg_mock_write_stream_error(struct evbuffer *out, const tg_mock_gen_t *g, long step) {
    static const char msg[] = "mockllm: scripted failure in the middle of the stream";
    int rc = 0;
    switch (g->gn_proto) {
    case TG_MOCK_MESSAGES:
        P("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
          "\"message\":\"%s\"}}\n\n",
          msg);
        break;
    case TG_MOCK_RESPONSES:
        P("event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"%s\","
          "\"param\":null,\"sequence_number\":%ld}\n\n",
          msg, (g->gn_plan.pl_tool ? 3 : 4) + step - 1);
        break;
    default:
        P("data: {\"error\":{\"message\":\"%s\",\"type\":\"server_error\",\"param\":null,"
          "\"code\":null}}\n\n",
          msg);
        break;
    }
    return rc;
}

/* ---- errors --------------------------------------------------------------- */

const char *tg_mock_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 529: return "Overloaded";
    default: return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
    }
}

int tg_mock_write_error(struct evbuffer *out, int anthropic, int status, const char *msg,
                        const char *request_id) {
    const char *type, *code = NULL;
    int rc = 0;
    if (msg == NULL) msg = tg_mock_reason(status);
    if (anthropic) {
        switch (status) {
        case 400: type = "invalid_request_error"; break;
        case 401: type = "authentication_error"; break;
        case 403: type = "permission_error"; break;
        case 404: type = "not_found_error"; break;
        case 413: type = "request_too_large"; break;
        case 429: type = "rate_limit_error"; break;
        case 529: type = "overloaded_error"; break;
        default: type = status >= 500 ? "api_error" : "invalid_request_error"; break;
        }
        P("{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":", type);
        rc |= tg_mock_json_str(out, msg, strlen(msg));
        P("},\"request_id\":\"%s\"}", request_id ? request_id : "");
        return rc;
    }
    switch (status) {
    case 401: type = "invalid_request_error"; code = "invalid_api_key"; break;
    case 404: type = "invalid_request_error"; code = "not_found"; break;
    case 429: type = "requests"; code = "rate_limit_exceeded"; break;
    case 503: type = "server_error"; code = "service_unavailable"; break;
    default: type = status >= 500 ? "server_error" : "invalid_request_error"; break;
    }
    P("{\"error\":{\"message\":");
    rc |= tg_mock_json_str(out, msg, strlen(msg));
    P(",\"type\":\"%s\",\"param\":null,\"code\":", type);
    if (code) P("\"%s\"}}", code);
    else P("null}}");
    return rc;
}
