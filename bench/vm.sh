# shellcheck shell=bash
# bench/vm.sh - keeps a virtual machine's memory balloon out of the figures.
# Source it, don't run it: bench/run.sh, bench/autocost.sh and bench/get.sh do.
#
# A guest with free page reporting (virtio-balloon) hands memory it frees back
# to its host, and filling such pages again later costs several times a normal
# page-cache write: on the 2-vCPU VM of the lab notebook, 1 GiB files written
# into tmpfs one after another ran at 0.5-0.9 GB/s where they ran at 2.9 GB/s
# once the memory was backed again. Which copy of a benchmark lands on such
# pages depends on what ran and was deleted before it, not on the tool, and a
# tool that is busy on the CPU anyway (encryption) loses most. So, for the run:
#   bt_vm_quiet        stops the reporting, where this kernel lets root set
#                      page_reporting_order above the largest page order, then
#                      writes and deletes as much as the free memory in
#                      /dev/shm (but 1 GiB): the page cache of the copies is
#                      taken from free pages, any of which may have been
#                      handed back before, so every one is touched once;
#   bt_vm_restore      puts the order back (run it from the EXIT trap).
# VM_REPORTING=keep leaves the machine alone. BT_VM_NOTE says what was done,
# for the summary. Nothing happens on bare metal or without root.

BT_VM_ORDER_FILE=${BT_VM_ORDER_FILE:-/sys/module/page_reporting/parameters/page_reporting_order}
BT_VM_ORDER_SAVED=""
BT_VM_NOTE="VM free page reporting: not present"

bt_vm_quiet() {
  local shm n t0 t1
  if [ "${VM_REPORTING:-pause}" = keep ]; then
    [ -e "$BT_VM_ORDER_FILE" ] && BT_VM_NOTE="VM free page reporting: left on (VM_REPORTING=keep)"
    return 0
  fi
  [ -e "$BT_VM_ORDER_FILE" ] || return 0
  BT_VM_ORDER_SAVED=$(cat "$BT_VM_ORDER_FILE" 2>/dev/null) || BT_VM_ORDER_SAVED=""
  # Orders above the largest (10 on x86-64) are never reported.
  if [ -z "$BT_VM_ORDER_SAVED" ] || ! { echo 11 >"$BT_VM_ORDER_FILE"; } 2>/dev/null; then
    BT_VM_ORDER_SAVED=""
    BT_VM_NOTE="VM free page reporting: on (cannot change $BT_VM_ORDER_FILE; run as root to pause it)"
    return 0
  fi
  n=$(awk '/^MemFree:/ {printf "%.0f\n", $2 * 1024 - 1073741824}' /proc/meminfo)
  shm=$(df -B1 --output=avail /dev/shm 2>/dev/null | tail -n 1)
  [ -n "$shm" ] && [ "$n" -gt $((shm - (256 << 20))) ] && n=$((shm - (256 << 20)))
  if [ "$n" -gt 0 ]; then
    t0=$(date +%s%N)
    dd if=/dev/zero of=/dev/shm/bt-vm-warm.$$ bs=1M count=$((n >> 20)) status=none 2>/dev/null || true
    rm -f /dev/shm/bt-vm-warm.$$
    t1=$(date +%s%N)
    BT_VM_NOTE="VM free page reporting: paused for the run (page_reporting_order $BT_VM_ORDER_SAVED -> 11, restored at the end); $((n >> 20)) MiB touched first, in $(( (t1 - t0) / 1000000 )) ms"
  else
    BT_VM_NOTE="VM free page reporting: paused for the run (page_reporting_order $BT_VM_ORDER_SAVED -> 11); no memory to spare for warming"
  fi
}

bt_vm_restore() {
  [ -n "$BT_VM_ORDER_SAVED" ] || return 0
  echo "$BT_VM_ORDER_SAVED" >"$BT_VM_ORDER_FILE" 2>/dev/null || true
  BT_VM_ORDER_SAVED=""
}
