//! Finding the CUDA libraries at run time.
//!
//! cudarc opens libcuda, libnvrtc and libcublasLt by bare name on first use and
//! panics when one is missing, so every library is checked here first. A library
//! the loader cannot find by name is looked for in the usual install places (CUDA_HOME,
//! CUDA_PATH, /usr/local/cuda, pip's nvidia/cu13 in HGPT_CUDA_PIP,
//! ~/.cache/hgpt/cuda-pip or a Python site-packages; the driver also where container
//! runtimes mount it, /usr/local/nvidia/lib64 and lib) and opened there by full path:
//! the dynamic loader then resolves cudarc's later open by the library's SONAME to the
//! copy already loaded. What cannot be found becomes one line naming the library and
//! how to point hgpt at it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Result, bail};

/// A CUDA library hgpt loads at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Driver,
    Nvrtc,
    CublasLt,
    /// NCCL, for data-parallel training (src/dist/nccl.rs).
    Nccl,
}

impl Lib {
    /// The file the loader looks for (CUDA 13 for the toolkit libraries).
    pub fn soname(self) -> &'static str {
        match self {
            Lib::Driver => "libcuda.so.1",
            Lib::Nvrtc => "libnvrtc.so.13",
            Lib::CublasLt => "libcublasLt.so.13",
            Lib::Nccl => "libnccl.so.2",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Lib::Driver => "the NVIDIA driver",
            Lib::Nvrtc => "NVRTC, CUDA 13",
            Lib::CublasLt => "cuBLASLt, CUDA 13",
            Lib::Nccl => "NCCL",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Lib::Driver => {
                "install the NVIDIA driver, or add the directory holding it to LD_LIBRARY_PATH"
            }
            Lib::Nvrtc => {
                "set CUDA_HOME to a CUDA 13 toolkit, add its lib directory to LD_LIBRARY_PATH, \
                 or `pip install --target ~/.cache/hgpt/cuda-pip \"nvidia-cuda-nvrtc==13.0.*\" \
                 \"nvidia-cuda-runtime==13.0.*\"`"
            }
            Lib::CublasLt => {
                "set CUDA_HOME to a CUDA 13 toolkit, add its lib directory to LD_LIBRARY_PATH, \
                 or `pip install --target ~/.cache/hgpt/cuda-pip \"nvidia-cublas==13.*\"`"
            }
            Lib::Nccl => {
                "add the directory holding libnccl.so.2 to LD_LIBRARY_PATH, or \
                 `pip install --target ~/.cache/hgpt/cuda-pip nvidia-nccl-cu13`"
            }
        }
    }

    /// Whether cudarc can open the library by name now.
    fn loadable(self) -> bool {
        // SAFETY: each probe only dlopens and closes candidate file names.
        unsafe {
            match self {
                Lib::Driver => cudarc::driver::sys::is_culib_present(),
                Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Lib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
                Lib::Nccl => cudarc::nccl::sys::is_culib_present(),
            }
        }
    }
}

/// Makes sure `lib` can be opened, preloading it from a known install place if the
/// loader's own search misses it; otherwise one line saying what is missing and how to
/// point hgpt at it.
pub fn require(lib: Lib) -> Result<()> {
    // Remembered per library: a failed search is not repeated, a success not redone.
    static FOUND: Mutex<Vec<Lib>> = Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if found.contains(&lib) {
        return Ok(());
    }
    if !lib.loadable() {
        for dir in search_dirs(lib) {
            let path = dir.join(lib.soname());
            if path.is_file() && preload(&path) {
                if lib == Lib::Nvrtc {
                    // NVRTC opens its builtins library by name when it compiles.
                    preload_prefixed(&dir, "libnvrtc-builtins.so.13");
                }
                if lib.loadable() {
                    break;
                }
            }
        }
    }
    if !lib.loadable() {
        bail!(
            "{} ({}) not found: {}",
            lib.soname(),
            lib.what(),
            lib.hint()
        );
    }
    found.push(lib);
    Ok(())
}

/// Opens a library by full path and keeps it open for the life of the process.
fn preload(path: &Path) -> bool {
    // SAFETY: loading a CUDA library runs only its initialisers.
    match unsafe { libloading::Library::new(path) } {
        Ok(l) => {
            std::mem::forget(l);
            true
        }
        Err(_) => false,
    }
}

fn preload_prefixed(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            preload(&e.path());
        }
    }
}

/// Installation roots that may hold CUDA 13 (each with include/ and lib/ or lib64/),
/// most specific first.
pub fn cuda_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            roots.push(PathBuf::from(v));
        }
    }
    if let Some(v) = std::env::var_os("HGPT_CUDA_PIP").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(v).join("nvidia/cu13"));
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(h) = &home {
        roots.push(h.join(".cache/hgpt/cuda-pip/nvidia/cu13"));
    }
    // pip installs into a Python's site-packages: nvidia/cu13/{include,lib}.
    let mut py_libs: Vec<PathBuf> = ["/usr/lib", "/usr/local/lib", "/opt/conda/lib"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            py_libs.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(h) = &home {
        py_libs.push(h.join(".local/lib"));
    }
    for lib in py_libs {
        for py in subdirs_starting(&lib, "python3") {
            for sp in ["site-packages", "dist-packages"] {
                roots.push(py.join(sp).join("nvidia/cu13"));
            }
        }
    }
    roots.retain(|r| r.is_dir());
    roots.dedup();
    roots
}

fn subdirs_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Directories that may hold the CUDA libraries, in search order.
pub fn lib_dirs() -> Vec<PathBuf> {
    cuda_roots()
        .iter()
        .flat_map(|r| {
            ["lib64", "lib", "targets/x86_64-linux/lib"]
                .iter()
                .map(move |d| r.join(d))
        })
        .filter(|d| d.is_dir())
        .collect()
}

/// Where container runtimes (the NVIDIA container toolkit) mount the driver's libraries.
const DRIVER_DIRS: [&str; 2] = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"];

/// Directories that may hold `lib`, in search order: for the driver, its container
/// mounts first; never a `stubs` folder, whose libcuda is a link-time stand-in that
/// only reports that no driver is installed.
fn candidate_dirs(lib: Lib, toolkit_dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let driver = match lib {
        Lib::Driver => DRIVER_DIRS.map(PathBuf::from).to_vec(),
        Lib::Nvrtc | Lib::CublasLt | Lib::Nccl => Vec::new(),
    };
    driver
        .into_iter()
        .chain(toolkit_dirs)
        .filter(|d| !d.components().any(|c| c.as_os_str() == "stubs"))
        .collect()
}

/// The existing directories of `candidate_dirs`; for NCCL also pip's nvidia/nccl/lib
/// (nvidia-nccl-cu13) beside each nvidia/cu13 root and in the pip targets hgpt knows.
fn search_dirs(lib: Lib) -> Vec<PathBuf> {
    let mut toolkit = lib_dirs();
    if lib == Lib::Nccl {
        let pip = cuda_roots()
            .into_iter()
            .filter(|r| r.ends_with("nvidia/cu13"));
        toolkit.extend(pip.filter_map(|r| Some(r.parent()?.join("nccl/lib"))));
        let targets = [
            std::env::var_os("HGPT_CUDA_PIP").map(PathBuf::from),
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hgpt/cuda-pip")),
        ];
        toolkit.extend(
            targets
                .into_iter()
                .flatten()
                .map(|t| t.join("nvidia/nccl/lib")),
        );
    }
    let mut dirs = candidate_dirs(lib, toolkit);
    dirs.retain(|d| d.is_dir());
    dirs
}

/// The include directory holding cuda_bf16.h, which every kernel includes.
pub fn include_dir() -> Result<PathBuf> {
    for root in cuda_roots() {
        for d in ["include", "targets/x86_64-linux/include"] {
            let dir = root.join(d);
            if dir.join("cuda_bf16.h").is_file() {
                return Ok(dir);
            }
        }
    }
    bail!(
        "cuda_bf16.h (CUDA 13 headers) not found: set CUDA_HOME to a CUDA 13 toolkit, or \
         `pip install --target ~/.cache/hgpt/cuda-pip \"nvidia-cuda-runtime==13.0.*\"`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_is_searched_in_container_mounts_first_and_never_in_stubs() {
        let toolkit = vec![
            PathBuf::from("/usr/local/cuda/lib64"),
            PathBuf::from("/usr/local/cuda/lib64/stubs"),
        ];
        let driver = candidate_dirs(Lib::Driver, toolkit.clone());
        let want = [
            "/usr/local/nvidia/lib64",
            "/usr/local/nvidia/lib",
            "/usr/local/cuda/lib64",
        ];
        assert_eq!(driver, want.map(PathBuf::from).to_vec());
        let nvrtc = candidate_dirs(Lib::Nvrtc, toolkit);
        assert_eq!(nvrtc, vec![PathBuf::from("/usr/local/cuda/lib64")]);
    }
}
