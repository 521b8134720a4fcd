# Sourced by the GPU scripts: puts the directories that may hold hgpt's CUDA
# libraries on LD_LIBRARY_PATH, in this order, before what was there: the toolkit
# ($CUDA_HOME, /usr/local/cuda), then pip's nvidia/cu13 (hgpt's own cache dir, then
# any Python's site-packages), and beside each pip's nvidia/nccl/lib (libnccl.so.2,
# from nvidia-nccl-cu13). The toolkit comes first so that one NVRTC and its own
# libnvrtc-builtins are loaded together. The loader's cache (ldconfig -p) is searched
# after these anyway.
cuda_dirs=("${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64
           "${HGPT_CUDA_PIP:-$HOME/.cache/hgpt/cuda-pip}/nvidia/cu13/lib"
           "${HGPT_CUDA_PIP:-$HOME/.cache/hgpt/cuda-pip}/nvidia/nccl/lib")
if command -v python3 >/dev/null; then
    while read -r d; do cuda_dirs+=("$d"); done < <(python3 -c \
        'import site; [print(p + "/nvidia/" + d + "/lib") for p in site.getsitepackages() for d in ("cu13", "nccl")]' 2>/dev/null)
fi
cuda_path=""
for d in "${cuda_dirs[@]}"; do
    [ -d "$d" ] && [[ ":$cuda_path:" != *":$d:"* ]] && cuda_path="${cuda_path:+$cuda_path:}$d"
done
export LD_LIBRARY_PATH="$cuda_path${LD_LIBRARY_PATH:+${cuda_path:+:}$LD_LIBRARY_PATH}"
unset cuda_dirs cuda_path
