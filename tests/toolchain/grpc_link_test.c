/* Toolchain smoke test: the system gRPC core and cmocka link, initialise and
 * shut down cleanly under ASan/UBSan. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include <grpc/grpc.h>

static void test_grpc_init_shutdown(void **state)
{
    (void)state;
    grpc_init();
    assert_true(grpc_is_initialized());
    assert_int_equal(strncmp(grpc_version_string(), "29.", 3), 0); /* core 29 = gRPC 1.51 */
    grpc_shutdown_blocking();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_init_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
