/* agentsvc.c: AgentService on the control plane (Enroll, Sync, ReportUsage,
 * Lease) and the agent side's start/stop. TEMPORARY minimal version so the
 * admin side links; replaced by the real service in this session. */
#include "controlplane/cp.h"

#include "tollgate/v1/admin.pb-c.h"

int tg_cp_agentsvc_register(tg_cp_t *cp, char *err, size_t errlen)
{
    (void)cp;
    (void)err;
    (void)errlen;
    return 0;
}

int tg_cp_agent_side_start(tg_cp_t *cp, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    atomic_store(&cp->cp_is_leader, 1);
    return 0;
}

void tg_cp_agent_side_stop(tg_cp_t *cp)
{
    atomic_store(&cp->cp_is_leader, 0);
}

int tg_cp_balance_change(tg_cp_t *cp, const struct Tollgate__V1__BalanceChangeRequest *req, int kind,
                         const struct Tollgate__V1__Actor *actor, tg_buf_t *reply, char *err,
                         size_t errlen)
{
    (void)cp;
    (void)req;
    (void)kind;
    (void)actor;
    (void)reply;
    tg_errf(err, errlen, -1, "balance changes are not implemented yet");
    return TG_RPC_CODE_UNAVAILABLE;
}

int tg_cp_checkpoint(tg_cp_t *cp, tg_buf_t *reply, char *err, size_t errlen)
{
    (void)cp;
    (void)reply;
    tg_errf(err, errlen, -1, "checkpoints are not implemented yet");
    return TG_RPC_CODE_UNAVAILABLE;
}
