#!/bin/bash
# Runs inside the emulated host's dom0 (from /sbin/xeninit): the scenarios
# listed in /mnt/host/scenarios, one per line:
#   RESULT_NAME GUEST_OPTS... -- XL_MIGRATE_ARGS...
# GUEST_OPTS are kernel command line words for the guest (memtest_mib=64
# memtest_syscalls=1 balloon=1 workload=stress stress_mib=M tmpfs_mib=M)
# and words for this script: settle=SECS, guest=hvm, evict=per-page,
# load=per-page, scan=stop,
# link_drops=N, link_outage=SECS, soak=N (N migrations back and forth in
# one boot, stopping at the first guest death), kill_dest=1 (crash the
# destination guest mid-post-copy), switch_after=S (`xl-postcopy switch`
# on the source S s into the migration), mem=MIB (this scenario's guest memory
# instead of GUEST_MEM), seq=MODE,MODE,... (the same guest migrated once
# per MODE in one boot, like the soak: precopy, hybrid or postcopy, each
# after SEED_SETTLE (20) s of undisturbed work and with xl's stream counted
# by a dd in front of the receiver: stream-I.txt).  Each scenario's logs, a meta.env and
# (per migration) migrations.env go to /mnt/host/results/RESULT_NAME/;
# domstates (dom0's poller of every domain's paused/shutdown state) writes
# domstates.log there; the host turns them into result.json.  The body sits in { } so that editing this file
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
waitfor() { # waitfor FILE REGEX N TIMEOUT: N matching lines
	local t=0
	while [ "$(count_in "$1" "$2")" -lt "$3" ]; do
		sleep 1; t=$((t+1))
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
	ts "migrate $i: xl -vvv migrate $margs -s '' $dom '$cmd' (from id $src)"
	s=$(now)
	# evict=per-page: the destination pages owed pfns out with populate +
	# nominate + evict, not the hypervisor's range op; load=per-page: it
	# loads owed pages with xc_mem_paging_load one by one, not the batch
	# op (for comparison); scan=stop: the source finds the populated pfns
	# while the guest is stopped, not in a prescan while it runs.
	LIBXL_POSTCOPY_EVICT=$evict LIBXL_POSTCOPY_LOAD=$load LIBXL_POSTCOPY_SCAN=$scan timeout "${MIGRATE_TIMEOUT:-600}" xl -vvv migrate $margs -s "" $dom "$cmd" >> "$mlog" 2>&1 &
	mpid=$!
	monitor "$out" $mpid "$mlog" &
	monpid=$!
	sample_status "$out/status-$i" $mpid &
	stpid=$!
	if [ "$kill_dest" = 1 ]; then kill_destination "$mlog" $mpid $src & kpid=$!; fi
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
	[ -n "$kpid" ] && wait $kpid
	mig_ms=$(ms "$s" "$e")
	dst=$(xl domid "$dom" 2>/dev/null)
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
kill_destination() {
	local mlog=$1 mpid=$2 srcid=$3 t=0 d= st= prog off
	while kill -0 "$mpid" 2>/dev/null && [ $t -lt 1200 ]; do
		read -r d st <<< "$(xl list 2>/dev/null | awk -v n="$dom" -v s="$srcid" 'index($1, n) == 1 && $2 != s { print $2, $5 }')"
		if [ -n "$d" ] && [ "${st#*p}" = "$st" ] && grep -aq 'Post-copy pages' "$mlog"; then break; fi
		d=
		sleep 0.5; t=$((t + 1))
	done
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
	if [ "$workload" = stress ]; then
		waitfor "$dlog" 'TMPFS check' 1 "$t" || return 1
		waitfor "$dlog" 'STRESS run' 1 "$t" || return 1
	fi
	verify_failed && return 2
	return 0
}
verify_failed() {
	cat $cons/guest-$dom*.log $cons/mig-$dom-*.log 2>/dev/null |
		grep -aqE 'MEMTEST BAD|ok=0|STRESS run [0-9]+ rc=[1-9]|fail_lines=[1-9]|TMPFS check [0-9]+ ok=0'
}
ts "autorun start"
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
	mib=64 settle=0 drops=0 outage=5 gtype=pvh evict= load= scan= kept= workload=memtest soak=0 kill_dest=0 vcpus=1
	mem=${GUEST_MEM:-256} seq= mode= switch_after=
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
		soak=*) soak=${o#*=}; continue ;;
		kill_dest=*) kill_dest=${o#*=}; continue ;;
		vcpus=*) vcpus=${o#*=}; continue ;;
		mem=*) mem=${o#*=}; continue ;;
		switch_after=*) switch_after=${o#*=}; continue ;;
		seq=*) seq=${o#*=}; soak=$(echo "$seq" | tr ',' '\n' | grep -c .); continue ;;
		esac
		kept="$kept $o"
	done
	gopts=$kept
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
	ramdisk=/mnt/host/guest.cpio.gz
	[ "$workload" = stress ] && ramdisk=/mnt/host/guest-stress.cpio.gz
	cat > /tmp/$dom.cfg <<CFG
name="$dom"
type="$gtype"
$hvm_cfg
kernel="/mnt/host/vmlinuz"
ramdisk="$ramdisk"
extra="console=hvc0 memtest_mib=$mib $gopts"
memory=$mem
maxmem=$mem
vcpus=$vcpus
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
	s=$(now)
	xl create /tmp/$dom.cfg > "$out/create.log" 2>&1
	crc=$?
	ts "create rc=$crc"
	slog=$cons/guest-$dom.log
	# the first two full passes: the pattern is written and verified once
	waitfor $slog 'MEMTEST pass [0-9]* ok=1' 2 300
	[ "$workload" = stress ] && waitfor $slog 'TMPFS ready' 1 120
	boot_ms=$(ms "$s" "$(now)")
	[ "$settle" -gt 0 ] && { ts "settling ${settle}s"; sleep "$settle"; }
	recv="xl -vvv migrate-receive"
	case " $margs " in *" --postcopy "*) recv="$recv --postcopy" ;; esac
	: > "$out/migrate.log"
	: > "$out/migrations.env"
	: > "$out/migrate-1.log"
	cmd=$recv lpid= dpid=
	if [ "$drops" -gt 0 ]; then
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
		(
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
		dpid=$!
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
	else
		migrate_once 1
		done_n=1
		if [ -n "$lpid" ]; then
			[ -n "$dpid" ] && { kill $dpid 2>/dev/null; wait $dpid 2>/dev/null; }
			timeout 60 tail --pid=$lpid -f /dev/null
			wait $lpid; ts "tunnel listener rc=$?"
		fi
		dlog=$(ls -t $cons/guest-$dom--incoming.log 2>/dev/null | head -1)
		[ -n "$dlog" ] || dlog=$slog
		if [ "$kill_dest" = 1 ]; then
			death_checks
		elif [ $mrc -eq 0 ]; then
			# two full passes on the destination: every page checked there
			verify_after 1 "$dlog" && vrc=0
		fi
		grep -aq 'MEMTEST BAD\|ok=0' $cons/guest-$dom*.log && vrc=2
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
		echo "link_drops=$drops"
		echo "guest_type=$gtype"
		echo "vcpus=$vcpus"
		echo "evict=${evict:-range}"
		echo "load=${load:-batch}"
		echo "scan=${scan:-prescan}"
		echo "link_outage_s=$outage"
		echo "xen_version='$(xl info | sed -n 's/^xen_version *: //p')'"
		echo "dom0_kernel='$(uname -r)'"
		echo "xl_version='$(xl info | sed -n 's/^xen_extra *: //p')'"
	} > "$out/meta.env"
	cp $cons/guest-$dom*.log $cons/mig-$dom-*.log "$out/" 2>/dev/null
	xl dmesg > "$out/xl-dmesg.txt" 2>&1
	cp /var/log/xen/*.log "$out/" 2>/dev/null
	for d in $(xl list | awk -v n="$dom" 'index($1, n) == 1 { print $1 }'); do xl destroy "$d"; done
	# a preserved crashed domain may carry another name: destroy every guest
	for d in $(xl list | awk 'NR > 2 { print $2 }'); do xl destroy "$d" 2>/dev/null; done
	ts "=== scenario $name done: migrate_rc=$mrc verify_rc=$vrc deaths=$deaths migrations=$done_n"
	sync
done
ts "autorun end"
exit 0
}
