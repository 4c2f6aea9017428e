#!/bin/bash
# Runs inside the emulated host's dom0 (from /sbin/xeninit): the scenarios
# listed in /mnt/host/scenarios, one per line:
#   RESULT_NAME GUEST_OPTS... -- XL_MIGRATE_ARGS...
# GUEST_OPTS are kernel command line words for the guest (memtest_mib=64
# memtest_syscalls=1 balloon=1 workload=stress stress_mib=M tmpfs_mib=M)
# and words for this script: settle=SECS, guest=hvm, evict=per-page,
# load=per-page, scan=stop, window=SIZE|off (the push window), lane=off (fault
# replies in-band), batch=N (pages per pushed record), hold=SECS|on (the
# push's wait for the guest's resumption; default: none), bw_malformed=RATE
# (before the migration, `xl migrate --postcopy --max-bandwidth=RATE` with
# a malformed RATE must fail at once: bwcap_refused), early=on|off (the
# destination pages the prescan's pfns out before the stop), nice=N|off (the
# helpers' fault threads' nice value), read=per-call (no
# kept source mappings), tunnel=1 (xl's pipe through
# xl-postcopy tunnel on 127.0.0.1:7000, no drops),
# link_drops=N, link_outage=SECS, soak=N (N migrations back and forth in
# one boot, stopping at the first guest death), kill_dest=1 (crash the
# destination guest mid-post-copy), names=1 (mid-post-copy: the guest's
# name on the destination, the source copy's, a refused xl destroy),
# truncated=1 (no migration: receivers fed truncated and broken streams,
# truncated_checks), recover=1 (xl's stream, through xl-postcopy tunnel
# on 127.0.0.1:7002, dies mid-post-copy: both tunnel ends are killed, and
# `xl-postcopy recover` on each end joins the helpers again over a new
# connection; recover_pipe), pager_kill=1 (the destination's pager,
# libxl-save-helper --restore-domain under xl migrate-receive, killed
# with SIGKILL mid-post-copy; `xl-postcopy recover` on each end starts a
# replacement pager and joins it to the source; pager_kill), switch_after=S (`xl-postcopy switch`
# on the source S s into the migration), mem=MIB (this scenario's guest memory
# instead of GUEST_MEM), seq=MODE,MODE,... (the same guest migrated once
# per MODE in one boot, like the soak: precopy, hybrid or postcopy, each
# after SEED_SETTLE (20) s of undisturbed work and with xl's stream counted
# by a dd in front of the receiver: stream-I.txt).  Each scenario's logs, a meta.env and
# (per migration) migrations.env go to /mnt/host/results/RESULT_NAME/;
# domstates (dom0's poller of every domain's paused/shutdown state) writes
# domstates.log there; the host turns them into result.json.
# Two hosts (HOST_ROLE=a|b in /mnt/host/env): both set up xenbr0, /etc/hosts,
# sshd and the shared storage (host_setup); host B serves (peer_main) until
# host A, which runs the scenarios, is done.  Scenario words: peer=ssh
# (xl migrate <dom> hostb), peer=tunnel (through xl-postcopy tunnel
# between the hosts), peer=ping (no guest: the dom0s reach each other),
# disk_mib=M (a PV disk on the shared storage, or in dom0's own storage
# with one host, verified by the guest's iotest; disk_pool_mib=P: its
# reads go into a pool of P MiB the CPU has not touched, see iotest.c),
# net=1 (a PV NIC on xenbr0, a verified stream to host B's dom0).
# Host A reaches host B over ssh: `autorun.sh prepare|collect|cleanup NAME`
# there.  The body sits in { } so that editing this file
# during a run cannot break the run.
{
export PATH=/usr/lib/xen-4.17/bin:/usr/lib/xen-4.20/bin:$PATH
# GUEST_MEM, MIGRATE_TIMEOUT, STALL_KILL from the host
[ -r /mnt/host/env ] && . /mnt/host/env
ts() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%d", (b-a)*1000}'; }
# count_in FILE REGEX: matching lines
count_in() { local c; c=$(grep -ac -e "$2" "$1" 2>/dev/null); echo "${c:-0}"; }
waitfor() { # waitfor FILE REGEX N TIMEOUT: N matching lines ($fetch, if set, is run first each second: a copy of a file on host B)
	local t=0
	[ -n "${fetch:-}" ] && $fetch
	while [ "$(count_in "$1" "$2")" -lt "$3" ]; do
		sleep 1; t=$((t+1))
		[ -n "${fetch:-}" ] && $fetch
		[ $t -ge "$4" ] && { ts "TIMEOUT waiting for $3 x '$2' in $1"; return 1; }
	done
	ts "found $3 x '$2' after ${t}s"
}
cons=/var/log/xen/console
# diag: what the helpers, the guest and Xen are doing (for a stall).
diag() {
	echo "==== diag at $(cut -d' ' -f1 /proc/uptime)"
	xl list; xl vcpu-list
	for p in $(pgrep -f 'libxl-save-helper|xl -vvv migrate'); do
		echo "-- pid $p: $(tr '\0' ' ' < /proc/$p/cmdline)"
		for t in /proc/$p/task/*; do
			echo "   task ${t##*/} $(cat $t/comm) state=$(awk '{print $3}' $t/stat) wchan=$(cat $t/wchan 2>/dev/null)"
			sed 's/^/      /' $t/stack 2>/dev/null | head -12
		done
	done
	for d in $(xl list | awk 'NR > 2 { print $2 }'); do
		echo "-- xenctx $d"; timeout 10 xenctx -a -s /proc/kallsyms "$d" 2>&1 | head -40
	done
	xl debug-keys q >/dev/null 2>&1
	echo "-- xl dmesg (tail)"; xl dmesg | tail -n 120
}
# monitor OUT PID [LOG]: one line every 5 s; diag when LOG (OUT/migrate.log)
# stops growing.
monitor() {
	local out=$1 pid=$2 mlog=${3:-$1/migrate.log} last=-1 same=0 n
	while kill -0 "$pid" 2>/dev/null; do
		sleep 5
		n=$(stat -c %s "$mlog" 2>/dev/null || echo 0)
		echo "[$(cut -d' ' -f1 /proc/uptime)] log=$n $(grep -a 'Post-copy pages' "$mlog" | tail -n 1)" >> "$out/monitor.log"
		if [ "$n" = "$last" ]; then same=$((same + 5)); else same=0; fi
		last=$n
		if [ $same -eq 30 ] || [ $same -eq 120 ]; then
			diag >> "$out/diag.log" 2>&1
		fi
		if [ $same -ge "${STALL_KILL:-150}" ]; then
			echo "STALL: no progress for ${same}s: stopping the migration" >> "$out/monitor.log"
			diag >> "$out/diag.log" 2>&1
			pkill -P "$pid"; kill "$pid"
			break
		fi
	done
}
# alive_problem: why the guest $dom (expected as domid $cur) is dead, or
# nothing when it lives: its domain gone, shut down, crashed or dying, a
# new domid (restarted), a triple fault in xl dmesg, a second GUEST-UP
# (fresh boot under the same name), or a shutdown other than suspend seen
# by domstates.
alive_problem() {
	local st id
	# the most telling sign first: Xen's own line, then the state seen
	[ "$(xl dmesg | grep -ac 'Triple fault')" -gt "$tf0" ] && { echo "xl dmesg: $(xl dmesg | grep -a 'Triple fault' | tail -n 1)"; return; }
	grep -aqE 'shutdown=(poweroff|reboot|crash|watchdog|soft_reset|other)' /tmp/domstates.log && { echo "domstates: $(grep -aE 'shutdown=(poweroff|reboot|crash|watchdog|soft_reset|other)' /tmp/domstates.log | head -n 1)"; return; }
	read -r id st <<< "$(xl list 2>/dev/null | awk -v n="$dom" '$1 == n { print $2, $5 }')"
	if [ -z "$id" ]; then echo "domain $dom is no longer listed"; return; fi
	case $st in *s* | *c* | *d*) echo "domain $dom (id $id) is in state $st"; return ;; esac
	[ -n "$cur" ] && [ "$id" != "$cur" ] && { echo "domain $dom restarted: id $id, expected $cur"; return; }
	[ "$(cat $cons/guest-$dom*.log $cons/mig-$dom-*.log 2>/dev/null | grep -ac GUEST-UP)" -gt 1 ] && { echo "fresh boot of $dom (a second GUEST-UP on its console)"; return; }
	true
}
# forensics DIR DOMID...: everything about a dead guest, into DIR.
forensics() {
	local dir=$1 d
	shift
	mkdir -p "$dir"
	{ xl list -v; echo; xl vcpu-list; } > "$dir/xl-list.txt" 2>&1
	xl dmesg > "$dir/xl-dmesg.txt" 2>&1
	for d in "$@"; do
		[ -n "$d" ] || continue
		timeout 20 xenctx -a -C -s /proc/kallsyms "$d" > "$dir/xenctx-$d.txt" 2>&1
		timeout 20 xen-hvmctx "$d" > "$dir/hvmctx-$d.txt" 2>&1
	done
	# q: every domain's state and vCPUs on Xen's console
	xl debug-keys q > /dev/null 2>&1
	sleep 1
	xl dmesg > "$dir/xen-console-after-debug-keys-q.txt" 2>&1
	cp /tmp/domstates.log "$dir/" 2>/dev/null
	cp "$out"/migrate*.log "$out"/monitor*.log "$out"/diag*.log "$dir/" 2>/dev/null
	cp /var/log/xen/*.log "$dir/" 2>/dev/null
	cp $cons/guest-$dom*.log $cons/mig-$dom-*.log "$dir/" 2>/dev/null
	ts "forensics saved in $dir"
}
# seq_mode MODE: margs and cmd for one migration of a seq= scenario; xl's
# forward stream passes a dd (its byte count in stream-I.txt) on its way
# to the receiver, for every mode alike.
seq_mode() {
	mode=$1
	case $mode in
	precopy) margs= ;;
	hybrid) margs="--postcopy --postcopy-after=${SEED_HYBRID_ROUNDS:-2} --prepage=bubble" ;;
	postcopy) margs="--postcopy --prepage=bubble" ;;
	*) ts "seq: unknown mode '$mode'"; margs= ;;
	esac
	cmd="xl -vvv migrate-receive"
	case " $margs " in *" --postcopy "*) cmd="$cmd --postcopy" ;; esac
	cmd="dd bs=1M 2>$out/stream-$i.txt | $cmd"
}
# migrate_once I: one xl migrate of $dom (logs to migrate-I.log, appended
# to migrate.log), with the stall monitor; sets mrc, mig_ms, src, dst, and
# appends one line to migrations.env.  With kill_dest=1 the destination
# guest is crashed (xl sysrq c) once it runs and pages are still owed.
migrate_once() {
	local i=$1 mlog=$out/migrate-$1.log s e mpid monpid kpid=
	src=$(xl domid "$dom" 2>/dev/null)
	: > "$mlog"
	# xl migrate's destination: a command on this host (-s ''), or host B
	# over ssh as an admin types it (peer=ssh)
	local via=(-s "" "$dom" "$cmd")
	[ "$peer" = ssh ] && via=("$dom" hostb)
	ts "migrate $i: xl -vvv migrate $margs ${via[*]} (from id $src)"
	s=$(now)
	# evict=per-page: the destination pages owed pfns out with populate +
	# nominate + evict, not the hypervisor's range op; load=per-page: it
	# loads owed pages with xc_mem_paging_load one by one, not the batch
	# op (for comparison); scan=stop: the source finds the populated pfns
	# while the guest is stopped, not in a prescan while it runs.
	# window=SIZE|on|off: the source's push window
	# (LIBXL_POSTCOPY_PUSH_WINDOW; empty: the default, off); lane=off: fault replies in-band, not on the
	# fault lane (LIBXL_POSTCOPY_LANE); batch=N: pages per pushed record
	# (LIBXL_POSTCOPY_PUSH_BATCH; empty: the default, 64); hold=SECS|on: the
	# push's wait for RESUMED (LIBXL_POSTCOPY_PUSH_HOLD; empty: the
	# default, none; on: 60 s); residual=SECS: --prepage=none's demand
	# paging before its residual flush (LIBXL_POSTCOPY_RESIDUAL_AFTER;
	# empty: the default, 0.5 s of quiet or 5 s); read=per-call:
	# the source maps and unmaps per read, no kept mappings
	# (LIBXL_POSTCOPY_READ); early=on|off: the destination pages the
	# prescan's pfns out before the stop (LIBXL_POSTCOPY_EVICT_EARLY;
	# empty: the default, on when the receiver offers it, which it does
	# unless told off); nice=N|off: the helpers' fault threads' nice value
	# (LIBXL_POSTCOPY_FAULT_NICE; empty: the default, -10).
	LIBXL_POSTCOPY_FAULT_NICE=$nice LIBXL_POSTCOPY_EVICT_EARLY=$early LIBXL_POSTCOPY_READ=$read LIBXL_POSTCOPY_LANE=$lane LIBXL_POSTCOPY_PUSH_BATCH=$batch LIBXL_POSTCOPY_PUSH_HOLD=$hold LIBXL_POSTCOPY_RESIDUAL_AFTER=$residual LIBXL_POSTCOPY_PUSH_WINDOW=$window LIBXL_POSTCOPY_EVICT=$evict LIBXL_POSTCOPY_LOAD=$load LIBXL_POSTCOPY_SCAN=$scan timeout "${MIGRATE_TIMEOUT:-600}" xl -vvv migrate $margs "${via[@]}" >> "$mlog" 2>&1 &
	mpid=$!
	monitor "$out" $mpid "$mlog" &
	monpid=$!
	sample_status "$out/status-$i" $mpid &
	stpid=$!
	if [ "$kill_dest" = 1 ]; then kill_destination "$mlog" $mpid $src & kpid=$!; fi
	if [ "$names" = 1 ]; then name_checks "$mlog" $mpid $src & kpid=$!; fi
	# switch_after=S: the admin's `xl-postcopy switch` on the source, S s
	# into a hybrid migration (switch.log)
	if [ -n "$switch_after" ]; then
		( sleep "$switch_after"; ts "xl-postcopy switch $dom"
		  timeout 30 /usr/local/bin/xl-postcopy switch "$dom"; echo "switch_rc=$?" ) > "$out/switch.log" 2>&1 &
	fi
	wait $mpid
	mrc=$?
	e=$(now)
	kill $monpid 2>/dev/null; wait $monpid 2>/dev/null
	wait $stpid 2>/dev/null
	sample_status_by_name "$out/status-$i"
	# each side's last word (completed / failed), by domid
	cp /run/xen-postcopy/"$src".json "$out/status-$i-final-source.json" 2>/dev/null
	for f in /run/xen-postcopy/*.json; do
		[ -e "$f" ] && [ "$f" != /run/xen-postcopy/"$src".json ] && cp "$f" "$out/status-$i-final-destination.json"
	done
	rm -f /run/xen-postcopy/*.json
	if [ -n "$peer" ]; then
		pssh 'f=$(ls /run/xen-postcopy/*.json 2>/dev/null | head -n 1); [ -n "$f" ] && cat "$f"' \
			> "$out/status-$i-final-destination.json" 2>/dev/null
	fi
	[ -n "$kpid" ] && wait $kpid
	mig_ms=$(ms "$s" "$e")
	dst=$(xl domid "$dom" 2>/dev/null)
	[ -n "$peer" ] && dst=$(pssh xl domid "$dom" 2>/dev/null)
	ts "migrate $i rc=$mrc $mig_ms ms (now id ${dst:-none})"
	cat "$mlog" >> "$out/migrate.log"
	echo "i=$i rc=$mrc start=$s end=$e ms=$mig_ms src=$src dst=${dst:-} mode=${mode:-}" >> "$out/migrations.env"
}
# sample_status PREFIX MPID: what an admin sees, every 2 s while xl
# migrate runs: `xl-postcopy status --json --file` of each helper's status
# file (/run/xen-postcopy/<domid>.json), one JSON object a line in
# PREFIX-source.jsonl / PREFIX-destination.jsonl by the snapshot's role.
# Reading the files costs dom0 nothing; resolving names costs an `xl
# domid` each (seconds of emulated dom0 CPU), so the name lookup is made
# once, at the end (sample_status_by_name).
sample_status() {
	local pfx=$1 mpid=$2 f j role
	while kill -0 "$mpid" 2>/dev/null; do
		for f in /run/xen-postcopy/*.json; do
			[ -e "$f" ] || continue
			j=$(timeout 10 /usr/local/bin/xl-postcopy status --json --file "$f" 2>/dev/null | tr -d '\n') || continue
			case $j in *'"role": "source"'*) role=source ;; *) role=destination ;; esac
			echo "$j" >> "$pfx-$role.jsonl"
		done
		sleep 2
	done
}
# sample_status_by_name PREFIX: the admin's command by domain name, once,
# after the migration (the guest's name is the destination's by then).
sample_status_by_name() {
	timeout 30 /usr/local/bin/xl-postcopy status "$dom" > "$1-byname.txt" 2>&1
}
# kill_destination MLOG MPID SRC: waits for the destination domain (an id
# other than SRC named $dom*) to run while the post-copy stream is still
# going, waits KILL_AFTER (3) s more, then crashes its kernel with
# `xl sysrq <dom> c` (the guest's Xen driver runs SysRq-C: a kernel panic,
# which Linux reports to Xen as a crash shutdown) and writes kill.env.
# xen-hvmcrash (RIP to 0xf001 through the HVM context) was tried first: on
# a post-copy destination its new context took effect only ~50 s later,
# after the migration had ended (the guest kept running meanwhile), so it
# did not kill mid-post-copy.
# destination_running MLOG MPID SRC: the id of the destination domain (an
# id other than SRC named $dom*) once it runs while the post-copy stream
# is still going (nothing if it never does).
destination_running() {
	local mlog=$1 mpid=$2 srcid=$3 t=0 d= st=
	while kill -0 "$mpid" 2>/dev/null && [ $t -lt 1200 ]; do
		read -r d st <<< "$(xl list 2>/dev/null | awk -v n="$dom" -v s="$srcid" 'index($1, n) == 1 && $2 != s { print $2, $5 }')"
		if [ -n "$d" ] && [ "${st#*p}" = "$st" ] && grep -aq 'Post-copy pages' "$mlog"; then echo "$d"; return; fi
		sleep 0.5; t=$((t + 1))
	done
}
kill_destination() {
	local mlog=$1 mpid=$2 srcid=$3 d prog off
	d=$(destination_running "$mlog" "$mpid" "$srcid")
	if [ -z "$d" ]; then
		ts "kill_dest: the destination never ran during post-copy"
		echo "kill_rc=none" > "$out/kill.env"
		return
	fi
	sleep "${KILL_AFTER:-3}"
	prog=$(grep -a 'Post-copy pages' "$mlog" | tail -n 1 | tr -d '\r' | sed 's/.*Post-copy pages/Post-copy pages/')
	off=$(stat -c %s "$mlog")
	ts "kill_dest: xl sysrq $d c (source $srcid; $prog)"
	xl sysrq "$d" c > "$out/kill.log" 2>&1
	{
		echo "kill_rc=$?"
		echo "kill_time=$(now)"
		echo "kill_dst=$d"
		echo "kill_src=$srcid"
		echo "kill_log_offset=$off"
		echo "kill_progress='$prog'"
		echo "kill_done_before=$(grep -acE 'Post-copy restore successful|post-copy destination done' "$mlog")"
	} > "$out/kill.env"
}
# recover_pipe: recover=1's admin, beside the migration: once post-copy
# runs (the destination's progress lines in migrate.log), waits
# RECOVER_BREAK_AFTER (3) s, kills both ends of xl's stream (the tunnel's
# listening end, xl migrate-receive's parent, and its connecting end, xl
# migrate's transport) with SIGKILL, waits RECOVER_OUTAGE (5) s, then
# runs `xl-postcopy recover` for the destination (--listen) and the
# source copy (--to) as an admin would; recover.env.
recover_pipe() {
	local cpid d s t0 t1 rp src_rc dst_rc prog
	kv() { echo "$*" >> "$out/recover.env"; }
	waitfor "$out/migrate.log" 'Post-copy pages' 1 600 || { kv "recover_started=0"; return; }
	sleep "${RECOVER_BREAK_AFTER:-3}"
	# the connecting end itself (env exec'd it), not xl migrate or its
	# timeout, whose command lines carry the same words
	cpid=$(pgrep -f '^/usr/local/bin/xl-postcopy tunnel connect 127.0.0.1:7002' | head -n 1)
	prog=$(grep -a 'Post-copy pages' "$out/migrate.log" | tail -n 1 | tr -d '\r' | sed 's/.*Post-copy pages/Post-copy pages/')
	ts "recover: xl's stream breaks: kill -9 of the tunnel's ends (listen $rlpid, connect $cpid; $prog)"
	t0=$(now)
	kill -9 "$rlpid" $cpid
	kv "recover_started=1"
	kv "break_time=$t0"
	kv "break_progress='$prog'"
	sleep "${RECOVER_OUTAGE:-5}"
	d=$(xl domid "$dom" 2>/dev/null)
	s=$(xl domid "$dom--postcopy-source" 2>/dev/null)
	ts "recover: xl-postcopy recover $d --listen 127.0.0.1:7010; xl-postcopy recover $s --to 127.0.0.1:7010"
	timeout 120 /usr/local/bin/xl-postcopy recover "$d" --listen 127.0.0.1:7010 > "$out/recover-destination.txt" 2>&1 &
	rp=$!
	sleep 1
	timeout 120 /usr/local/bin/xl-postcopy recover "$s" --to 127.0.0.1:7010 > "$out/recover-source.txt" 2>&1
	src_rc=$?
	wait $rp
	dst_rc=$?
	t1=$(now)
	ts "recover: source rc=$src_rc ($(cat "$out/recover-source.txt")), destination rc=$dst_rc ($(cat "$out/recover-destination.txt"))"
	kv "recover_source_rc=$src_rc"
	kv "recover_destination_rc=$dst_rc"
	kv "recover_dst=$d"
	kv "recover_src=$s"
	kv "recover_time=$t1"
	kv "outage_ms=$(ms "$t0" "$t1")"
}
# pager_kill: pager_kill=1's admin, beside the migration: once post-copy
# runs (the destination's progress lines in migrate-1.log), waits
# PAGER_KILL_AFTER (3) s, kills the destination's pager (the restore
# session of libxl_postcopy.so runs in libxl-save-helper --restore-domain,
# xl migrate-receive's child) with SIGKILL, samples every second for
# PAGER_OUTAGE (8) s what the domains and the migration processes do
# (pager-states.txt), then runs `xl-postcopy recover <dst> --listen`
# and `xl-postcopy recover <src copy> --to` as an admin would, and
# samples again; recover.env.
pager_kill() {
	local hp d s t0 t1 rp src_rc dst_rc prog i st
	kv() { echo "$*" >> "$out/recover.env"; }
	sample() { # sample LABEL: one line of what the domains and the migration processes do
		echo "[$1 +$(ms "$t0" "$(now)") ms] $(xl list 2>/dev/null | awk -v n="$dom" 'index($1, n) == 1 { print $1, $2, $5 }' | tr '\n' ';') | $(pgrep -a -f 'migrate|libxl-save-helper|xl-postcopy recover' | grep -v pgrep | cut -c1-90 | tr '\n' ';')" >> "$out/pager-states.txt"
	}
	waitfor "$out/migrate-1.log" 'Post-copy pages' 1 600 || { kv "pager_killed=0"; return; }
	sleep "${PAGER_KILL_AFTER:-3}"
	hp=$(pgrep -f 'libxl-save-helper --restore-domain' | head -n 1)
	d=$(xl domid "$dom" 2>/dev/null)
	s=$(xl domid "$dom--postcopy-source" 2>/dev/null)
	prog=$(grep -a 'Post-copy pages' "$out/migrate-1.log" | tail -n 1 | tr -d '\r' | sed 's/.*Post-copy pages/Post-copy pages/')
	ts "pager-kill: kill -9 of the destination's pager (libxl-save-helper --restore-domain, pid ${hp:-none}; destination $d, source $s; $prog)"
	t0=$(now)
	[ -n "$hp" ] && kill -9 "$hp"
	kv "pager_killed=$([ -n "$hp" ] && echo 1 || echo 0)"
	kv "kill_time=$t0"
	kv "kill_progress='$prog'"
	kv "recover_dst=$d"
	kv "recover_src=$s"
	# time-bound: under load one sample (xl list) can take seconds of
	# emulated dom0, and the source's recovery window runs meanwhile
	i=$(( $(date +%s) + ${PAGER_OUTAGE:-8} ))
	while sleep 1; do sample outage; [ "$(date +%s)" -ge "$i" ] && break; done
	xl vcpu-list "$d" >> "$out/pager-states.txt" 2>&1
	st=$(xl list "$d" 2>/dev/null | awk 'NR == 2 { print $5 }')
	kv "dst_state_before_recover='$st'"
	kv "dst_paused_before_recover=$(case $st in *p*) echo 1 ;; *) echo 0 ;; esac)"
	ts "pager-kill: destination $d state '$st'; xl-postcopy recover $d --listen 127.0.0.1:7011; xl-postcopy recover $s --to 127.0.0.1:7011"
	RUST_LOG=info timeout 300 /usr/local/bin/xl-postcopy recover "$d" --listen 127.0.0.1:7011 > "$out/recover-destination.txt" 2>&1 &
	rp=$!
	sleep 1
	timeout 120 /usr/local/bin/xl-postcopy recover "$s" --to 127.0.0.1:7011 > "$out/recover-source.txt" 2>&1
	src_rc=$?
	sample "source recover done"
	wait $rp
	dst_rc=$?
	t1=$(now)
	sample "destination recover done"
	ts "pager-kill: source rc=$src_rc ($(tail -n 3 "$out/recover-source.txt")), destination rc=$dst_rc ($(tail -n 3 "$out/recover-destination.txt"))"
	kv "recover_source_rc=$src_rc"
	kv "recover_destination_rc=$dst_rc"
	kv "recover_time=$t1"
	kv "outage_ms=$(ms "$t0" "$t1")"
	# the replacement pager serves until every page is in
	for i in $(seq 1 "${PAGER_WAIT:-300}"); do pgrep -f xl-postcopy-pager > /dev/null || break; sleep 1; done
	kv "pager_gone_after_s=$i"
	cp /run/xen-postcopy/*.pager.log "$out/" 2>/dev/null
	sample "replacement pager gone"
	kv "dst_state_after='$(xl list "$d" 2>/dev/null | awk 'NR == 2 { print $5 }')'"
}
# name_checks MLOG MPID SRC: what an admin sees mid-post-copy (names=1):
# the running guest carries its own name on the destination, the source
# copy is <name>--postcopy-source, and `xl destroy` of it is refused (the
# copy must still be listed after); names.env.
name_checks() {
	local mlog=$1 mpid=$2 srcid=$3 d sname drc
	d=$(destination_running "$mlog" "$mpid" "$srcid")
	{
		echo "names_dst_running=${d:-}"
		[ -n "$d" ] || return
		xl list > "$out/names-xl-list.txt" 2>&1
		sname=$(xl domname "$srcid" 2>/dev/null)
		echo "names_src_name='$sname'"
		echo "names_guest_id='$(xl domid "$dom" 2>/dev/null)'"
		xl destroy "$sname" > "$out/names-destroy.txt" 2>&1
		drc=$?
		echo "names_destroy_rc=$drc"
		echo "names_destroy_says_why=$(grep -qa 'source copy of a post-copy migration' "$out/names-destroy.txt" && echo 1 || echo 0)"
		echo "names_src_kept=$(xl domname "$srcid" > /dev/null 2>&1 && echo 1 || echo 0)"
		echo "names_still_postcopy=$(kill -0 "$mpid" 2>/dev/null && grep -aq 'Post-copy pages' "$mlog" && echo 1 || echo 0)"
	} > "$out/names.env"
	ts "names: $(tr '\n' ' ' < "$out/names.env")"
}
# refuse_checks: after a refused migration (refuse=), refuse.env: xl's
# exit, its one-line reason, the source domain's id and whether it was
# paused or suspended after the start (result.py, from domstates.log),
# whether another copy exists.
# bwcap_refused RATE: `xl migrate --postcopy --max-bandwidth=RATE` of the
# running guest with a malformed RATE: xl must exit non-zero with one line
# saying why, before anything is suspended (the same domain goes on; the
# result checks dom0's poller for a pause in between).  bwcap.env.
bwcap_refused() {
	local s0 rc src0 lines
	src0=$(xl domid "$dom" 2>/dev/null)
	s0=$(now)
	timeout 120 xl migrate --postcopy --prepage=bubble --max-bandwidth="$1" -s '' "$dom" "$recv" \
		> "$out/bwcap-malformed.log" 2>&1
	rc=$?
	lines=$(grep -c . "$out/bwcap-malformed.log")
	{
		echo "malformed_value='$1'"
		echo "malformed_rc=$rc"
		echo "malformed_lines=$lines"
		echo "malformed_msg='$(head -n 1 "$out/bwcap-malformed.log" | tr -d "'")'"
		echo "malformed_start=$s0"
		echo "malformed_end=$(now)"
		echo "malformed_src=$src0"
		echo "malformed_domid_after=$(xl domid "$dom" 2>/dev/null)"
		echo "malformed_state_after='$(xl list "$dom" 2>/dev/null | awk 'NR == 2 { print $5 }')'"
		echo "malformed_domains='$(xl list 2>/dev/null | awk -v n="$dom" 'index($1, n) == 1 { print $1 "/" $2 }' | tr '\n' ' ')'"
	} > "$out/bwcap.env"
	ts "bwcap: --max-bandwidth=$1 refused? rc=$rc, $lines line(s): $(head -n 1 "$out/bwcap-malformed.log")"
}
refuse_checks() {
	{
		echo "refuse_kind=$refuse"
		echo "refuse_rc=$mrc"
		echo "refuse_reason='$(grep -a 'cannot take this post-copy migration\|did not start; its xl must be' "$out/migrate.log" | head -n 1 | tr -d "'")'"
		echo "refuse_nothing_suspended=$(grep -acF 'Nothing was suspended' "$out/migrate.log")"
		echo "refuse_src=$src"
		echo "refuse_dst='${dst:-}'"
		echo "refuse_domains='$(xl list 2>/dev/null | awk -v n="$dom" 'index($1, n) == 1 { print $1 "/" $2 }' | tr '\n' ' ')'"
	} > "$out/refuse.env"
	cat "$out/refuse.env"
}
# truncated_streams DIR: the inputs of the truncated scenario, made from
# the running guest $dom's configuration as xl migrate's sender writes its
# preamble (xl_migrate.c migrate_do_preamble -> save_domain_core_writeconfig:
# xl's savefile header, mandatory flags JSON|STREAMv2, the length-prefixed
# JSON config with its NUL; the config as libxl_retrieve_domain_configuration
# gives it, domid 0): empty (EOF at once), zeros (1 MiB of zeroes),
# preamble (then EOF: a sender that died before its libxl stream),
# preamble-zeros (then 64 KiB of zeroes), preamble-header (then the libxl
# stream header, then EOF).
truncated_streams() {
	python3 - "$dom" "$1" <<'PY'
import json, struct, subprocess, sys
dom, d = sys.argv[1], sys.argv[2]
cfg = json.loads(subprocess.run(["xl", "list", "-l", dom], check=True,
                                capture_output=True).stdout)[0]["config"]
cfg.setdefault("c_info", {})["domid"] = 0
conf = json.dumps(cfg, indent=4).encode() + b"\0"
opt = struct.pack("<I", len(conf)) + conf
pre = (b"Xen saved domain, xl format\n \0 \r"
       + struct.pack("<IIII", 0x01020304, 0x3, 0, len(opt)) + opt)
lhdr = struct.pack(">QII", 0x4c6962786c466d74, 2, 0)
for name, data in (("empty", b""), ("zeros", bytes(1 << 20)),
                   ("preamble", pre), ("preamble-zeros", pre + bytes(64 << 10)),
                   ("preamble-header", pre + lhdr)):
    open("%s/%s" % (d, name), "wb").write(data)
print("preamble %d bytes (config %d)" % (len(pre), len(conf)))
PY
}
# truncated_checks: the truncated scenario.  Each of `xl migrate-receive
# --postcopy` and `xl migrate-receive` is fed each input of
# truncated_streams; per run (truncated.env): its exit status (a signal
# shows as 128+N: 139 is a segfault; core dumps kept as core-RUN), whether
# its log says what was wrong (empty, preamble, preamble-header:
# "truncated"; zeros: "wrong magic number"; preamble-zeros: "Invalid
# ident"), and the domains it left behind (destroyed before the next run).
# The guest $dom must not notice: the same domid, never paused (result.py,
# from domstates.log after trunc_start), two more verified memtest passes.
truncated_checks() {
	local tdir=/tmp/trunc recv input want rc left ids0 log
	rm -rf "$tdir"; mkdir -p "$tdir"
	truncated_streams "$tdir" > "$out/truncated-streams.txt" 2>&1
	ls -l "$tdir" >> "$out/truncated-streams.txt"
	echo "/tmp/core.%e.%p" > /proc/sys/kernel/core_pattern
	ids0=$(xl list | awk 'NR > 1 { print $2 }' | sort | tr '\n' ' ')
	{
		echo "trunc_start=$(now)"
		echo "trunc_src=$src"
		for recv in postcopy plain; do
			for input in empty zeros preamble preamble-zeros preamble-header; do
				case $input in
				zeros) want='wrong magic number' ;;
				preamble-zeros) want='Invalid ident' ;;
				*) want='truncated' ;;
				esac
				log=$out/recv-$recv-$input.log
				rm -f /tmp/core.*
				# shellcheck disable=SC2046
				(ulimit -c unlimited
				 exec timeout 120 xl -vvv migrate-receive $([ $recv = postcopy ] && echo --postcopy)) \
					< "$tdir/$input" > "$out/recv-$recv-$input.out" 2> "$log"
				rc=$?
				for c in /tmp/core.*; do [ -e "$c" ] && mv "$c" "$out/core-$recv-$input"; done
				left=$(xl list | awk -v ids="$ids0" 'NR > 1 && index(" " ids, " " $2 " ") == 0 { print $1 "/" $2 }' | tr '\n' ' ')
				# (a restarted guest is reported, not destroyed)
				for d in $left; do [ "${d%/*}" = "$dom" ] || xl destroy "${d#*/}" > /dev/null 2>&1; done
				echo "run=$recv/$input rc=$rc said_why=$(grep -aqi "$want" "$log" && echo 1 || echo 0) left='$left' last='$(grep -a -i 'error\|fail\|truncat\|segmentation\|wrong' "$log" | tail -n 1 | tr -d "'")'"
				{ echo "==== xl migrate-receive ($recv) < $input: rc=$rc"; cat "$log"; } >> "$out/migrate.log"
			done
		done
		echo "trunc_end=$(now)"
		echo "trunc_guest_id='$(xl domid "$dom" 2>/dev/null)'"
	} > "$out/truncated.env"
	cat "$out/truncated.env"
}
# death_checks: after a kill_dest migration, is the dead destination
# preserved (listed, not restarted) and the source copy paused?
death_checks() {
	local dd ds sd ss
	. "$out/kill.env"
	# xl's domain monitor would restart a crashed guest within seconds
	sleep "${DEATH_GRACE:-20}"
	read -r dd ds <<< "$(xl list 2>/dev/null | awk -v i="${kill_dst:-x}" '$2 == i { print $1, $5 }')"
	read -r sd ss <<< "$(xl list 2>/dev/null | awk -v i="${kill_src:-x}" '$2 == i { print $1, $5 }')"
	{
		echo "dst_listed=$([ -n "$dd" ] && echo 1 || echo 0)"
		echo "dst_name='$dd'"
		echo "dst_state='$ds'"
		echo "src_listed=$([ -n "$sd" ] && echo 1 || echo 0)"
		echo "src_name='$sd'"
		echo "src_state='$ss'"
		echo "src_last='$(grep -a "dom=${kill_src:-x} " /tmp/domstates.log | tail -n 1)'"
		echo "dst_last='$(grep -a "dom=${kill_dst:-x} " /tmp/domstates.log | tail -n 1)'"
		echo "guest_ups=$(cat $cons/guest-$dom*.log 2>/dev/null | grep -ac GUEST-UP)"
		echo "restarted_as='$(xl list 2>/dev/null | awk -v n="$dom" -v a="${kill_dst:-x}" -v b="${kill_src:-x}" 'index($1, n) == 1 && $2 != a && $2 != b { print $1 "/" $2 }' | tr '\n' ' ')'"
	} > "$out/death.env"
	cat "$out/death.env"
	forensics "$out/death" "${kill_dst:-}" "${kill_src:-}"
}
# verify_after I DLOG: the guest on DLOG (its console after migration I)
# runs and every check passes there: heartbeat lines, two full memtest
# passes, and with the stress workload a tmpfs check and a stress-ng run;
# no failure anywhere.  Returns 0, 1 (timeout: console stopped) or 2 (a
# verification failed).
verify_after() {
	local dlog=$2 t=${VERIFY_TIMEOUT:-400}
	case " $gopts " in
	*" heartbeat_ms=0 "*) ;; # no stall probe in this guest
	*) waitfor "$dlog" 'HEARTBEAT' 2 120 || return 1 ;;
	esac
	waitfor "$dlog" 'MEMTEST pass [0-9]* ' 2 "$t" || return 1
	# the devices kept working on the destination
	if [ -n "$disk_mib" ]; then waitfor "$dlog" 'DISK pass [0-9]* ' 2 "$t" || return 1; fi
	if [ "$net" = 1 ]; then waitfor "$dlog" 'NET pass [0-9]* ' 3 "$t" || return 1; fi
	if [ "$workload" = stress ]; then
		waitfor "$dlog" 'TMPFS check' 1 "$t" || return 1
		waitfor "$dlog" 'STRESS run' 1 "$t" || return 1
	fi
	verify_failed && return 2
	return 0
}
verify_failed() {
	# a guest with devices: also an I/O error, a verifier's error, a
	# hung task, a soft lockup or an RCU stall on its consoles
	local re='MEMTEST BAD|ok=0|STRESS run [0-9]+ rc=[1-9]|fail_lines=[1-9]|TMPFS check [0-9]+ ok=0'
	[ -n "$disk_mib" ] || [ "$net" = 1 ] && re="$re|$iofail_re"
	cat $cons/guest-$dom*.log $cons/mig-$dom-*.log 2>/dev/null \
		$([ -n "$peer" ] && echo "$out/guest-$dom--incoming.log") | grep -aqE "$re"
}
# ---------------------------------------------------------------- two hosts
# pssh CMD...: a command on host B through one shared ssh connection (the
# emulated CPUs pay a key exchange per connection); xl's own ssh for the
# migration does not use it.
pssh() {
	ssh -o ControlMaster=auto -o ControlPath=/tmp/pssh-%h -o ControlPersist=1800 hostb "$@"
}
# host_setup: this host's name and address, the bridge xenbr0 with the
# link's NIC in it, /etc/hosts, the shared storage, root's keys, sshd.
host_setup() {
	local ip nic n
	ip=10.9.0.1; [ "$HOST_ROLE" = b ] && ip=10.9.0.2
	hostname "host$HOST_ROLE"
	printf '127.0.0.1 localhost\n10.9.0.1 hosta\n10.9.0.2 hostb\n' > /etc/hosts
	# loop: /etc/xen/scripts/block puts a file-backed disk on a loop device;
	# tun: QEMU's tap for an HVM guest's emulated NIC (vifN.0-emu)
	modprobe -a bridge virtio_net loop tun 2>/dev/null
	for n in $(seq 1 20); do
		nic=$(for n in /sys/class/net/*; do
			[ "$(basename "$(readlink -f "$n/device/driver" 2>/dev/null)")" = virtio_net ] && basename "$n"
		done | head -n 1)
		[ -n "$nic" ] && break
		sleep 1
	done
	ip link add xenbr0 type bridge forward_delay 0 stp_state 0
	ip link set "$nic" master xenbr0
	ip link set "$nic" up
	ip addr add "$ip/24" dev xenbr0
	ip link set xenbr0 up
	ts "host$HOST_ROLE: $nic in xenbr0, $ip/24"
	mkdir -p /mnt/storage
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none storage /mnt/storage && ts "shared storage mounted"
	install -m 600 /mnt/host/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key
	install -m 644 /mnt/host/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_ed25519_key.pub
	mkdir -p -m 700 /root/.ssh
	install -m 600 /mnt/host/ssh/id_ed25519 /root/.ssh/id_ed25519
	install -m 644 /mnt/host/ssh/id_ed25519.pub /mnt/host/ssh/authorized_keys /mnt/host/ssh/known_hosts /root/.ssh/
	printf 'Host *\n  BatchMode yes\n  ConnectTimeout 20\n  ServerAliveInterval 15\n  ServerAliveCountMax 8\n' > /root/.ssh/config
	install -m 600 /mnt/host/ssh/token /etc/xen/postcopy-tunnel.token
	mkdir -p /run/sshd
	# LoginGraceTime: sshd drops a connection not authenticated in time
	# (120 s by default, on this host's clock).  An emulated CPU that
	# stalls for ~80 s mid-handshake on the other host (seen twice, once
	# in CI: "Connection closed by 10.9.0.2 port 22" before xl migrate
	# suspended anything) outlasts that; 600 s still bounds a stranger.
	/usr/sbin/sshd -o HostKey=/etc/ssh/ssh_host_ed25519_key -o PermitRootLogin=prohibit-password \
		-o UseDNS=no -o LoginGraceTime=600 -E /var/log/sshd.log && ts "sshd started"
}
# peer_main (host B): serve until host A touches /tmp/peer-done (bounded).
peer_main() {
	local t=0
	ts "host B: waiting for host A"
	while [ ! -e /tmp/peer-done ] && [ $t -lt "${PEER_WAIT:-14400}" ]; do sleep 2; t=$((t + 2)); done
	ts "host B: done ($([ -e /tmp/peer-done ] && echo "host A said so" || echo "timeout"))"
}
# peer_prepare NAME (host B, from host A): the scenario's results folder,
# the net server and the domain state poller.
peer_prepare() {
	local o=/mnt/host/results/$1 f
	rm -rf "$o"; mkdir -p "$o"
	rm -f $cons/guest-t-"$1"*.log /run/xen-postcopy/*.json
	for f in /tmp/netsrv.pid /tmp/domstates.pid; do [ -s $f ] && kill "$(cat $f)" 2>/dev/null; done
	setsid /usr/local/bin/iotest net-server 7100 > "$o/netsrv.log" 2>&1 < /dev/null &
	echo $! > /tmp/netsrv.pid
	setsid domstates 5 > /tmp/domstates.log 2>&1 < /dev/null &
	echo $! > /tmp/domstates.pid
	dmesg > /tmp/dmesg-before.txt
	xl dmesg > /tmp/xl-dmesg-before.txt
	echo "prepared $1"
}
# peer_collect NAME (host B): its logs of the scenario.
peer_collect() {
	local o=/mnt/host/results/$1 f
	mkdir -p "$o"
	for f in /tmp/netsrv.pid /tmp/domstates.pid; do [ -s $f ] && kill "$(cat $f)" 2>/dev/null; done
	cp /tmp/domstates.log "$o/" 2>/dev/null
	cp $cons/guest-t-"$1"*.log "$o/" 2>/dev/null
	xl list > "$o/xl-list.txt" 2>&1
	xl dmesg > "$o/xl-dmesg.txt" 2>&1
	dmesg > "$o/dmesg.txt" 2>&1
	# the lines since prepare: this scenario's (blkback, netback, gnttab)
	tail -n +"$(($(wc -l < /tmp/dmesg-before.txt) + 1))" "$o/dmesg.txt" > "$o/dmesg-scenario.txt"
	cp /var/log/xen/*.log /var/log/sshd.log "$o/" 2>/dev/null
	cp /tmp/tunnel-*.log "$o/" 2>/dev/null
	echo "collected $1"
}
# peer_cleanup NAME (host B): the scenario's domains go.
peer_cleanup() {
	local d
	for d in $(xl list | awk 'NR > 2 { print $1 }'); do xl destroy "$d" 2>/dev/null; done
	for d in $(seq 1 30); do [ "$(xl list | wc -l)" -le 2 ] && break; sleep 1; done
	echo "cleaned $1"
}
# clock_offset: host B's clock minus host A's, in ms (the middle of an
# ssh round trip; its half-width is the error): "OFFSET ERROR"
clock_offset() {
	local a b c
	a=$(now); b=$(pssh date +%s.%N); c=$(now)
	awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN { printf "%d %d", (b - (a + c) / 2) * 1000, (c - a) * 500 }'
}
# ping_check: the dom0s reach each other (ping and ssh both ways).
ping_check() {
	{
		echo "ping_a_to_b=$(busybox ping -c 3 -W 5 hostb > "$out/ping.txt" 2>&1 && echo 1 || echo 0)"
		echo "ssh_a_to_b=$(pssh hostname 2>"$out/ssh.txt" | grep -qx hostb && echo 1 || echo 0)"
		echo "ping_b_to_a=$(pssh 'busybox ping -c 3 -W 5 hosta > /dev/null 2>&1' && echo 1 || echo 0)"
		echo "ssh_b_to_a=$(pssh 'ssh hosta hostname' 2>>"$out/ssh.txt" | grep -qx hosta && echo 1 || echo 0)"
	} > "$out/ping.env"
	cat "$out/ping.env"
}
# one_host_net (one host, net=1): the bridge xenbr0 with 10.9.0.1 and no
# uplink (the guest's vif and this dom0 only; a localhost migration's
# incoming vif joins the same bridge) and the scenario's net server here,
# where two hosts have it on host B.
one_host_net() {
	if ! ip link show xenbr0 > /dev/null 2>&1; then
		modprobe -a bridge tun 2>/dev/null
		ip link add xenbr0 type bridge forward_delay 0 stp_state 0
		ip addr add 10.9.0.1/24 dev xenbr0
		ip link set xenbr0 up
		ts "one host: xenbr0 10.9.0.1/24 (no uplink)"
	fi
	[ -s /tmp/netsrv.pid ] && kill "$(cat /tmp/netsrv.pid)" 2>/dev/null
	setsid /usr/local/bin/iotest net-server 7100 > "$out/netsrv.log" 2>&1 < /dev/null &
	echo $! > /tmp/netsrv.pid
}
# vif_devfail_script: a vif hotplug script that fails to bring the NIC of
# a domain named *--incoming online (as a destination with a missing
# bridge or a broken script would) and is vif-bridge for every other
# domain and action; prints its path.
vif_devfail_script() {
	local f=/etc/xen/scripts/vif-testbed-devfail
	cat > $f <<'SCRIPT'
#!/bin/sh
# testbed (devfail=1): the incoming domain's NIC never comes online
domid=$(echo "$XENBUS_PATH" | cut -d/ -f3)
name=$(xenstore-read "/local/domain/$domid/name" 2>/dev/null)
case "$1:$name" in
online:*--incoming)
	echo "vif-testbed-devfail: refusing $XENBUS_PATH of $name (testbed devfail=1)" >&2
	exit 1 ;;
esac
exec /etc/xen/scripts/vif-bridge "$@"
SCRIPT
	chmod 755 $f
	echo $f
}
# devfail_checks: after a migration whose destination failed to attach a
# device, devfail.env: xl's exit status and lines, the domains left.
devfail_checks() {
	{
		echo "devfail_rc=$mrc"
		echo "devfail_resumed_said=$(grep -acF 'Migration failed, resuming at sender' "$out/migrate.log")"
		echo "devfail_never_ran_said=$(grep -acF 'the guest never ran' "$out/migrate.log")"
		echo "devfail_postcopy_failed_said=$(grep -acF 'Post-copy migration failed after the domain resumed' "$out/migrate.log")"
		echo "devfail_src=$src"
		echo "devfail_domains='$(xl list 2>/dev/null | awk -v n="$dom" 'index($1, n) == 1 { print $1 "/" $2 }' | tr '\n' ' ')'"
		echo "devfail_state='$(xl list "$dom" 2>/dev/null | awk 'NR == 2 { print $5 }')'"
	} > "$out/devfail.env"
	cat "$out/devfail.env"
}
# fetch_console: host B's console of the incoming guest, copied here.
fetch_console() {
	pssh "cat $cons/guest-$dom--incoming.log" > "$out/.incoming" 2>/dev/null &&
		mv "$out/.incoming" "$out/guest-$dom--incoming.log"
}
iofail_re='I/O error|blk_update_request|Buffer I/O|blkfront.*(error|fail)|netfront.*(error|fail)|blocked for more than|soft lockup|rcu_sched.*stall|rcu: INFO|DISK BAD|DISK ERROR|NET BAD|NET ERROR|Tx Unit Hang|NETDEV WATCHDOG|e1000.*(error|Reset adapter)'

case ${1:-} in
prepare | collect | cleanup) "peer_$1" "$2"; exit 0 ;;
esac
ts "autorun start"
if [ -n "${HOST_ROLE:-}" ]; then
	host_setup
	if [ "$HOST_ROLE" = b ]; then
		peer_main
		exit 0
	fi
	# host B up: its sshd answers (it may boot later than this one)
	# (the shared connection pssh uses: started in the background here,
	# its standard streams on /dev/null)
	for t in $(seq 1 120); do
		ssh -fN -o ControlMaster=yes -o ControlPath=/tmp/pssh-%h -o ControlPersist=1800 hostb \
			< /dev/null > /dev/null 2>> /tmp/pssh-master.log && break
		sleep 5
	done
	ts "host B reachable: $(pssh hostname 2>&1)"
fi
xl info | grep -E 'xen_version|xen_extra|virt_caps|free_memory|xen_commandline'
xl dmesg | grep -iE 'mem_paging|unsupported|HAP' | head -5
for sc_line in $(seq 1 "$(wc -l < /mnt/host/scenarios)"); do
	line=$(sed -n "${sc_line}p" /mnt/host/scenarios)
	[ -n "$line" ] || continue
	name=${line%% *}
	rest=${line#* }
	gopts=${rest%%--*}
	margs=${rest#*-- }
	[ "$margs" = "$rest" ] && margs=
	out=/mnt/host/results/$name
	rm -rf "$out"; mkdir -p "$out"
	dom=t-$name
	truncated=0
	mib=64 settle=0 drops=0 outage=5 gtype=pvh evict= load= scan= kept= workload=memtest soak=0 kill_dest=0 vcpus=1 names=0 refuse= window= tunnel=0 lane= batch= hold= residual= early= nice= read= recover=0 pager=0 rpid= rlpid= bw_malformed=
	devfail=0 mem=${GUEST_MEM:-256} seq= mode= switch_after= peer= net=0 nic= disk_mib= fetch= coff= tsc=${TSC_MODE:-}
	for o in $gopts; do
		case $o in
		memtest_mib=*) mib=${o#*=} ;;
		settle=*) settle=${o#*=} ;;
		workload=*) workload=${o#*=} ;;
		link_drops=*) drops=${o#*=}; continue ;;
		link_outage=*) outage=${o#*=}; continue ;;
		guest=*) gtype=${o#*=}; continue ;;
		evict=*) evict=${o#*=}; continue ;;
		load=*) load=${o#*=}; continue ;;
		scan=*) scan=${o#*=}; continue ;;
		window=*) window=${o#*=}; continue ;;
		tunnel=*) tunnel=${o#*=}; continue ;;
		recover=*) recover=${o#*=}; continue ;;
		pager_kill=*) pager=${o#*=}; continue ;;
		lane=*) lane=${o#*=}; continue ;;
		batch=*) batch=${o#*=}; continue ;;
		hold=*) hold=${o#*=}; continue ;;
		residual=*) residual=${o#*=}; continue ;;
		bw_malformed=*) bw_malformed=${o#*=}; continue ;;
		early=*) early=${o#*=}; continue ;;
		nice=*) nice=${o#*=}; continue ;;
		read=*) read=${o#*=}; continue ;;
		soak=*) soak=${o#*=}; continue ;;
		kill_dest=*) kill_dest=${o#*=}; continue ;;
		names=*) names=${o#*=}; continue ;;
		truncated=*) truncated=${o#*=}; continue ;;
		refuse=*) refuse=${o#*=}; continue ;;
		devfail=*) devfail=${o#*=}; continue ;;
		vcpus=*) vcpus=${o#*=}; continue ;;
		mem=*) mem=${o#*=}; continue ;;
		tsc=*) tsc=${o#*=}; continue ;;
		switch_after=*) switch_after=${o#*=}; continue ;;
		peer=*) peer=${o#*=}; continue ;;
		net=*) net=${o#*=}; continue ;;
		nic=*) nic=${o#*=}; continue ;;
		disk_mib=*) disk_mib=${o#*=} ;;
		disk_pool_mib=*) ;;
		seq=*) seq=${o#*=}; soak=$(echo "$seq" | tr ',' '\n' | grep -c .); continue ;;
		esac
		kept="$kept $o"
	done
	gopts=$kept
	# the NIC: the guest's address and its peer, host B's net server.  An
	# HVM guest's NIC is QEMU's emulated e1000 (nic=pv: the PV NIC as for
	# PVH): the device model reads and writes the stream's pages, and the
	# guest unplugs only QEMU's IDE disks (its disk stays the PV one)
	# (one host: the bridge and the net server in this dom0, 10.9.0.1)
	[ "$net" = 1 ] && gopts="$gopts net_ip=10.9.0.10 net_peer=$([ -n "$peer" ] && echo 10.9.0.2 || echo 10.9.0.1)"
	[ "$net" = 1 ] && [ "$gtype" = hvm ] && [ -z "$nic" ] && nic=e1000
	[ "$nic" = e1000 ] && gopts="$gopts nic=e1000 xen_emul_unplug=ide-disks"
	if [ "$peer" = ping ]; then
		ts "=== scenario $name: the hosts reach each other"
		ping_check
		{ echo "name=$name"; echo "hosts=2"; echo "transport=ping"; cat "$out/ping.env"; } > "$out/meta.env"
		pssh /mnt/host/autorun.sh prepare "$name" > /dev/null 2>&1
		pssh /mnt/host/autorun.sh collect "$name" > /dev/null 2>&1
		ts "=== scenario $name done"
		continue
	fi
	# two hosts: the guest's files on the shared storage; its disk there
	gdir=/mnt/host devs=
	if [ -n "$peer" ]; then
		gdir=/mnt/storage
		if [ -n "$disk_mib" ]; then
			rm -f "$gdir/disk-$name.img"
			truncate -s "$((disk_mib * 4))M" "$gdir/disk-$name.img"
			devs="disk=['format=raw,vdev=xvda,access=rw,target=$gdir/disk-$name.img']"
		fi
		pssh /mnt/host/autorun.sh prepare "$name"
		pssh /mnt/host/autorun.sh cleanup "$name" > /dev/null
		coff=$(clock_offset)
		ts "host B's clock: offset and error (ms) $coff"
	elif [ -n "$disk_mib" ]; then
		# one host: the disk file in dom0's own storage (both domains
		# of a localhost migration see the same file)
		modprobe loop 2>/dev/null
		mkdir -p /var/lib/xen-testbed
		rm -f /var/lib/xen-testbed/disk-$name.img
		truncate -s "$((disk_mib * 4))M" /var/lib/xen-testbed/disk-$name.img
		devs="disk=['format=raw,vdev=xvda,access=rw,target=/var/lib/xen-testbed/disk-$name.img']"
	fi
	# the NIC on xenbr0 (one host: a bridge of this dom0's own and the net
	# server here); devfail=1: its hotplug script fails for the
	# migration's incoming domain (vif_devfail_script)
	if [ "$net" = 1 ]; then
		[ -z "$peer" ] && one_host_net
		devs="$devs
vif=['bridge=xenbr0,mac=00:16:3e:09:00:10$([ "$nic" = e1000 ] && echo ,model=e1000)$([ "$devfail" = 1 ] && echo ",script=$(vif_devfail_script)")']"
	fi
	# hvm: an HVM guest on HAP with QEMU (qemu-xen) as device model, its
	# platform state migrating with it; Linux's PV drivers give it the
	# same hvc0 console as the PVH guest.
	hvm_cfg=
	[ "$gtype" = hvm ] && hvm_cfg='hap=1
vga="none"
vnc=0
sdl=0
serial="none"'
	# soak: a dead guest stays for diagnosis (xenctx); kill_dest: xl's
	# harshest actions, so that only the migration's own preservation of
	# the dead domain can keep it.
	actions='on_crash="preserve"'
	[ "$soak" -gt 0 ] && actions='on_crash="preserve"
on_reboot="preserve"
on_poweroff="preserve"'
	[ "$kill_dest" = 1 ] && actions='on_crash="restart"
on_reboot="restart"'
	ramdisk=$gdir/guest.cpio.gz
	[ "$workload" = stress ] && ramdisk=$gdir/guest-stress.cpio.gz
	cat > /tmp/$dom.cfg <<CFG
name="$dom"
type="$gtype"
$hvm_cfg
$devs
kernel="$gdir/vmlinuz"
ramdisk="$ramdisk"
extra="console=hvc0 memtest_mib=$mib $gopts"
memory=$mem
maxmem=$mem
vcpus=$vcpus
$([ -n "$tsc" ] && echo "tsc_mode=\"$tsc\"")
$actions
CFG
	ts "=== scenario $name: guest '$gopts', xl migrate $margs$([ "$soak" -gt 0 ] && echo " (soak=$soak)")"
	rm -f $cons/guest-$dom*.log $cons/mig-$dom-*.log
	# the previous scenario's domains must be gone (a dying one would show
	# up in this scenario's domstates.log)
	for t in $(seq 1 30); do [ "$(xl list | wc -l)" -le 2 ] && break; sleep 1; done
	domstates 5 > /tmp/domstates.log 2>&1 &
	dspid=$!
	tf0=$(xl dmesg | grep -ac 'Triple fault')
	dm0=$(dmesg | wc -l)
	s=$(now)
	xl create /tmp/$dom.cfg > "$out/create.log" 2>&1
	crc=$?
	ts "create rc=$crc"
	slog=$cons/guest-$dom.log
	# up_wait ARGS: waitfor on the booting guest, unless xl create failed
	# or an earlier wait timed out (each would wait its full time for a
	# guest that is not there)
	up=$([ "$crc" = 0 ] && echo 1 || echo 0)
	up_wait() { [ "$up" = 1 ] && waitfor "$@" || up=0; }
	# the first two full passes: the pattern is written and verified once
	up_wait $slog 'MEMTEST pass [0-9]* ok=1' 2 300
	[ "$workload" = stress ] && up_wait $slog 'TMPFS ready' 1 120
	# devices busy before the migration starts
	[ -n "$disk_mib" ] && up_wait $slog 'DISK pass [0-9]* ' 1 300
	[ "$net" = 1 ] && up_wait $slog 'NET pass [0-9]* ' 2 300
	boot_ms=$(ms "$s" "$(now)")
	[ "$settle" -gt 0 ] && { ts "settling ${settle}s"; sleep "$settle"; }
	recv="xl -vvv migrate-receive"
	case " $margs " in *" --postcopy "*) recv="$recv --postcopy" ;; esac
	: > "$out/migrate.log"
	: > "$out/migrations.env"
	: > "$out/migrate-1.log"
	cmd=$recv lpid= dpid=
	# the floor of a network fault: a bare FAULT / one-page reply round
	# trip over the transport the migration uses, in dom0 (rtt.txt)
	if [ -n "$peer" ]; then
		: # two hosts: not measured yet (the pipe pair below is one host's)
	elif [ "$drops" -gt 0 ] || [ "$tunnel" = 1 ]; then
		/usr/local/bin/xl-postcopy tunnel listen 127.0.0.1:7001 -- /usr/local/bin/xl-postcopy rtt --serve 2>> "$out/rtt.log" &
		rpid=$!
		sleep 1
		timeout 120 /usr/local/bin/xl-postcopy rtt --count 500 --via "/usr/local/bin/xl-postcopy tunnel connect 127.0.0.1:7001 2>> $out/rtt.log" > "$out/rtt.txt" 2>> "$out/rtt.log"
		timeout 30 tail --pid=$rpid -f /dev/null
		kill $rpid 2>/dev/null; wait $rpid 2>/dev/null
	else
		timeout 120 /usr/local/bin/xl-postcopy rtt --count 500 > "$out/rtt.txt" 2>> "$out/rtt.log"
	fi
	[ -s "$out/rtt.txt" ] && ts "$(cat "$out/rtt.txt")"
	if [ "$peer" = tunnel ]; then
		# xl's pipe through xl-postcopy's tunnel between the hosts: its
		# listening end on host B runs xl migrate-receive, the
		# connecting end is xl migrate's command here; both prove the
		# token file's secret
		tk=/etc/xen/postcopy-tunnel.token
		pssh "rm -f /tmp/tunnel-*.log; setsid env RUST_LOG=info /usr/local/bin/xl-postcopy tunnel listen 10.9.0.2:7000 --token-file $tk --stats /mnt/host/results/$name/tunnel-listen.json -- $recv > /tmp/tunnel-listen.log 2>&1 < /dev/null & echo \$! > /tmp/tunnel.pid"
		cmd="env RUST_LOG=info /usr/local/bin/xl-postcopy tunnel connect 10.9.0.2:7000 --token-file $tk --stats $out/tunnel-connect.json"
	fi
	if [ "$drops" -gt 0 ] || [ "$tunnel" = 1 ]; then
		# link-drop: xl's pipe runs through xl-postcopy's resumable
		# tunnel on 127.0.0.1:7000. $drops times during post-copy the
		# link goes down for $outage s: policy rules make every packet
		# to or from port 7000 unroutable (connect fails with EACCES,
		# established connections are killed with ss -K), then the
		# rules go and the tunnel must resume by itself.
		ip rule show | grep -q '^100:.*lookup local' || {
			ip rule add pref 100 lookup local && ip rule del pref 0
		}
		RUST_LOG=info /usr/local/bin/xl-postcopy tunnel listen 127.0.0.1:7000 --stats "$out/tunnel-listen.json" \
			-- $recv >> "$out/migrate.log" 2>&1 &
		lpid=$!
		cmd="env RUST_LOG=info /usr/local/bin/xl-postcopy tunnel connect 127.0.0.1:7000 --stats $out/tunnel-connect.json"
		[ "$drops" -gt 0 ] && (
			# the destination's progress lines (xl migrate-receive, under
			# the tunnel listener, writes to migrate.log; the source's
			# xl hides its progress bar when stderr is not a terminal)
			waitfor "$out/migrate.log" 'Post-copy pages' 1 600 || exit 0
			for i in $(seq 1 "$drops"); do
				sleep 3
				ts "link-drop $i/$drops: the link goes down for ${outage}s"
				ip rule add pref 10 ipproto tcp dport 7000 prohibit
				ip rule add pref 11 ipproto tcp sport 7000 prohibit
				k=$(ss -K -n -t state established '( dport = :7000 or sport = :7000 )' 2>/dev/null | grep -c ':7000' || true)
				sleep "$outage"
				ip rule del pref 10; ip rule del pref 11
				ts "link-drop $i/$drops: link restored ($k connection ends killed)"
				echo "drop=$i killed=$k outage_s=$outage" >> "$out/drops.log"
			done
		) >> "$out/autorun-drops.log" 2>&1 &
		[ "$drops" -gt 0 ] && dpid=$!
	fi
	if [ "$recover" = 1 ]; then
		# recover-pipe: xl's stream through a tunnel whose two ends
		# recover_pipe kills mid-post-copy (no resumption: the ends are
		# gone, as with a dead ssh); the receiver's exit status is kept
		# (its parent, the tunnel's listening end, dies first).
		rm -f "$out/receive.rc"
		RUST_LOG=info /usr/local/bin/xl-postcopy tunnel listen 127.0.0.1:7002 \
			-- sh -c "$recv; echo receive_rc=\$? > $out/receive.rc" >> "$out/migrate.log" 2>&1 &
		rlpid=$!
		cmd="exec env RUST_LOG=info /usr/local/bin/xl-postcopy tunnel connect 127.0.0.1:7002"
		: > "$out/recover.env"
		recover_pipe &
		rpid=$!
	fi
	if [ "$pager" = 1 ]; then
		# pager-kill: xl's pipe as usual; the receiver's exit status is
		# kept (the stream's end at the source tells nothing of it).
		rm -f "$out/receive.rc"
		cmd="$recv; echo receive_rc=\$? > $out/receive.rc"
		: > "$out/recover.env"
		# both recovery windows (the source helper's, the replacement
		# pager's) long enough for a slow emulated dom0
		export LIBXL_POSTCOPY_RECOVER_TIMEOUT=${PAGER_WINDOW:-180}
		pager_kill &
		rpid=$!
	fi
	deaths=0 death= vrc=1 done_n=0 cur=
	if [ "$soak" -gt 0 ]; then
		# soak: $soak migrations of the same guest (each time to a new
		# domid), every check after each; the console of the guest that
		# ran after migration I is renamed to mig-$dom-I.log (xenconsoled
		# keeps writing to it) so that each migration has its own.  The
		# soak stops at the first death: the dead domain is preserved and
		# its forensics saved in death-I/.
		vrc=0
		for i in $(seq 1 "$soak"); do
			cur=$(xl domid "$dom" 2>/dev/null)
			death=$(alive_problem)
			if [ -n "$death" ]; then
				ts "soak: guest dead before migration $i: $death"
				deaths=1; forensics "$out/death-before-$i" $cur; break
			fi
			if [ -n "$seq" ]; then
				seq_mode "$(echo "$seq" | cut -d, -f"$i")"
				ts "seq: migration $i: $mode after ${SEED_SETTLE:-20}s of work"
				sleep "${SEED_SETTLE:-20}"
			fi
			migrate_once "$i"
			done_n=$i
			cur=$dst
			if [ $mrc -ne 0 ]; then
				vrc=1
				death=$(alive_problem)
				ts "soak: migration $i failed (rc=$mrc)${death:+; guest dead: $death}"
				[ -n "$death" ] && deaths=1
				forensics "$out/death-$i" $src $dst
				break
			fi
			dlog=$cons/guest-$dom--incoming.log
			verify_after "$i" "$dlog"
			r=$?
			mv "$dlog" "$cons/mig-$dom-$i.log"
			death=$(alive_problem)
			[ -z "$death" ] && [ $r = 1 ] && death="guest console stopped after migration $i"
			if [ -n "$death" ]; then
				ts "soak: guest death after migration $i: $death"
				deaths=1
				forensics "$out/death-$i" $src $dst
				break
			fi
			if [ $r != 0 ]; then
				ts "soak: verification failed after migration $i"
				vrc=2; break
			fi
			ts "soak: migration $i of $soak verified"
		done
		# the last guest still runs: one more look
		if [ $deaths = 0 ] && [ $vrc = 0 ]; then
			sleep 10
			death=$(alive_problem)
			[ -n "$death" ] && { deaths=1; forensics "$out/death-end" $cur; }
			verify_failed && vrc=2
		fi
	elif [ -n "$refuse" ]; then
		# refuse=unpatched|nolib|nopaging: a receiver that cannot take a
		# post-copy migration: Debian's own xl; xen-postcopy's xl without
		# libxl_postcopy.so; a hypervisor without mem_paging (the boot
		# is Debian's own hypervisor).  xl migrate must fail before
		# anything is suspended: the same domain keeps running, never
		# paused, its memory checked on after.
		case $refuse in
		unpatched) cmd="/usr/lib/xen-4.17/bin/xl.debian -vvv migrate-receive --postcopy" ;;
		nolib) cmd="env LIBXL_POSTCOPY_LIBRARY=/usr/lib/x86_64-linux-gnu/libxl_postcopy-absent.so.1 xl -vvv migrate-receive --postcopy" ;;
		*) cmd="xl -vvv migrate-receive --postcopy" ;;
		esac
		n0=$(count_in "$slog" 'MEMTEST pass [0-9]* ok=1')
		migrate_once 1
		done_n=1
		refuse_checks
		# the guest went on: two more full passes on the same console
		waitfor "$slog" 'MEMTEST pass [0-9]* ok=1' $((n0 + 2)) "${VERIFY_TIMEOUT:-400}" &&
			! verify_failed && vrc=0
	elif [ "$devfail" = 1 ]; then
		# devfail=1: the destination's toolstack cannot attach the NIC
		# after the switch and destroys the domain before it ever ran
		# there: xl migrate must fail, and the same domain go on here,
		# resumed under its own name, its memory checked on after.
		n0=$(count_in "$slog" 'MEMTEST pass [0-9]* ok=1')
		migrate_once 1
		done_n=1
		nn0=$(count_in "$slog" 'NET pass [0-9]* ok=1')
		waitfor "$slog" 'MEMTEST pass [0-9]* ok=1' $((n0 + 2)) "${VERIFY_TIMEOUT:-400}" &&
			! verify_failed && vrc=0
		# its NIC too: three more verified rounds
		waitfor "$slog" 'NET pass [0-9]* ok=1' $((nn0 + 3)) 120
		devfail_checks
		echo "devfail_net_after=$(($(count_in "$slog" 'NET pass [0-9]* ok=1') - nn0))" >> "$out/devfail.env"
	elif [ "$truncated" = 1 ]; then
		# truncated=1: no migration; receivers fed broken streams
		# (truncated_checks).  Nothing may reach the running guest.
		src=$(xl domid "$dom" 2>/dev/null)
		mrc=0 mig_ms=0
		n0=$(count_in "$slog" 'MEMTEST pass [0-9]* ok=1')
		truncated_checks
		waitfor "$slog" 'MEMTEST pass [0-9]* ok=1' $((n0 + 2)) "${VERIFY_TIMEOUT:-400}" &&
			! verify_failed && vrc=0
	else
		[ -n "$bw_malformed" ] && bwcap_refused "$bw_malformed"
		migrate_once 1
		done_n=1
		if [ -n "$rpid" ]; then
			wait $rpid
			# the receiver's own end (its parent died at the break)
			for t in $(seq 1 60); do [ -s "$out/receive.rc" ] && break; sleep 1; done
			cat "$out/receive.rc" >> "$out/recover.env" 2>/dev/null
			ts "$([ "$pager" = 1 ] && echo pager-kill || echo recover-pipe): $(tr '\n' ' ' < "$out/recover.env")"
			unset LIBXL_POSTCOPY_RECOVER_TIMEOUT
		fi
		if [ -n "$lpid" ]; then
			[ -n "$dpid" ] && { kill $dpid 2>/dev/null; wait $dpid 2>/dev/null; }
			timeout 60 tail --pid=$lpid -f /dev/null
			wait $lpid; ts "tunnel listener rc=$?"
		fi
		dlog=$(ls -t $cons/guest-$dom--incoming.log 2>/dev/null | head -1)
		[ -n "$dlog" ] || dlog=$slog
		if [ -n "$peer" ]; then
			if [ "$peer" = tunnel ]; then
				# the listening end (and xl migrate-receive under it) ends
				# with the migration; its log is the destination's half
				pssh 'timeout 60 tail --pid=$(cat /tmp/tunnel.pid) -f /dev/null; cat /tmp/tunnel-listen.log' >> "$out/migrate.log" 2>&1
				cp "$out/migrate.log" "$out/migrate-1.log"
			fi
			# the destination's console is on host B: a copy here,
			# refreshed while waiting
			fetch=fetch_console
			dlog=$out/guest-$dom--incoming.log
			$fetch
		fi
		if [ "$kill_dest" = 1 ]; then
			death_checks
		elif [ $mrc -eq 0 ]; then
			# two full passes on the destination: every page checked there
			verify_after 1 "$dlog" && vrc=0
		fi
		grep -aq 'MEMTEST BAD\|ok=0' $cons/guest-$dom*.log && vrc=2
		if [ -n "$peer" ]; then
			# a last look at the destination a few seconds on
			sleep 10; fetch_console; fetch=
			verify_failed && vrc=2
		fi
	fi
	kill $dspid 2>/dev/null; wait $dspid 2>/dev/null
	cp /tmp/domstates.log "$out/domstates.log"
	xl list > "$out/xl-list.txt" 2>&1
	{
		echo "name=$name"
		echo "migrate_args='$margs'"
		echo "guest_opts='$gopts'"
		echo "guest_mem_mib=$mem"
		echo "memtest_mib=$mib"
		echo "workload=$workload"
		echo "create_rc=$crc"
		echo "boot_ms=$boot_ms"
		echo "migrate_rc=$mrc"
		echo "migrate_ms=$mig_ms"
		echo "verify_rc=$vrc"
		echo "soak=$soak"
		echo "seq=$seq"
		echo "switch_after=$switch_after"
		echo "migrations_done=$done_n"
		echo "guest_deaths=$deaths"
		echo "death='${death//\'/}'"
		echo "kill_dest=$kill_dest"
		echo "names=$names"
		echo "refuse=$refuse"
		echo "devfail=$devfail"
		echo "truncated=$truncated"
		echo "recover=$recover"
		echo "pager_kill=$pager"
		# after the migration: one domain called $dom, no copy left over
		echo "names_after='$(xl list 2>/dev/null | awk -v n="$dom" 'index($1, n) == 1 { print $1 }' | tr '\n' ' ')'"
		echo "link_drops=$drops"
		echo "guest_type=$gtype"
		echo "nic=${nic:-$([ "$net" = 1 ] && echo pv)}"
		echo "vcpus=$vcpus"
		echo "tsc_mode=${tsc:-default}"
		echo "hosts=$([ -n "$peer" ] && echo 2 || echo 1)"
		echo "transport=$([ -n "$peer" ] && echo "$peer" || { [ "$drops" -gt 0 ] && echo tunnel || echo local; })"
		echo "disk_mib=$disk_mib"
		echo "net=$net"
		echo "clock_offset_ms='$coff'"
		echo "evict=${evict:-range}"
		echo "load=${load:-batch}"
		echo "scan=${scan:-prescan}"
		echo "window=${window:-default}"
		echo "tunnel=$tunnel"
		echo "lane=${lane:-default}"
		echo "push_batch=${batch:-default}"
		echo "push_hold=${hold:-default}"
		echo "bw_malformed=$bw_malformed"
		echo "evict_early=${early:-default}"
		echo "fault_nice=${nice:-default}"
		echo "source_read=${read:-kept}"
		echo "link_outage_s=$outage"
		echo "xen_version='$(xl info | sed -n 's/^xen_version *: //p')'"
		echo "dom0_kernel='$(uname -r)'"
		echo "xl_version='$(xl info | sed -n 's/^xen_extra *: //p')'"
	} > "$out/meta.env"
	cp $cons/guest-$dom*.log $cons/mig-$dom-*.log "$out/" 2>/dev/null
	xl dmesg > "$out/xl-dmesg.txt" 2>&1
	cp /var/log/xen/*.log "$out/" 2>/dev/null
	# dom0's kernel lines of the scenario on every host (result.py checks
	# blkback, netback and the grant driver in them: a backend error fails
	# the scenario, on one host as on two)
	dmesg > "$out/dmesg.txt" 2>&1
	tail -n +"$((dm0 + 1))" "$out/dmesg.txt" > "$out/dmesg-scenario.txt"
	# -f: a failed post-copy's source copy is refused otherwise
	[ -s /tmp/netsrv.pid ] && kill "$(cat /tmp/netsrv.pid)" 2>/dev/null && rm -f /tmp/netsrv.pid
	if [ -n "$peer" ]; then
		pssh /mnt/host/autorun.sh collect "$name"
		pssh /mnt/host/autorun.sh cleanup "$name"
		rm -f "/mnt/storage/disk-$name.img"
	fi
	for d in $(xl list | awk -v n="$dom" 'index($1, n) == 1 { print $1 }'); do xl destroy -f "$d"; done
	# a preserved crashed domain may carry another name: destroy every guest
	for d in $(xl list | awk 'NR > 2 { print $2 }'); do xl destroy -f "$d" 2>/dev/null; done
	ts "=== scenario $name done: migrate_rc=$mrc verify_rc=$vrc deaths=$deaths migrations=$done_n"
	sync
done
[ -n "${HOST_ROLE:-}" ] && pssh touch /tmp/peer-done
ts "autorun end"
exit 0
}
