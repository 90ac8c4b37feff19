"""tg_fuzz: one libFuzzer target and its corpus replay test.

tg_fuzz(name = "json_fuzz", srcs = ["json_fuzz.c"], deps = [...]) makes
  - `name`: the libFuzzer binary, tagged manual so the default gcc
    `bazel build //...` never builds it (gcc has no libFuzzer). Build it with
    `bazel build --config=fuzz //agent:json_fuzz` (clang-14, ASan, UBSan,
    -fsanitize=fuzzer-no-link for every library, -fsanitize=fuzzer here).
  - `name + "_replay"`: an ordinary cc_test (gcc, and ASan+UBSan under
    --config=asan) that feeds every file of fuzz_corpus/<corpus>/ to the same
    LLVMFuzzerTestOneInput, so an input that crashed once stays fixed.
The corpus directory defaults to the name without "_fuzz".
"""

def tg_fuzz(name, srcs, deps = [], corpus = None, linkopts = []):
    corpus = corpus or name.replace("_fuzz", "")
    cdir = "fuzz_corpus/" + corpus
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps + ["//tests/fuzz"],
        linkopts = linkopts + ["-fsanitize=fuzzer"],
        tags = ["manual", "fuzz"],
    )
    native.cc_test(
        name = name + "_replay",
        srcs = srcs,
        deps = deps + ["//tests/fuzz", "//tests/fuzz:replay"],
        linkopts = linkopts,
        data = native.glob([cdir + "/**"]),
        args = [native.package_name() + "/" + cdir],
        size = "small",
    )
