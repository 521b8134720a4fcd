# Sourced by the GPU scripts: puts the directories that may hold hgpt's CUDA
# libraries on LD_LIBRARY_PATH: the toolkit, pip's nvidia/cu13 (hgpt's own cache dir,
# or any Python's site-packages); the loader's cache (ldconfig -p) is searched anyway.
cuda_dirs=("${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64
           "${HGPT_CUDA_PIP:-$HOME/.cache/hgpt/cuda-pip}/nvidia/cu13/lib")
if command -v python3 >/dev/null; then
    while read -r d; do cuda_dirs+=("$d"); done < <(python3 -c \
        'import site; [print(p + "/nvidia/cu13/lib") for p in site.getsitepackages()]' 2>/dev/null)
fi
for d in "${cuda_dirs[@]}"; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
