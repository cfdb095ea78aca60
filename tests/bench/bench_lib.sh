# Helpers shared by tests/bench/run.sh, scale.sh and multihost.sh (sourced).

# "16M" -> 16777216, "512K" -> 524288, "1000" -> 1000.
elements() {
  case "$1" in
    *[Mm]) echo $(( ${1%?} << 20 )) ;;
    *[Kk]) echo $(( ${1%?} << 10 )) ;;
    *) echo $(( $1 )) ;;
  esac
}
label() {  # 16777216 -> 16M
  local n="$1"
  if (( n % (1 << 20) == 0 )); then echo "$((n >> 20))M"; elif (( n % 1024 == 0 )); then echo "$((n >> 10))K"; else echo "$n"; fi
}

# write_job FILE P M STEPS [JOB_ID]: one tensor of P f32 parameters, M
# workers, STEPS steps, Adam and the cosine schedule like the main job.
write_job() {
  cat >"$1" <<JOB
job_id: "${5:-bench}"
model { tensors { name: "w" shape: [$2] } }
optimizer { kind: KIND_ADAM lr: 0.002 adam { beta1: 0.9 beta2: 0.999 eps: 1e-8 } }
schedule { kind: KIND_COSINE }
window { num_workers: $3 micro_batches: 1 micro_batch_size: 1 }
total_steps: $4
seed: 42
JOB
}

mem_available_mb() { awk '$1 == "MemAvailable:" { print int($2 / 1024) }' /proc/meminfo; }
# fits NEEDED_MB: the estimate stays under 80% of what is available now.
fits() { (( $1 < $(mem_available_mb) * 8 / 10 )); }
