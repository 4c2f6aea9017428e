# Reading, checking and applying a patch series, patches/xen-<series>
# (sourced by scripts/xen-build and scripts/xen-series-check, after
# scripts/lib/common.sh).
#
# xen_series_patches DIR
#     the patch names DIR/series lists, in order (comments and blank
#     lines skipped), one a line.
# xen_series_check_headers DIR
#     every patch of DIR/series exists, every *.patch in DIR is in the
#     series, and each starts with a header in Xen's commit style:
#       Subject: <component>: <summary>     (component like x86/mm,
#                                            tools/libs/guest; folded
#                                            continuation lines allowed)
#       <blank line>
#       <body: what and why, at least one line>
#       Signed-off-by: Name <address>       (one or more)
#       ---
#     and no placeholder identity (Your Name, example.com, TODO, ...).
#     Prints one line per problem, returns 1 if there is any.  A sign-off
#     with an address at localhost is accepted with a warning: it is the
#     project's identity, and whoever posts the series signs off with
#     their own (a DCO sign-off is a person's).
# xen_series_push DIR STRICT
#     in the current directory (a Xen tree, QUILT_PATCHES=DIR and QUILT_PC
#     set by the caller, nothing of the series pushed), `quilt push
#     --fuzz=0` each patch in turn: a patch that needs fuzz or does not
#     apply stops with its name and quilt's output.  A hunk that applies
#     only at an offset is an error when STRICT is 1 (the series is not
#     refreshed against this source: `quilt refresh` it), else a warning.

xen_series_patches() {
	local p
	[ -f "$1/series" ] || die "$1/series missing"
	while read -r p _; do
		case "$p" in "" | \#*) continue ;; esac
		printf '%s\n' "$p"
	done <"$1/series"
}

# _xen_patch_header FILE: the lines before the diff starts.
_xen_patch_header() {
	awk '/^(---( |$)|diff |Index: |\+\+\+ )/ { exit } { print }' "$1"
}

xen_series_check_headers() {
	local dir=$1 bad=0 p f hdr subj n local_n=0
	local listed
	listed=$(xen_series_patches "$dir") || return 1
	for f in "$dir"/*.patch; do
		[ -e "$f" ] || continue
		grep -qxF "$(basename "$f")" <<<"$listed" ||
			{ echo "$(basename "$f"): not in $dir/series"; bad=1; }
	done
	while read -r p; do
		f=$dir/$p
		[ -f "$f" ] || { echo "$p: listed in the series, file missing"; bad=1; continue; }
		hdr=$(_xen_patch_header "$f")
		# The subject: the first line, with its folded continuations.
		subj=$(awk 'NR == 1 { s = $0; next } /^[ \t]/ && !b { s = s $0; next } { b = 1 } END { print s }' <<<"$hdr")
		if ! grep -qE '^Subject: [A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*: [^ ]' <<<"$subj"; then
			echo "$p: the first line is not 'Subject: <component>: <summary>' (got: $(head -1 <<<"$hdr"))"
			bad=1
		fi
		# The body: non-blank lines after the subject's blank line that
		# are not tags.
		n=$(awk 'NR > 1 && !/^[ \t]/ { b = 1 } b' <<<"$hdr" |
			grep -vE '^[A-Za-z-]+-by: |^Cc: |^$' | grep -c . || true)
		[ "$n" -ge 1 ] || { echo "$p: no body (what and why) after the subject"; bad=1; }
		[ -z "$(awk 'NR > 1 && !/^[ \t]/ { print; exit }' <<<"$hdr")" ] ||
			{ echo "$p: no blank line between the subject and the body"; bad=1; }
		if ! grep -qE '^Signed-off-by: [^<>]*[^ <>][^<>]* <[^<>@ ]+@[^<>@ ]+>$' <<<"$hdr"; then
			echo "$p: no 'Signed-off-by: Name <address>' line"
			bad=1
		fi
		if grep -inE 'your[ ._-]?name|firstname|lastname|john doe|jane doe|@example\.(com|org|net)|<you@|placeholder|\bTODO\b|\bFIXME\b|\bXXX\b|^From: .*@localhost' <<<"$hdr" |
			sed "s|^|$p: placeholder in the header, line |" | grep .; then
			bad=1
		fi
		grep -qE '^Signed-off-by: .*@localhost>' <<<"$hdr" && local_n=$((local_n + 1))
	done <<<"$listed"
	[ "$local_n" -eq 0 ] ||
		echo "warning: $local_n patches of $dir are signed off with a localhost address (the project's identity): whoever posts them signs off with their own" >&2
	return $bad
}

xen_series_push() {
	local dir=$1 strict=$2 p out off
	while read -r p; do
		[ -f "$dir/$p" ] || die "series names $p, which is not in $dir"
		if ! out=$(quilt push --fuzz=0 "$p" 2>&1); then
			printf '%s\n' "$out" >&2
			die "patch $p does not apply without fuzz to $(basename "$PWD")"
		fi
		off=$(grep -E '^Hunk #[0-9]+ succeeded at [0-9]+ \(offset' <<<"$out" || true)
		if [ -n "$off" ]; then
			printf '%s\n' "$out" >&2
			[ "$strict" = 1 ] &&
				die "patch $p applies only at offsets to $(basename "$PWD"): refresh it against this source (quilt refresh)"
			printf 'warning: patch %s applies at offsets (not refreshed against this source)\n' "$p" >&2
		fi
		printf 'applied %s\n' "$p" >&2
	done < <(xen_series_patches "$dir")
}
