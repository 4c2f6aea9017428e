#!/bin/bash
# Runs inside the emulated host's dom0 (from /sbin/xeninit): the scenarios
# listed in /mnt/host/scenarios, one per line:
#   RESULT_NAME GUEST_OPTS... -- XL_MIGRATE_ARGS...
# GUEST_OPTS are kernel command line words for the guest (memtest_mib=64
# memtest_syscalls=1 balloon=1 settle=SECS).  Each scenario's logs and
# a meta.env go to /mnt/host/results/RESULT_NAME/; the host turns them
# into result.json.  The body sits in { } so that editing this file
# during a run cannot break the run.
{
export PATH=/usr/lib/xen-4.17/bin:$PATH
# GUEST_MEM, MIGRATE_TIMEOUT, STALL_KILL from the host
[ -r /mnt/host/env ] && . /mnt/host/env
ts() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%d", (b-a)*1000}'; }
# count_in FILE REGEX: matching lines
count_in() { grep -ac -e "$2" "$1" 2>/dev/null || true; }
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
# monitor OUT PID: one line every 5 s; diag when migrate.log stops growing.
monitor() {
	local out=$1 pid=$2 last=-1 same=0 n
	while kill -0 "$pid" 2>/dev/null; do
		sleep 5
		n=$(stat -c %s "$out/migrate.log" 2>/dev/null || echo 0)
		echo "[$(cut -d' ' -f1 /proc/uptime)] log=$n $(grep -a 'Post-copy pages' "$out/migrate.log" | tail -n 1)" >> "$out/monitor.log"
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
	mib=64 settle=0 drops=0 outage=5 gtype=pvh evict= kept=
	for o in $gopts; do
		case $o in
		memtest_mib=*) mib=${o#*=} ;;
		settle=*) settle=${o#*=} ;;
		link_drops=*) drops=${o#*=}; continue ;;
		link_outage=*) outage=${o#*=}; continue ;;
		guest=*) gtype=${o#*=}; continue ;;
		evict=*) evict=${o#*=}; continue ;;
		esac
		kept="$kept $o"
	done
	gopts=$kept
	mem=${GUEST_MEM:-256}
	# hvm: an HVM guest on HAP with QEMU (qemu-xen) as device model, its
	# platform state migrating with it; Linux's PV drivers give it the
	# same hvc0 console as the PVH guest.
	hvm_cfg=
	[ "$gtype" = hvm ] && hvm_cfg='hap=1
vga="none"
vnc=0
sdl=0
serial="none"'
	cat > /tmp/$dom.cfg <<CFG
name="$dom"
type="$gtype"
$hvm_cfg
kernel="/mnt/host/vmlinuz"
ramdisk="/mnt/host/guest.cpio.gz"
extra="console=hvc0 memtest_mib=$mib $gopts"
memory=$mem
maxmem=$mem
vcpus=1
on_crash="preserve"
CFG
	ts "=== scenario $name: guest '$gopts', xl migrate $margs"
	rm -f $cons/guest-$dom*.log
	s=$(now)
	xl create /tmp/$dom.cfg > "$out/create.log" 2>&1
	crc=$?
	ts "create rc=$crc"
	slog=$cons/guest-$dom.log
	# the first two full passes: the pattern is written and verified once
	waitfor $slog 'MEMTEST pass [0-9]* ok=1' 2 300
	boot_ms=$(ms "$s" "$(now)")
	[ "$settle" -gt 0 ] && { ts "settling ${settle}s"; sleep "$settle"; }
	recv="xl -vvv migrate-receive"
	case " $margs " in *" --postcopy "*) recv="$recv --postcopy" ;; esac
	: > "$out/migrate.log"
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
	ts "migrate: xl -vvv migrate $margs -s '' $dom '$cmd'"
	s=$(now)
	# evict=per-page: the destination pages owed pfns out with populate +
	# nominate + evict, not the hypervisor's range op (for comparison).
	LIBXL_POSTCOPY_EVICT=$evict timeout "${MIGRATE_TIMEOUT:-600}" xl -vvv migrate $margs -s "" $dom "$cmd" >> "$out/migrate.log" 2>&1 &
	mpid=$!
	monitor "$out" $mpid &
	monpid=$!
	wait $mpid
	mrc=$?
	e=$(now)
	kill $monpid 2>/dev/null; wait $monpid 2>/dev/null
	ts "migrate rc=$mrc $(ms "$s" "$e") ms"
	if [ -n "$lpid" ]; then
		[ -n "$dpid" ] && { kill $dpid 2>/dev/null; wait $dpid 2>/dev/null; }
		timeout 60 tail --pid=$lpid -f /dev/null
		wait $lpid; ts "tunnel listener rc=$?"
	fi
	xl list > "$out/xl-list.txt" 2>&1
	dlog=$(ls -t $cons/guest-$dom--incoming.log 2>/dev/null | head -1)
	[ -n "$dlog" ] || dlog=$slog
	vrc=1
	if [ $mrc -eq 0 ]; then
		# two full passes on the destination: every page checked there
		waitfor "$dlog" 'MEMTEST pass [0-9]* ' 2 "${VERIFY_TIMEOUT:-400}" && vrc=0
	fi
	grep -aq 'MEMTEST BAD\|ok=0' $cons/guest-$dom*.log && vrc=2
	xl list >> "$out/xl-list.txt" 2>&1
	{
		echo "name=$name"
		echo "migrate_args='$margs'"
		echo "guest_opts='$gopts'"
		echo "guest_mem_mib=$mem"
		echo "memtest_mib=$mib"
		echo "create_rc=$crc"
		echo "boot_ms=$boot_ms"
		echo "migrate_rc=$mrc"
		echo "migrate_ms=$(ms "$s" "$e")"
		echo "verify_rc=$vrc"
		echo "link_drops=$drops"
		echo "guest_type=$gtype"
		echo "evict=${evict:-range}"
		echo "link_outage_s=$outage"
		echo "xen_version='$(xl info | sed -n 's/^xen_version *: //p')'"
		echo "dom0_kernel='$(uname -r)'"
		echo "xl_version='$(xl info | sed -n 's/^xen_extra *: //p')'"
	} > "$out/meta.env"
	cp $cons/guest-$dom*.log "$out/" 2>/dev/null
	xl dmesg > "$out/xl-dmesg.txt" 2>&1
	cp /var/log/xen/*.log "$out/" 2>/dev/null
	for d in $(xl list | awk -v n="$dom" 'index($1, n) == 1 { print $1 }'); do xl destroy "$d"; done
	ts "=== scenario $name done: migrate_rc=$mrc verify_rc=$vrc"
	sync
done
ts "autorun end"
exit 0
}
