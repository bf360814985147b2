# Sourced by the scripts run on the lent GPU machine (no network): install the carried wheels (.whl/) into
# /tmp/site and set the environment every GPU call needs. Usage: source benchmarks/gpu_env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
# Bytecode now, as pip does on a normal install (--no-compile above keeps the wheel step short): otherwise
# the first stage of a timed run spends ~10 s compiling library sources (seen in a GPU profile).
python3 -m compileall -q -j 0 /tmp/site >/dev/null 2>&1 || true
# NVLink multicast off (it can take a shared host's GPUs out of service).
# The wheels install the libraries, not this project: its plug-ins (the synthetic world, redteam's prompt source) are
# named here instead of through the package's entry points.
export SAFE_DIFFUSION_DPO_PLUGINS=${SAFE_DIFFUSION_DPO_PLUGINS:-synthetic_world.plugin,redteam.plugin}
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# Compiled kernels and graphs in the (git-ignored) working tree: the device keeps it between calls while the
# machine is warm, so a second call skips the compile that a first one started (SDXL's whole-UNet compile
# alone can outlast one call on an H100 host). Only the untimed first interval changes.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.compile_cache/inductor} \
  TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.compile_cache/triton}
