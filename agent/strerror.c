/* strerror.c: names of the agent's error codes (a switch without default,
 * so the compiler flags a code with no message). */
#include "agent/tg_agent.h"

const char *tg_agent_strerror(int code)
{
    switch ((enum tg_agent_error)code) {
    case TG_AGENT_OK: return "success";
    case TG_AGENT_EJSON: return "malformed JSON";
    case TG_AGENT_EREQUEST: return "invalid request";
    case TG_AGENT_ENOMEM: return "out of memory";
    case TG_AGENT_ETOOBIG: return "too large";
    case TG_AGENT_ECONFIG: return "bad configuration snapshot";
    case TG_AGENT_ESYS: return "system call failed";
    case TG_AGENT_EUSAGE: return "bad command line";
    case TG_AGENT_EFULL: return "usage outbox full";
    case TG_AGENT_ERANGE: return "number out of range";
    case TG_AGENT_ELAST: break;
    }
    return "unknown error";
}
