#!/usr/bin/env bash
# benchmarks.gpu_check on a GPU machine, from its own image: add what is missing, then run.
#
#   bash benchmarks/gpu_check.sh --cifar .gpu_data/cifar10 [more gpu_check options]
#
# 0. *.bin.xz and *.bin.gz files in the --cifar folder are unpacked in place (xz -9e makes the
#    two files a study reads small enough to travel with the repository through the device
#    tool; Python's lzma and gzip unpack them, as an image may lack the xz command).
# 1. .gpu_data/site, when it exists, goes on PYTHONPATH: pure-Python packages copied there
#    travel with the repository to a machine that cannot reach PyPI (README, Benchmarks).
# 2. Python packages the check imports and cannot find are installed by pip, at the versions
#    requirements.txt pins (only those: an image's own jax, flax, ... are left as they are).
# 3. JAX's CUDA backend, if JAX sees no GPU: pip install "jax[cuda12]==<the installed jax>"
#    (the same version, so flax and the pins keep fitting).
#    Steps 2 and 3 fail with a message and exit 3 when PyPI cannot be reached, or when JAX still
#    sees no GPU afterwards.
# 4. python -m benchmarks.gpu_check --out DIR "$@": the report is DIR/gpu_check_<device>_<date>.json,
#    DIR being $OUT when set (the device tool's output folder), else benchmarks/results. A later
#    --out wins.
# With --smoke among the options nothing needs a GPU (step 3 is left out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
say() { echo "gpu_check.sh: $*" >&2; }
pip_install() {  # fail fast where PyPI is out of reach
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1 "$@"
}

# --cifar DIR may hold the binary files packed (data_batch_1.bin.xz ...: 44 MiB with xz -9e, 54
# with gzip -9, against 59 unpacked; what lets them travel through the device tool's 64 MiB beside
# the repository): unpack in place
cifar=""
previous=""
for argument in "$@"; do
  [ "$previous" = "--cifar" ] && cifar=$argument
  case $argument in --cifar=*) cifar=${argument#--cifar=} ;; esac
  previous=$argument
done
if [ -n "$cifar" ] && [ -d "$cifar" ]; then
  for packed in "$cifar"/*.bin.xz "$cifar"/*.bin.gz; do
    [ -e "$packed" ] || continue
    say "unpacking $packed"
    "$PYTHON" -c 'import gzip, lzma, os, shutil, sys
packed = sys.argv[1]
unpacked = packed[:-3]
with (lzma if packed.endswith(".xz") else gzip).open(packed) as source, \
        open(unpacked + ".part", "wb") as target:
    shutil.copyfileobj(source, target, 1 << 20)
os.replace(unpacked + ".part", unpacked)
os.remove(packed)' "$packed"
  done
fi

if [ -d .gpu_data/site ]; then
  export PYTHONPATH="$PWD/.gpu_data/site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$("$PYTHON" - <<'EOF'
import importlib.util
import re
modules = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint",
           "ml_collections": "ml-collections", "absl": "absl-py", "numpy": "numpy",
           "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm",
           "pytest": "pytest", "hypothesis": "hypothesis"}
pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", open("requirements.txt").read(), re.M))
for module, package in modules.items():
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        print(f"{package}=={pins[package]}" if package in pins else package)
EOF
)
if [ -n "$missing" ]; then
  say "installing what this Python lacks: $(echo $missing)"
  # shellcheck disable=SC2086
  pip_install $missing || {
    say "pip could not install $(echo $missing) (no route to PyPI?). Copy pure-Python packages"
    say "into .gpu_data/site (README, Benchmarks) or install them by hand."
    exit 3
  }
fi

backend() { "$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null || echo none; }
smoke=0
for argument in "$@"; do [ "$argument" = "--smoke" ] && smoke=1; done
if [ "$smoke" = 0 ] && [ "$(backend)" != gpu ]; then
  version=$("$PYTHON" -c "import jax; print(jax.__version__)")
  say "JAX $version has no GPU backend here ($(backend)); installing jax[cuda12]==$version"
  command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || say "(nvidia-smi not found)"
  pip_install "jax[cuda12]==$version" || {
    say "pip could not install jax[cuda12]==$version (no route to PyPI?); install it by hand,"
    say "or run with --smoke for the CPU"
    exit 3
  }
  if [ "$(backend)" != gpu ]; then
    say "JAX still has no GPU backend after installing jax[cuda12] (driver or CUDA mismatch?):"
    "$PYTHON" -c "import jax; print(jax.devices())" >&2 || true
    exit 3
  fi
fi

# --out FOLDER: gpu_check names the file gpu_check_<device>_<date>.json in it
exec "$PYTHON" -m benchmarks.gpu_check --out "${OUT:-benchmarks/results}" "$@"
