#!/usr/bin/env bash
# ctest isa_isolation (x86-64 builds with the CPU kernel variants, csrc/cpu/isa.h): what lets the library run on
# any x86-64 CPU, read from the compiled objects.
#   1. the baseline objects (the baseline kernels, the dispatcher, the input checks, the bindings) hold no
#      instruction beyond x86-64: no VEX/EVEX (AVX, AVX-512, FMA, F16C) and no BMI/POPCNT/LZCNT/MOVBE;
#   2. no weak symbol of the avx2 / avx512 objects (an inline or template function the linker merges with the
#      other variants' copies) holds one either: whichever copy the linker keeps runs anywhere;
#   3. the avx512 objects do hold AVX-512 code (the region of isa.h took effect).
#
#   usage: check_isa_isolation.sh OBJDUMP BASELINE_OBJECTS... -- VARIANT_OBJECTS...  (.o files; others skipped)
set -euo pipefail
objdump=$1
shift
baseline=() variants=()
into=baseline
for arg in "$@"; do  # (CMake passes each target's objects as one ;-separated argument)
    if [ "$arg" = -- ]; then into=variants; continue; fi
    IFS=';' read -ra objs <<< "$arg"
    for o in "${objs[@]}"; do
        case $o in
            *.o) if [ $into = baseline ]; then baseline+=("$o"); else variants+=("$o"); fi ;;
        esac
    done
done
beyond='	(v[a-z][a-z0-9]*|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|movbe|popcnt|lzcnt) '
failures=0

# the (mangled) functions of an object that hold instructions beyond x86-64
beyond_baseline() {
    "$objdump" -d --no-show-raw-insn "$1" |
        awk -v re="$beyond" '/^[0-9a-f]+ <.*>:$/ { fn = substr($2, 2, length($2) - 3) } $0 ~ re && !seen[fn]++ { print fn }'
}

for obj in "${baseline[@]}"; do
    found=$(beyond_baseline "$obj" | tr '\n' ' ')
    if [ -n "$found" ]; then
        echo "FAIL: $obj (baseline) holds instructions beyond x86-64 in: $found"
        failures=$((failures + 1))
    else
        echo "ok: $obj: x86-64 only"
    fi
done

avx512_code=0
for obj in "${variants[@]}"; do
    mapfile -t weak < <(nm "$obj" | awk '$2 == "W" { print $3 }')
    found=$(comm -12 <(printf '%s\n' "${weak[@]}" | sort -u) <(beyond_baseline "$obj" | sort -u) | tr '\n' ' ')
    if [ -n "$found" ]; then
        echo "FAIL: $obj: weak (merged) symbols with instructions beyond x86-64: $found"
        failures=$((failures + 1))
    else
        echo "ok: $obj: ${#weak[@]} weak symbols, all x86-64 only"
    fi
    case $obj in
        *cpu_avx512*) if "$objdump" -d --no-show-raw-insn "$obj" | grep '%zmm' > /dev/null; then avx512_code=1; fi ;;
    esac
done
if printf '%s\n' "${variants[@]}" | grep -q cpu_avx512 && [ $avx512_code = 0 ]; then
    echo "FAIL: the avx512 objects hold no AVX-512 (zmm) code: the target region did not apply"
    failures=$((failures + 1))
fi
[ $failures -eq 0 ] && echo "all passed" || echo "$failures failure(s)"
exit $((failures > 0))
