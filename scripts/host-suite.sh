#!/bin/sh
# host-suite.sh PYTHON WAKE -- the host suite on one more CPython (make test-pythons):
# its own .venv-3.X in the checkout, the package and its test extras installed there,
# then pytest with AIOZCRX_WAKE=WAKE. The differential contract test draws 40 scripts
# here (150 on the default Python). Run from the checkout; exits with pytest's status.
py=$1 wake=$2
v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || exit 1
venv=.venv-$v
test -x "$venv/bin/python" || "$py" -m venv "$venv" || exit 1
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,uvloop,anyio]' || exit 1
echo "== host suite on Python $v ($py), wake-up path: AIOZCRX_WAKE=$wake"
AIOZCRX_WAKE=$wake AIOZCRX_CONTRACT_EXAMPLES=40 exec "$venv/bin/python" -m pytest -q -p no:cacheprovider
