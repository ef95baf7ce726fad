#!/usr/bin/env bash
# The wheels a GPU image lacks, for a machine that installs nothing from the network.
#
# The image (JAX 0.11.2 + its CUDA 13 plugin, PyTorch 2.11, flax, optax, orbax-checkpoint, tensorstore,
# sentencepiece, transformers, safetensors, pytest; Python 3.12) has no grain and no ml-collections, which
# llada_jax imports at run time (llada_jax/config.py, llada_jax/data/pipeline.py). This downloads, for CPython 3.12
# on x86-64 Linux, those two, the requirements of theirs the image lacks, tensorboardX (metrics.jsonl's TensorBoard
# twin, optional at run time but asserted by tests/test_train.py and tests/test_goodput.py) and this package as a
# wheel, into an ignored folder; it fails when they total more than 64 MiB (what one device call carries).
# Versions are the ones CI's virtual environment resolves (so the device runs what CI tested).
#
#   bash benchmarks/gpu_wheels.sh [DIR]            # download (default DIR: .gpu-wheels)
#   WITH_PLOTS=1 bash benchmarks/gpu_wheels.sh     # also matplotlib and its requirements (`llada sweep` plots, .png
#                                                  # pictures; lazily imported, so only those commands/tests need it)
#   bash benchmarks/gpu_wheels.sh --install [DIR]  # on the device (run tool: carry [".gpu-wheels"]): install them
#
# Not carried, because the image has them through flax / orbax-checkpoint / optax / transformers: absl-py, etils
# (+ fsspec, zipp), PyYAML, psutil, numpy, packaging, protobuf. grain's generated code needs protobuf >= 5.28.3:
# a protobuf wheel waits in DIR/if-needed/ and --install puts it in only when the image's is older.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT=$((64 * 1024 * 1024))

if [ "${1:-}" = "--install" ]; then
    DIR=${2:-.gpu-wheels}
    export PIP_BREAK_SYSTEM_PACKAGES=1  # an image's system Python (PEP 668); older pips ignore the variable
    "$PY" -m pip install --no-index --no-deps "$DIR"/*.whl
    if ! "$PY" -c "import sys, google.protobuf as p; sys.exit(tuple(map(int, p.__version__.split('.')[:3])) < (5, 28, 3))"
    then
        "$PY" -m pip install --no-index --no-deps "$DIR"/if-needed/protobuf-*.whl
    fi
    "$PY" -c "import grain, ml_collections, tensorboardX, jax, llada_jax.cli, llada_jax.config as c; c.load_config(); \
print('gpu wheels: ok; jax', jax.__version__, 'grain', grain.__version__)"
    exit 0
fi

DIR=${1:-.gpu-wheels}
rm -rf "$DIR"
mkdir -p "$DIR/if-needed"
# pip does not widen one --platform to older manylinux tags: name each (grain: 2_28; array-record: 2014/2_17).
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
GET=("$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
     --abi none "${PLATFORMS[@]}" --no-deps)
WHEELS=(
    grain==0.2.18          # requires absl-py, array-record>=0.8.1, cloudpickle, etils[epath,epy], numpy,
                           # portpicker, protobuf>=5.28.3
    array-record==0.8.6    # imported by `import grain` (grain/_src/python/data_sources.py); requires absl-py, etils
    cloudpickle==3.1.3
    portpicker==1.6.0      # requires psutil (in the image: orbax-checkpoint)
    ml-collections==1.1.0  # requires absl-py, PyYAML
    tensorboardX==2.6.5    # requires numpy, packaging, protobuf>=3.20
)
if [ "${WITH_PLOTS:-0}" = "1" ]; then
    WHEELS+=(matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.69.1 kiwisolver==1.5.1 pillow==13.0.0
             pyparsing==3.3.3 python-dateutil==2.9.0.post0 six==1.17.0)
fi
"${GET[@]}" -d "$DIR" "${WHEELS[@]}"
"${GET[@]}" -d "$DIR/if-needed" protobuf==7.36.2
# This package (its configs/ ship inside it as llada_jax.configs); --no-deps: the image provides the rest. Built
# from a copy of the checkout's files (tracked and not ignored) so that no build/ or egg-info lands in the tree.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
"$PY" - "$SRC" <<'EOF'
import os, shutil, subprocess, sys
names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.decode().split("\0")
for name in filter(os.path.isfile, filter(None, names)):  # (a tracked file deleted in the tree is skipped)
    os.makedirs(os.path.join(sys.argv[1], os.path.dirname(name)), exist_ok=True)
    shutil.copy2(name, os.path.join(sys.argv[1], name))
EOF
if "$PY" -c "import setuptools" 2>/dev/null; then ISOLATION=--no-build-isolation; else ISOLATION=; fi
OUT=$(cd "$DIR" && pwd)
(cd "$SRC" && "$PY" -m pip wheel -q --no-deps $ISOLATION . -w "$OUT")

echo "wheels in $DIR:"
total=0
while IFS= read -r f; do
    size=$(stat -c %s "$f")
    total=$((total + size))
    printf "  %10d  %s\n" "$size" "${f#"$DIR"/}"
done < <(find "$DIR" -name '*.whl' | sort)
awk -v t="$total" 'BEGIN { printf "total: %d bytes (%.2f MiB; limit 64 MiB)\n", t, t / 1048576 }'
if [ "$total" -gt "$LIMIT" ]; then
    echo "over the 64 MiB a device call carries" >&2
    exit 1
fi
