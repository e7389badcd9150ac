#!/usr/bin/env bash
# A fuzz campaign: every cargo-fuzz target (or those given) for a time and/or a number of
# executions, with parallel jobs sharing one corpus; then the corpus is merged and minimized
# into fuzz/corpus/<target> (the committed seeds kept), and a table of executions, speed,
# coverage, corpus size and findings is printed and written to a Markdown file.
#
# Usage: fuzz/campaign.sh [--seconds N] [--runs N] [--jobs N] [--max-len N] [--out FILE] [TARGET…]
#   --seconds N  most time per target (default 600)
#   --runs N     stop a target after N executions in all (default: no limit)
#   --jobs N     fuzzing processes per target, sharing the corpus (default 1)
#   --max-len N  longest input libFuzzer makes (default: the longest in the corpus, at least
#                4096); the committed seeds include 50 KB inputs, which slow the decoders down
#   --timeout N  seconds one input may take before libFuzzer calls it a hang (default 10)
#   --out FILE   the results table (default fuzz/campaign-results.md)
# Example (this repository's campaign): nice -n 19 fuzz/campaign.sh --runs 10000000 --seconds 3600
# Run it on an otherwise idle machine: libFuzzer's -timeout is wall-clock time, so a starved
# process reports false timeouts (replay one with `cargo fuzz run TARGET FILE`; on a shared
# machine raise --timeout).
# Crashes, timeouts and out-of-memory inputs land in fuzz/artifacts/<target>/; a target with a
# finding makes the script exit non-zero after every target ran.
set -euo pipefail
cd "$(dirname "$0")"

seconds=600 runs=0 jobs=1 max_len=0 timeout=10 out=campaign-results.md targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --max-len) max_len=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

if rustup toolchain list | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  # cargo-fuzz needs -Z flags; without a nightly toolchain let stable accept them.
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
"${fuzz[@]}" build >/dev/null

# libFuzzer's final statistics and banner lines, from a log.
last_stat() { grep -h "stat::$1:" "${@:2}" | awk '{s += $2} END {print s + 0}'; }
coverage() { grep -hoE "INITED cov: [0-9]+ ft: [0-9]+" "$1" | tail -n 1 | awk '{print $3, $5}'; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rows=() found=0
for t in "${targets[@]}"; do
  corpus=corpus/$t artifacts=artifacts/$t
  mkdir -p "$corpus" "$artifacts" "$work/$t"
  before_files=$(find "$corpus" -type f | wc -l)
  before_kib=$(du -sk --apparent-size "$corpus" | cut -f1)
  cp -r "$corpus/." "$work/$t/"
  echo "--- $t: $jobs job(s), ${seconds}s, runs ${runs:-unlimited}"
  start=$(date +%s)
  pids=()
  for j in $(seq 1 "$jobs"); do
    args=(-max_total_time="$seconds" -print_final_stats=1 -reload=1
      -artifact_prefix="$artifacts/" -timeout="$timeout" -rss_limit_mb=2048)
    [ "$runs" -gt 0 ] && args+=(-runs=$(( (runs + jobs - 1) / jobs )))
    [ "$max_len" -gt 0 ] && args+=(-max_len="$max_len")
    "${fuzz[@]}" run "$t" "$work/$t" -- "${args[@]}" >"$work/$t.job$j.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  elapsed=$(( $(date +%s) - start ))
  execs=$(last_stat number_of_executed_units "$work/$t".job*.log)
  # Merge: the smallest set of inputs with the coverage of all of them, committed seeds kept.
  merged=$work/$t.merged
  mkdir -p "$merged"
  "${fuzz[@]}" run "$t" "$merged" "$work/$t" -- -merge=1 >"$work/$t.merge.log" 2>&1
  find "$corpus" -type f ! -name 'seed-*' -delete
  cp "$merged"/* "$corpus"/ 2>/dev/null || true
  "${fuzz[@]}" run "$t" "$corpus" -- -runs=0 >"$work/$t.cov.log" 2>&1 || true
  read -r cov ft < <(coverage "$work/$t.cov.log" || echo "? ?")
  after_files=$(find "$corpus" -type f | wc -l)
  after_kib=$(du -sk --apparent-size "$corpus" | cut -f1)
  findings=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)
  if [ "$status" -ne 0 ] || [ "$findings" -gt 0 ]; then
    found=1
    grep -hE "ERROR|panicked|SUMMARY" "$work/$t".job*.log | head -n 5 || true
  fi
  rate=$(( execs / (elapsed > 0 ? elapsed : 1) ))
  rows+=("| $t | $execs | $rate | ${elapsed} s | $cov | $ft | $before_files ($before_kib KiB) | $after_files ($after_kib KiB) | $findings |")
  echo "${rows[-1]}"
done

{
  echo "Fuzz campaign of $(date -u +%Y-%m-%d), \`fuzz/campaign.sh --seconds $seconds --runs $runs --jobs $jobs\`"
  echo "on $(nproc) cores ($(uname -m)); coverage is libFuzzer's over the merged corpus."
  echo
  echo "| target | executions | exec/s | time | coverage (cov) | features (ft) | corpus before | corpus after | findings |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$out"
echo
cat "$out"
exit "$found"
