# Sourced by the benchmark scripts (after cd to the repository root).
# unfinished DIR: true, with DIR removed, unless DIR holds a finished run (its results.json), so that
# `unfinished "$dir" && python -m dfkd.run ... hydra.run.dir="$dir"` skips finished runs and starts an
# interrupted one again (dfkd refuses a run folder that holds a run: nothing is overwritten by mistake).
unfinished() { [ -f "$1/results.json" ] && return 1; rm -rf "$1"; }
