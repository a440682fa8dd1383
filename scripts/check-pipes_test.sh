#!/usr/bin/env bash
# check-pipes_test.sh — proves that check-pipes.sh flags each early-exit
# reader and passes the safe forms.
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
check=$(dirname "$0")/check-pipes.sh
fail=0
bad=(
	'ldconfig -p | awk '"'"'/x/ { print $NF; exit }'"'"''
	'cmd | head -n1'
	'cmd | grep -q foo'
	'cmd | grep -Eq foo'
	'cmd | grep -m1 foo'
	'cmd 2>/dev/null | grep -qF foo && x'
	'cmd | sed -n 1q'
	'cmd | sed '"'"'/x/q'"'"''
)
good=(
	'x=$(cmd); grep -q foo <<<"$x"'
	'cmd || grep -q foo file'
	'grep -q foo file'
	'cmd | awk '"'"'/x/ && !f { f = $NF } END { print f }'"'"''
	'cmd | grep foo | sort'
	'# cmd | head -n1 (a comment)'
	'{ head -c 32 /dev/zero; echo x; } | sha256sum'
)
for i in "${!bad[@]}"; do
	printf '%s\n' "${bad[$i]}" >"$dir/bad$i.sh"
	if "$check" "$dir/bad$i.sh" 2>/dev/null; then echo "not flagged: ${bad[$i]}" >&2; fail=1; fi
done
for i in "${!good[@]}"; do
	printf '%s\n' "${good[$i]}" >"$dir/good$i.sh"
	if ! "$check" "$dir/good$i.sh"; then echo "wrongly flagged: ${good[$i]}" >&2; fail=1; fi
done
((fail == 0)) && echo "check-pipes: ${#bad[@]} unsafe forms flagged, ${#good[@]} safe forms passed"
exit "$fail"
