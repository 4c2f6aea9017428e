# Which Xen series a script works on (sourced by scripts/xen-source and
# scripts/xen-build, after scripts/lib/common.sh).
#
# xen_version_select SERIES sets:
#   XEN_SERIES     4.17 or 4.20 (patches/xen-$XEN_SERIES)
#   XEN_CODENAME   the Debian release that ships it: bookworm (Debian 12)
#                  or trixie (Debian 13)
#   XEN_SUITES     the suites tried for its source, security suite first
#   XEN_BUILD      the build folder: $XEN_BUILD_DIR if set, else
#                  <repo>/build/xen for 4.17 (the folder scripts/testbed
#                  and scripts/xen-image read) and <repo>/build/xen-4.20
#                  for 4.20, so both series can be built side by side.
#
# 4.17 stays the default until the testbed passes on 4.20.

XEN_SERIES_DEFAULT=4.17
XEN_SERIES_ALL="4.17 4.20"

xen_version_select() {
	XEN_SERIES=$1
	case $XEN_SERIES in
	4.17) XEN_CODENAME=bookworm ;;
	4.20) XEN_CODENAME=trixie ;;
	*) die "Xen $XEN_SERIES: this project has series for $XEN_SERIES_ALL" ;;
	esac
	XEN_SUITES="$XEN_CODENAME-security $XEN_CODENAME"
	if [ -n "${XEN_BUILD_DIR:-}" ]; then
		XEN_BUILD=$XEN_BUILD_DIR
	elif [ "$XEN_SERIES" = "$XEN_SERIES_DEFAULT" ]; then
		XEN_BUILD=$top/build/xen
	else
		XEN_BUILD=$top/build/xen-$XEN_SERIES
	fi
	export XEN_SERIES XEN_CODENAME XEN_SUITES XEN_BUILD
}
