#!/usr/bin/env bash
# Check the Promela models of docs/parking.md with SPIN: `make model`.
#
# Every run below is an exhaustive search (pan -DSAFETY: assertions and
# invalid end states) of one model, one variant, one set of bounds:
#
#   correct   the protocol with its fixes (model/README.md): must find nothing
#   DOC_*     a part of the protocol exactly as docs/parking.md words it,
#             BROKEN_* a deliberately broken one: must find a violation
#
# One line per run: model, variant, bounds, states explored, time, result.
# Exits 1 if a correct run finds a violation or cannot finish, or if a
# DOC_/BROKEN_ variant passes.  Everything is built in a temporary directory
# that is removed afterwards.
#
#   MODEL_JOBS=2      runs at once (default 2; each correct run needs < 3 GB)
#   MODEL_MEMLIM=8000 MB a single search may use before it gives up (a failure)
#   MODEL_TRAILS=1    also print the counterexample of each expected violation
#   MODEL_ONLY=regex  only the runs whose line matches (e.g. MODEL_ONLY=failed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jobs="${MODEL_JOBS:-2}"
memlim="${MODEL_MEMLIM:-8000}"
build="$(mktemp -d "${TMPDIR:-/tmp}/s2sq-model.XXXXXX")"
trap 'rm -rf "$build"' EXIT

# name | model | variant | bounds (PML_* environment) | expect (pass/fail)
# Longest first: with two at a time the slow ones run side by side.
runs="$(cat <<'EOF'
p1|parking.pml|correct|NI=2 MAXLOSS=2 MAXCRASH=1 MAXFAIL=2 MAXADM=1|pass
f5|failed.pml|correct|MAXLOSS=1 MAXCRASH=1 MAXFF=1 MAXTRANS=0 MAXADM=1|pass
f1|failed.pml|correct|MAXLOSS=2 MAXCRASH=0 MAXFF=2 MAXTRANS=1 MAXADM=2|pass
f2|failed.pml|correct|MAXLOSS=0 MAXCRASH=1 MAXFF=1 MAXTRANS=0 MAXADM=2|pass
f4|failed.pml|correct|MAXLOSS=0 MAXCRASH=1 MAXFF=1 MAXTRANS=1 MAXADM=1|pass
f3|failed.pml|correct|MAXLOSS=0 MAXCRASH=1 MAXFF=2 MAXTRANS=0 MAXADM=1|pass
f6|failed.pml|correct|MAXLOSS=0 MAXCRASH=1 MAXFF=1 MAXTRANS=0 MAXADM=1 MAXREDRIVE=2|pass
p6|parking.pml|correct|NI=2 MAXLOSS=2 MAXCRASH=1 MAXFAIL=1 MAXADM=2|pass
p4|parking.pml|correct|NI=2 MAXOPS=2 MAXLOSS=1 MAXCRASH=0 MAXFAIL=2 MAXADM=2|pass
p3|parking.pml|correct|NI=1 MAXOPS=3 FIRSTFAIL=0 MAXFAIL=0 MAXADM=0 MAXLOSS=0 MAXCRASH=1|pass
p2|parking.pml|correct|NI=3 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|pass
p5|parking.pml|correct|NI=2 MAXOPS=3 FIRSTFAIL=0 MAXFAIL=0 MAXADM=0 MAXLOSS=1 MAXCRASH=0|pass
d1|parking.pml|DOC_CLAIM|NI=2 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|fail
d2|parking.pml|DOC_STEP2|NI=2 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|fail
d3|parking.pml|DOC_STEP4|NI=2 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|fail
d8|parking.pml|DOC_MINE|NI=2 MAXLOSS=2 MAXCRASH=0 FIRSTFAIL=0 MAXFAIL=0 MAXADM=0|fail
d4|parking.pml|DOC_OPS|NI=1 MAXOPS=3 FIRSTFAIL=0 MAXFAIL=0 MAXADM=0 MAXLOSS=0 MAXCRASH=1|fail
b1|parking.pml|BROKEN_SKIP|NI=2 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|fail
b2|parking.pml|BROKEN_FENCE|NI=2 MAXLOSS=1 MAXCRASH=1 MAXFAIL=2 MAXADM=2|fail
d5|failed.pml|DOC_NBCLAIM|MAXLOSS=1 MAXCRASH=0 MAXFF=1 MAXTRANS=1 MAXADM=1|fail
d6|failed.pml|DOC_NBGEN|MAXLOSS=1 MAXCRASH=0 MAXFF=1 MAXTRANS=0 MAXADM=1|fail
d7|failed.pml|DOC_REDRIVE|MAXLOSS=0 MAXCRASH=1 MAXFF=1 MAXTRANS=0 MAXADM=1|fail
EOF
)"
if [[ -n "${MODEL_ONLY:-}" ]]; then
    runs="$(grep -E -- "$MODEL_ONLY" <<<"$runs" || true)"
fi

# Build one verifier per model and variant.  All searches are exhaustive and
# lossless: -DSAFETY (assertions, invalid end states), -DNOREDUCE (no partial
# order reduction: with all state global it would reduce nothing, and the
# Settle process uses `timeout`), no hash compaction, no bitstate.  The
# correct models are compiled optimised, with the models' own symmetry
# reduction (the two replicas are interchangeable) and -DCOLLAPSE (lossless
# state compression), and serve every bound set (the bounds are read from
# the environment at start).  A variant only has to reach its first
# violation: compiled quickly, searched breadth first (the shortest
# counterexample), without symmetry reduction so that the replicas keep
# their names in the trail.
build_one() {  # dir model flags cflags
    mkdir -p "$build/$1"
    cp "$here/$2" "$build/$1/"
    (cd "$build/$1" && spin -a $3 "$2" >/dev/null && gcc -w $4 -DSAFETY -DMEMLIM="$memlim" $3 -o pan pan.c) \
        || { echo "model: cannot build $2 ($3)" >&2; return 1; }
}
export -f build_one
export build here memlim

targets="$(awk -F'|' '{print $2 "|" $3}' <<<"$runs" | sort -u)"
echo "model: building $(wc -l <<<"$targets") verifiers (spin $(spin -V | awk '{print $3}'), gcc)"
while IFS='|' read -r model variant; do
    name="${model%.pml}-$variant"
    if [[ $variant == correct ]]; then
        printf '%s\n' "$name|$model||-O2 -DNOREDUCE -DCOLLAPSE"
    else
        printf '%s\n' "$name|$model|-D$variant -DNOSYM|-O0 -DNOREDUCE -DBFS"
    fi
done <<<"$targets" | xargs -P "$jobs" -I{} bash -c 'IFS="|" read -r n m f c <<<"{}"; build_one "$n" "$m" "$f" "$c"'

# One search.  Writes its summary line, and the trail if there is one.
run_one() {  # name model variant bounds expect
    local name=$1 model=$2 variant=$3 bounds=$4 expect=$5
    local dir="$build/run-$name" bin="$build/${model%.pml}-$variant/pan"
    mkdir -p "$dir" && cp "$bin" "$dir/pan" && cd "$dir"
    local envs=() b
    for b in $bounds; do envs+=("PML_$b"); done
    local start end out states errors secs inv result ok
    start=$(date +%s.%N)
    out="$(env "${envs[@]}" ./pan -m20000 -w25 2>&1 || true)"
    end=$(date +%s.%N)
    states="$(awk '/states, stored/ {print $1; exit}' <<<"$out")"
    errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' <<<"$out" | head -1)"
    secs="$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')"
    inv="$(grep -m1 -oE 'assertion violated.*' <<<"$out" | grep -oE '\b(INV[0-9a-z]+|GONE|OPS|CAS|SETTLE|BOUND)\b' | head -1 || true)"
    if grep -qE 'reached -DMEMLIM|max search depth too small|out of memory' <<<"$out"; then
        result="INCOMPLETE (search did not finish)"; ok=0
    elif [[ -z $errors ]]; then
        result="NO RESULT (pan said: $(tail -3 <<<"$out" | tr '\n' ' '))"; ok=0
    elif [[ $errors -eq 0 ]]; then
        if [[ $expect == pass ]]; then result="ok: no violation"; ok=1
        else result="UNEXPECTED: no violation (this variant must fail)"; ok=0; fi
    else
        if [[ $expect == fail ]]; then result="ok: violation found as expected (${inv:-assertion/end state})"; ok=1
        else result="VIOLATION (${inv:-assertion/end state})"; ok=0; fi
    fi
    printf '%-3s %-12s %-13s %-62s %10s states %6ss  %s\n' "$name" "$model" "$variant" "$bounds" "${states:-?}" "$secs" "$result" >"$dir/summary"
    echo "$ok" >"$dir/ok"
    echo "${states:-0}" >"$dir/states"
    if [[ $errors != 0 && -n $errors ]]; then
        env "${envs[@]}" ./pan -r 2>&1 | grep '^@ ' >"$dir/trail" || true
        grep -m1 -E 'assertion violated|invalid end state' <<<"$out" | sed 's/^pan:[0-9]*: */=> /' >>"$dir/trail" || true
        [[ $variant == correct ]] && echo "  (symmetry reduction: r0 and r1 may swap names in this trail)" >>"$dir/trail"
    fi
    cat "$dir/summary"
}
export -f run_one

echo "model: $(wc -l <<<"$runs") exhaustive searches, $jobs at a time"
printf '%-3s %-12s %-13s %-62s %17s %6s   %s\n' run model variant "bounds (PML_*)" "" time result
tr '|' ' ' <<<"$runs" | while read -r name model variant rest; do
    expect="${rest##* }"; bounds="${rest% *}"
    printf '%s\n' "$name|$model|$variant|$bounds|$expect"
done | xargs -P "$jobs" -I{} bash -c 'IFS="|" read -r a b c d e <<<"{}"; run_one "$a" "$b" "$c" "$d" "$e"' >/dev/null

# The summary, in the order above, then the trails wanted.
status=0
total=0
while IFS='|' read -r name model variant bounds expect; do
    dir="$build/run-$name"
    cat "$dir/summary"
    total=$((total + $(cat "$dir/states")))
    if [[ $(cat "$dir/ok") != 1 ]]; then
        status=1
        if [[ -s $dir/trail ]]; then sed 's/^/    /' "$dir/trail"; fi
    elif [[ ${MODEL_TRAILS:-0} == 1 && -s $dir/trail ]]; then
        sed 's/^/    /' "$dir/trail"
    fi
done <<<"$runs"
if [[ $status -eq 0 ]]; then
    echo "model: all $(wc -l <<<"$runs") runs as expected ($total states in all)"
else
    echo "model: FAILED (see the lines above)" >&2
fi
exit $status
