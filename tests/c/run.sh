#!/usr/bin/env bash
# tests/c/run.sh: builds libbigtransfer (the ffi crate), compiles the C test
# tests/c/test_ffi.c and the example ffi/examples/send.c against
# include/bigtransfer.h with `cc -Wall -Wextra -Werror`, links the test once
# against the static library and once against the shared one (with an rpath),
# runs both, then runs both under valgrind (leak check) if valgrind is
# installed, else a build with AddressSanitizer; it says which it used.
#
# Everything it makes is under a fresh temporary directory, removed at the
# end (only cargo's build cache goes to TARGET); the test talks to
# 127.0.0.1 only; every step has a time limit.
# Usage: bash tests/c/run.sh [--debug]   (default: a release build)
# BT_FORCE_ASAN=1 uses AddressSanitizer even where valgrind is installed.
# BT_KEEP_WORK=1 keeps the temporary directory (logs, binaries) for a look.
# Its last line is "N passed, N failed"; it exits non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROFILE=release
[[ "${1:-}" == "--debug" ]] && PROFILE=debug
CC="${CC:-cc}"
CFLAGS=(-std=gnu11 -Wall -Wextra -Werror -g -O1 -I"$ROOT/include")
# What the static library needs from the system (rustc --print native-static-libs).
NATIVE_LIBS=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bt-c-test.XXXXXX")"
cleanup() { [[ -n "${BT_KEEP_WORK:-}" ]] || rm -rf -- "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/static" "$WORK/shared" "$WORK/bin" "$WORK/tmp"
# The client pins server keys (TLS): in a file of this run, not the user's.
export BIGTRANSFER_KNOWN_HOSTS="$WORK/known_hosts"

passed=0
failed=0
step() { # step NAME COMMAND...: runs a step, counts it, shows its output on failure
    local name="$1"
    shift
    if "$@" >"$WORK/step.log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name"
        sed 's/^/     | /' "$WORK/step.log" | tail -n 60
    fi
}
finish() {
    echo "$passed passed, $failed failed"
    [[ $failed -eq 0 ]]
    exit $?
}

# -- build the library -------------------------------------------------------
echo "== building bigtransfer-ffi ($PROFILE)"
# The workspace's target directory, so that the core built for the release
# binary is reused (the Python crate's cdylib is libbigtransfer_python.so:
# no clash with libbigtransfer.so). The paths come from cargo's own output.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo_args=(build -p bigtransfer-ffi --lib --manifest-path "$ROOT/Cargo.toml" --message-format=json-render-diagnostics)
[[ $PROFILE == release ]] && cargo_args+=(--release)
if ! timeout 1200 cargo "${cargo_args[@]}" >"$WORK/cargo.json"; then
    echo "FAIL cargo build -p bigtransfer-ffi"
    failed=1
    finish
fi
# Take the artifacts' paths from cargo itself, and copy them away at once.
artifact() {
    grep '"reason":"compiler-artifact"' "$WORK/cargo.json" | grep 'bigtransfer-ffi' |
        grep -o "\"[^\"]*/$1\"" | tr -d '"' | head -n 1
}
STATIC_LIB="$(artifact libbigtransfer.a)"
SHARED_LIB="$(artifact libbigtransfer.so)"
if [[ ! -f "$STATIC_LIB" || ! -f "$SHARED_LIB" ]]; then
    echo "FAIL cannot find libbigtransfer.a / libbigtransfer.so in cargo's output"
    failed=1
    finish
fi
cp "$STATIC_LIB" "$WORK/static/"
cp "$SHARED_LIB" "$WORK/shared/"
echo "   static: $STATIC_LIB"
echo "   shared: $SHARED_LIB"

# -- compile -------------------------------------------------------------------
TEST_SRC="$ROOT/tests/c/test_ffi.c"
EXAMPLE_SRC="$ROOT/ffi/examples/send.c"
step "compile test_ffi.c, static library" \
    "$CC" "${CFLAGS[@]}" "$TEST_SRC" "$WORK/static/libbigtransfer.a" "${NATIVE_LIBS[@]}" -o "$WORK/bin/test_static"
step "compile test_ffi.c, shared library (rpath)" \
    "$CC" "${CFLAGS[@]}" "$TEST_SRC" -L"$WORK/shared" -lbigtransfer -Wl,-rpath,"$WORK/shared" -lpthread \
    -o "$WORK/bin/test_shared"
step "compile examples/send.c, static library" \
    "$CC" "${CFLAGS[@]}" "$EXAMPLE_SRC" "$WORK/static/libbigtransfer.a" "${NATIVE_LIBS[@]}" -o "$WORK/bin/send"
step "compile examples/send.c, shared library (rpath)" \
    "$CC" "${CFLAGS[@]}" "$EXAMPLE_SRC" -L"$WORK/shared" -lbigtransfer -Wl,-rpath,"$WORK/shared" \
    -o "$WORK/bin/send_shared"
printf '#include "bigtransfer.h"\nint main(void) { return bt_version() == 0; }\n' >"$WORK/header_only.c"
step "the header alone compiles as C99 with -pedantic" \
    "$CC" -std=c99 -pedantic -Wall -Wextra -Werror -I"$ROOT/include" -c "$WORK/header_only.c" -o "$WORK/h.o"
if command -v c++ >/dev/null 2>&1; then
    step "the header compiles as C++" \
        c++ -std=c++11 -Wall -Wextra -Werror -I"$ROOT/include" -x c++ -c "$WORK/header_only.c" -o "$WORK/hxx.o"
fi
[[ $failed -eq 0 ]] || finish

linked_dynamically() { readelf -d "$WORK/bin/test_shared" | grep -q 'NEEDED.*libbigtransfer\.so'; }
linked_statically() { ! readelf -d "$WORK/bin/test_static" | grep -q 'libbigtransfer'; }
step "test_shared needs libbigtransfer.so" linked_dynamically
exports_header() { # every function the header declares is exported by the shared library
    local missing=0 name
    for name in $(grep -oE '\bbt_[a-z0-9_]+\(' "$ROOT/include/bigtransfer.h" | tr -d '(' | sort -u); do
        nm -D --defined-only "$WORK/shared/libbigtransfer.so" | grep -qE " T $name\$" ||
            { echo "not exported: $name"; missing=1; }
    done
    return $missing
}
step "libbigtransfer.so exports every function of the header" exports_header
step "test_static has the library built in" linked_statically

# -- the example: usage and error exits ----------------------------------------
expect_exit() { # expect_exit CODE COMMAND...
    local want="$1" got=0
    shift
    timeout 60 "$@" || got=$?
    echo "exit status $got (want $want)"
    [[ $got -eq $want ]]
}
step "send without arguments exits 2 (usage)" expect_exit 2 "$WORK/bin/send"
step "send with a bad port exits 2" expect_exit 2 "$WORK/bin/send" 127.0.0.1 notaport /dev/null
step "send of a missing file exits 1" expect_exit 1 "$WORK/bin/send_shared" 127.0.0.1 9 "$WORK/missing"
expect_message() { # expect_message TEXT COMMAND...: fails unless stderr has TEXT
    local want="$1"
    shift
    timeout 60 "$@" 2>"$WORK/send.err" || true
    cat "$WORK/send.err"
    grep -qF -- "$want" "$WORK/send.err"
}
step "send of a missing file prints the reason" \
    expect_message "send: source-file: cannot open $WORK/missing" "$WORK/bin/send" 127.0.0.1 9 "$WORK/missing"

# -- run the test ----------------------------------------------------------------
export TMPDIR="$WORK/tmp"
run_test() { # run_test LABEL COMMAND...: runs the C test, shows its output
    local label="$1" rc=0 last
    shift
    echo "== $label"
    timeout 900 "$@" >"$WORK/run.log" 2>&1 || rc=$?
    sed 's/^/   /' "$WORK/run.log"
    last="$(tail -n 1 "$WORK/run.log")"
    if [[ $rc -eq 0 && "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
        passed=$((passed + 1))
        echo "ok   $label ($last)"
    else
        failed=$((failed + 1))
        echo "FAIL $label (exit status $rc; last line: ${last:-none})"
    fi
}
run_test "test_ffi, static library" "$WORK/bin/test_static"
run_test "test_ffi, shared library" "$WORK/bin/test_shared"

if [[ -z "${BT_FORCE_ASAN:-}" ]] && command -v valgrind >/dev/null 2>&1; then
    echo "== memory checker: valgrind ($(valgrind --version))"
    for kind in static shared; do
        run_test "test_ffi under valgrind ($kind library)" \
            valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible \
            --suppressions="$(dirname "${BASH_SOURCE[0]}")/valgrind.supp" \
            --log-file="$WORK/valgrind-$kind.log" "$WORK/bin/test_$kind"
        echo "   valgrind ($kind):"
        grep -E 'ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|All heap blocks' \
            "$WORK/valgrind-$kind.log" | sed 's/^==[0-9]*== */     /'
    done
else
    echo "== memory checker: AddressSanitizer (valgrind is not installed, or BT_FORCE_ASAN is set)"
    if "$CC" "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer "$TEST_SRC" \
        "$WORK/static/libbigtransfer.a" "${NATIVE_LIBS[@]}" -o "$WORK/bin/test_asan" 2>"$WORK/asan.log"; then
        ASAN_OPTIONS=detect_leaks=1 run_test "test_ffi with AddressSanitizer (static library)" "$WORK/bin/test_asan"
    else
        failed=$((failed + 1))
        echo "FAIL compile test_ffi.c with -fsanitize=address"
        sed 's/^/     | /' "$WORK/asan.log"
    fi
fi

finish
