# Shared helpers for the project's shell scripts (sourced, not run).

step() { printf '\n==> %s [%s]\n' "$*" "$(date +%T)"; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: install the Debian packages that are missing, once.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	if [ -z "${APT_UPDATED:-}" ]; then
		$sudo apt-get update -qq
		export APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
