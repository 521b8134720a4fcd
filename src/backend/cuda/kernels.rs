//! The kernels: cuda/*.cu embedded in the binary, compiled by NVRTC at first use for
//! the device's own architecture, straight to CUBIN (PTX from an NVRTC newer than the
//! driver would not load), and cached on disk by a hash of everything that shapes the
//! binary: source, architecture, options and NVRTC version.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{Ptx, result as nvrtc, sys as nvrtc_sys};

use super::libs::{self, Lib};

/// One kernel family: one file in cuda/.
pub struct Family {
    pub name: &'static str,
    source: &'static str,
}

/// Helpers every family is compiled with (NVRTC gets one source text per program).
const COMMON: &str = include_str!("../../../cuda/common.cuh");

macro_rules! family {
    ($name:literal) => {
        Family {
            name: $name,
            source: include_str!(concat!("../../../cuda/", $name, ".cu")),
        }
    };
}

/// Every kernel family, in the order they are compiled.
pub const FAMILIES: &[Family] = &[
    family!("encoder"),
    family!("layernorm"),
    family!("matmul"),
    family!("flash_attention"),
    family!("attention_decode"),
    family!("gelu"),
    family!("residual"),
    family!("head"),
    family!("adamw"),
    family!("global_norm"),
    family!("convert"),
    family!("sgld"),
];

impl Family {
    /// The text NVRTC compiles: the common helpers, then the family's file, with a
    /// #line marker so diagnostics name the right file and line.
    pub fn program(&self) -> String {
        format!(
            "{COMMON}\n#line 1 \"cuda/{}.cu\"\n{}",
            self.name, self.source
        )
    }

    /// Each kernel's name and parameter kinds, read from its `__global__ void NAME(...)`
    /// signature, so launches can be checked against the source.
    pub fn signatures(&self) -> Result<Vec<(&'static str, Vec<ArgKind>)>> {
        let mut out = Vec::new();
        for rest in self.source.split("__global__ void ").skip(1) {
            let (name, params) = rest
                .split_once('(')
                .and_then(|(n, p)| Some((n.trim(), p.split_once(')')?.0)))
                .ok_or_else(|| anyhow!("cuda/{}.cu: unreadable kernel signature", self.name))?;
            let kinds = params
                .split(',')
                .map(|p| {
                    ArgKind::of_param(p).ok_or_else(|| {
                        anyhow!(
                            "cuda/{}.cu: kernel {name}: unsupported parameter `{}`",
                            self.name,
                            p.trim()
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.push((name, kinds));
        }
        Ok(out)
    }
}

/// NVRTC's output for one family.
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// The compiler log (warnings), empty when clean.
    pub log: String,
}

fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

fn options(arch: &str) -> Result<Vec<String>> {
    let include = libs::include_dir()?;
    Ok(vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-lineinfo".into(),
        format!("--include-path={}", include.display()),
    ])
}

/// Compiles one family with NVRTC for `arch` (e.g. "sm_90") to CUBIN.
pub fn compile(family: &Family, arch: &str) -> Result<Compiled> {
    compile_with(family, arch, &[])
}

/// As `compile`, with `extra` options after the usual ones (the resource report adds
/// `-Xptxas -v`, which fills the log; the usual compile's log stays empty).
pub fn compile_with(family: &Family, arch: &str, extra: &[&str]) -> Result<Compiled> {
    libs::require(Lib::Nvrtc)?;
    let mut opts = options(arch)?;
    opts.extend(extra.iter().map(|o| o.to_string()));
    let src = CString::new(family.program()).expect("kernel source has no NUL");
    let name = CString::new(format!("{}.cu", family.name)).expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&name))
        .map_err(|e| anyhow!("NVRTC could not create program {}: {e:?}", family.name))?;
    // SAFETY: `prog` is live until destroyed at the end of this function; `src` and
    // `name` outlive it.
    let result = unsafe {
        let compiled = nvrtc::compile_program(prog, &opts);
        let log = nvrtc::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        let cubin = compiled.map_err(|e| (e, log.clone())).and_then(|()| {
            let mut size = 0usize;
            nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| (e, log.clone()))?;
            let mut bin = vec![0u8; size];
            nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char)
                .result()
                .map_err(|e| (e, log.clone()))?;
            Ok(bin)
        });
        let _ = nvrtc::destroy_program(prog);
        cubin.map(|cubin| Compiled { cubin, log })
    };
    result.map_err(|(e, log)| {
        anyhow!(
            "NVRTC failed on cuda/{}.cu for {arch} ({e:?}):\n{}",
            family.name,
            log.trim()
        )
    })
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    if chars.is_empty() {
        return String::new();
    }
    // SAFETY: NVRTC logs are NUL-terminated.
    unsafe { CStr::from_ptr(chars.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Where compiled kernels are kept: $HGPT_CACHE, else ~/.cache/hgpt/kernels.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HGPT_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/hgpt/kernels"),
    }
}

/// FNV-1a, 64 bits: stable across Rust versions, which std's hasher is not.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The family's CUBIN for `arch`, from the disk cache or compiled (and then cached).
pub fn cubin(family: &Family, arch: &str) -> Result<Vec<u8>> {
    cubin_cached(&cache_dir(), family, arch)
}

/// As `cubin`, with the cache in `dir`.
pub fn cubin_cached(dir: &Path, family: &Family, arch: &str) -> Result<Vec<u8>> {
    libs::require(Lib::Nvrtc)?;
    let program = family.program();
    let (major, minor) = nvrtc_version();
    let opts = options(arch)?.join(" ");
    let key = fnv1a(&[
        program.as_bytes(),
        arch.as_bytes(),
        opts.as_bytes(),
        format!("nvrtc {major}.{minor}").as_bytes(),
    ]);
    let path = dir.join(format!("{}-{arch}-{key:016x}.cubin", family.name));
    if let Ok(bin) = std::fs::read(&path) {
        return Ok(bin);
    }
    let compiled = compile(family, arch)?;
    // A cache that cannot be written only costs a recompile next time.
    if std::fs::create_dir_all(dir).is_ok() {
        // Unique per writer (threads of one process too), then renamed into place.
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        if std::fs::write(&tmp, &compiled.cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(compiled.cubin)
}

/// A kernel argument: a device pointer, `int`, `long long` or `float`.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// The kind of a kernel parameter, as declared in cuda/*.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// `const T*`: memory the kernel only reads.
    Ptr,
    /// `T*`: memory the kernel may write.
    MutPtr,
    I32,
    I64,
    F32,
}

impl ArgKind {
    /// The kind of one C parameter declaration such as `const float* x` or `int n`.
    fn of_param(decl: &str) -> Option<ArgKind> {
        let decl = decl.trim();
        let ty = decl[..decl.rfind(|c: char| !(c.is_alphanumeric() || c == '_'))? + 1].trim();
        let (ty, is_const) = match ty.strip_prefix("const ") {
            Some(t) => (t.trim(), true),
            None => (ty, false),
        };
        Some(match ty {
            _ if ty.ends_with('*') && is_const => ArgKind::Ptr,
            _ if ty.ends_with('*') => ArgKind::MutPtr,
            "int" => ArgKind::I32,
            "long long" => ArgKind::I64,
            "float" => ArgKind::F32,
            _ => return None,
        })
    }

    /// Whether `arg` may be passed for a parameter of this kind.
    fn accepts(self, arg: &Arg) -> bool {
        matches!(
            (self, arg),
            (ArgKind::Ptr | ArgKind::MutPtr, Arg::Ptr(_))
                | (ArgKind::I32, Arg::I32(_))
                | (ArgKind::I64, Arg::I64(_))
                | (ArgKind::F32, Arg::F32(_))
        )
    }
}

/// Every kernel of every family, loaded into one context, with its parameter kinds.
pub struct Kernels {
    funcs: HashMap<&'static str, (CudaFunction, Vec<ArgKind>)>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>, arch: &str) -> Result<Kernels> {
        let mut funcs = HashMap::new();
        for f in FAMILIES {
            let module = ctx
                .load_module(Ptx::from_binary(cubin(f, arch)?))
                .with_context(|| format!("cannot load the {arch} CUBIN of cuda/{}.cu", f.name))?;
            for (name, kinds) in f.signatures()? {
                let func = module
                    .load_function(name)
                    .with_context(|| format!("kernel {name} missing from cuda/{}.cu", f.name))?;
                funcs.insert(name, (func, kinds));
            }
        }
        Ok(Kernels { funcs })
    }

    /// Launches kernel `name` on `stream`; panics (one line) on a launch error, as the
    /// Backend trait has no error path. Returns the pointers the kernel may write
    /// through (its arguments for non-const pointer parameters).
    pub fn launch<'a>(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: (u32, u32),
        block: (u32, u32),
        shared_bytes: u32,
        args: &'a [Arg],
    ) -> impl Iterator<Item = u64> + use<'a> {
        let (func, kinds) = self
            .funcs
            .get(name)
            .unwrap_or_else(|| panic!("no CUDA kernel named {name}"));
        // A wrong argument list would be read as garbage by the kernel: refuse it.
        assert!(
            args.len() == kinds.len() && kinds.iter().zip(args).all(|(k, a)| k.accepts(a)),
            "CUDA kernel {name} launched with the wrong arguments: {args:?} for {kinds:?}"
        );
        let writes: Vec<bool> = kinds.iter().map(|&k| k == ArgKind::MutPtr).collect();
        let mut b = stream.launch_builder(func);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // Past 48 KiB, a kernel must be allowed its dynamic shared memory explicitly.
        if shared_bytes > 48 << 10 {
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared_bytes as i32,
            )
            .unwrap_or_else(|e| {
                panic!("CUDA kernel {name} cannot have {shared_bytes} bytes of shared memory: {e}")
            });
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block.0, block.1, 1),
            shared_mem_bytes: shared_bytes,
        };
        // SAFETY: the caller passes arguments matching the kernel's signature, with
        // pointers into live device buffers sized for the launch.
        if let Err(e) = unsafe { b.launch(cfg) } {
            panic!("CUDA kernel {name} failed to launch: {e}");
        }
        args.iter().zip(writes).filter_map(|(a, w)| match a {
            Arg::Ptr(p) if w => Some(*p),
            _ => None,
        })
    }
}
