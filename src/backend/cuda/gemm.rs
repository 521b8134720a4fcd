//! GEMMs through cuBLASLt, in the row-major terms the rest of hgpt uses.
//!
//! cuBLASLt is column-major; a row-major C = A B is the column-major C^T = B^T A^T,
//! so every call swaps the operands and describes each row-major matrix as its
//! column-major transpose. Operands are fp32 (fp32 mode, exact fp32 compute, no TF32)
//! or bf16 (bf16 mode); the accumulation is always fp32, and so is the output but
//! where a product asks for bf16 (GELU's output stored for GEMMs only), whose epilogue
//! still reads an fp32 bias and writes an fp32 auxiliary matrix.
//!
//! An [`Epilogue`] lets cuBLASLt finish the product in the same kernel: add a bias,
//! apply GELU (keeping its input), or multiply by GELU's derivative. cuBLASLt may have
//! no kernel for a given epilogue, types and shape; `try_run` then says so (and
//! remembers it), and the caller does the same work with separate kernels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

use anyhow::{Result, anyhow};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;

use super::DeviceMem;
use super::gemm_shape::{alignment, column_major, failure};

/// Element type of the A and B operands (and of a product's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }

    fn cuda(self) -> sys::cudaDataType {
        match self {
            DType::F32 => sys::cudaDataType::CUDA_R_32F,
            DType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }
}

/// A row-major operand in device memory; `trans` uses its transpose in the product.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: u64,
    pub trans: bool,
}

/// What cuBLASLt does with the product P = alpha op(A) op(B) before storing C (all in
/// row-major terms: `bias` holds n fp32 values, one per column of C; `pre` is an fp32
/// [m, n] matrix). Epilogues other than `None` take beta = 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// C = P + beta C
    None,
    /// C = P + bias
    Bias { bias: u64 },
    /// pre = P + bias (bias 0: none), C = gelu(pre). cuBLASLt's GELU is the tanh form
    /// GPT-2 uses (llm.c fuses it the same way; a cuBLASLt sample prints gelu(1) =
    /// 0.841194, where the tanh form gives 0.841192 and erf's 0.841345); the parity
    /// tests hold it to the CPU.
    GeluAux { bias: u64, pre: u64 },
    /// C = P * gelu'(pre), pre as written by `GeluAux`.
    DGelu { pre: u64 },
}

impl Epilogue {
    fn cublas(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self {
            Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias { .. } => E::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluAux { bias: 0, .. } => E::CUBLASLT_EPILOGUE_GELU_AUX,
            Epilogue::GeluAux { .. } => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Epilogue::DGelu { .. } => E::CUBLASLT_EPILOGUE_DGELU,
        }
    }

    /// The bias vector and the auxiliary matrix pointers (0: none).
    fn pointers(self) -> (u64, u64) {
        match self {
            Epilogue::None => (0, 0),
            Epilogue::Bias { bias } => (bias, 0),
            Epilogue::GeluAux { bias, pre } => (bias, pre),
            Epilogue::DGelu { pre } => (0, pre),
        }
    }
}

/// One product C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, C row-major of type
/// `out`, finished by `epilogue`.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub epilogue: Epilogue,
    pub out: DType,
}

/// Everything cuBLASLt's algorithm choice depends on: types (operands', output's),
/// shape, transposes,
/// the alignments of A, B, C, D, and the epilogue with the alignments of its
/// bias and auxiliary matrix (the heuristic reads those pointers for their alignment).
type ShapeKey = (
    (DType, DType),
    [usize; 3],
    [bool; 2],
    [u32; 4],
    (sys::cublasLtEpilogue_t, u32, u32),
);

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceMem,
    /// The heuristic's pick per shape (a model asks for the same few shapes every
    /// step), or None where it found no kernel for an epilogue.
    algos: RefCell<HashMap<ShapeKey, Option<sys::cublasLtMatmulAlgo_t>>>,
}

/// Frees a cuBLASLt descriptor when dropped.
struct Guard<T: Copy>(T, unsafe fn(T) -> Result<(), lt::CublasError>);

impl<T: Copy> Drop for Guard<T> {
    fn drop(&mut self) {
        // SAFETY: the handle was created by the matching create call and is dropped once.
        let _ = unsafe { (self.1)(self.0) };
    }
}

fn layout(
    dtype: sys::cudaDataType,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<Guard<sys::cublasLtMatrixLayout_t>, lt::CublasError> {
    Ok(Guard(
        lt::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)?,
        lt::destroy_matrix_layout,
    ))
}

impl Gemm {
    pub fn new(workspace: DeviceMem) -> Result<Gemm> {
        let handle =
            lt::create_handle().map_err(|e| anyhow!("cannot create a cuBLASLt handle: {e:?}"))?;
        Ok(Gemm {
            handle,
            workspace,
            algos: RefCell::new(HashMap::new()),
        })
    }

    pub fn workspace_bytes(&self) -> usize {
        self.workspace.bytes
    }

    /// Runs `p` on `stream` with A and B of `dtype`; panics (one line) on failure.
    pub fn run(
        &self,
        stream: sys::cudaStream_t,
        dtype: DType,
        c: u64,
        a: Operand,
        b: Operand,
        p: Product,
    ) {
        if let Err(e) = self.try_run(stream, dtype, c, a, b, p) {
            panic!("{}", failure(dtype, c, a, b, p, version(), &e));
        }
    }

    /// Runs `p`, or returns an error (having run nothing) where cuBLASLt cannot: an
    /// epilogue it has no kernel for is CUBLAS_STATUS_NOT_SUPPORTED.
    pub(super) fn try_run(
        &self,
        stream: sys::cudaStream_t,
        dtype: DType,
        c: u64,
        a: Operand,
        b: Operand,
        p: Product,
    ) -> Result<(), lt::CublasError> {
        let (m, n, k) = (p.m, p.n, p.k);
        let (bias, aux) = p.epilogue.pointers();
        // cuBLASLt's rule for GELU's auxiliary matrix: its leading dimension (here n,
        // the row length of C) must be a multiple of 8. Epilogue vectors and matrices at
        // addresses not 16-byte aligned have been seen to fault rather than be refused
        // (Marian NMT's cuBLASLt path checks the bias the same way), so those are sent
        // to the fallback too.
        if (aux != 0 && !n.is_multiple_of(8)) || !bias.is_multiple_of(16) || !aux.is_multiple_of(16)
        {
            return Err(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ));
        }
        let ty = dtype.cuda();
        let f32_ty = sys::cudaDataType::CUDA_R_32F;
        let (la, lb, lc) = column_major(m, n, k, a.trans, b.trans);
        let lt_a = layout(ty, la[0], la[1], la[2])?;
        let lt_b = layout(ty, lb[0], lb[1], lb[2])?;
        let lt_c = layout(p.out.cuda(), lc[0], lc[1], lc[2])?;

        let desc = Guard(
            lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32_ty)?,
            lt::destroy_matmul_desc,
        );
        let pref = Guard(lt::create_matmul_pref()?, lt::destroy_matmul_pref);
        let aligns = [
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                alignment(b.ptr),
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                alignment(a.ptr),
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                alignment(c),
            ),
            (
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                alignment(c),
            ),
        ];
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (an int32 attribute).
        let (op_a, op_b) = (b.trans as i32, a.trans as i32);
        let ws = self.workspace.bytes as u64;
        let key: ShapeKey = (
            (dtype, p.out),
            [m, n, k],
            [a.trans, b.trans],
            aligns.map(|(_, al)| al),
            (p.epilogue.cublas(), alignment(bias), alignment(aux)),
        );
        let cached = self.algos.borrow().get(&key).copied();
        if cached == Some(None) {
            return Err(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ));
        }
        // SAFETY: every attribute gets a value of its documented type and size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc.0,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op_a as *const i32 as *const c_void,
                4,
            )?;
            lt::set_matmul_desc_attribute(
                desc.0,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &op_b as *const i32 as *const c_void,
                4,
            )?;
            set_epilogue(desc.0, p.epilogue, n, p.out)?;
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )?;
            for (attr, align) in aligns {
                lt::set_matmul_pref_attribute(
                    pref.0,
                    attr,
                    &align as *const u32 as *const c_void,
                    4,
                )?;
            }
            let algo = match cached {
                Some(Some(algo)) => algo,
                _ => {
                    let found = lt::get_matmul_algo_heuristic(
                        self.handle,
                        desc.0,
                        lt_a.0,
                        lt_b.0,
                        lt_c.0,
                        lt_c.0,
                        pref.0,
                    );
                    // An epilogue with no kernel is remembered, so later calls fall back
                    // at once; a plain GEMM's failure is an error for the caller.
                    if found.is_err() && p.epilogue != Epilogue::None {
                        self.algos.borrow_mut().insert(key, None);
                    }
                    let algo = found?.algo;
                    self.algos.borrow_mut().insert(key, Some(algo));
                    algo
                }
            };
            lt::matmul(
                self.handle,
                desc.0,
                &p.alpha as *const f32 as *const c_void,
                &p.beta as *const f32 as *const c_void,
                b.ptr as *const c_void,
                lt_a.0,
                a.ptr as *const c_void,
                lt_b.0,
                c as *const c_void,
                lt_c.0,
                c as *mut c_void,
                lt_c.0,
                &algo,
                self.workspace.ptr as *mut c_void,
                self.workspace.bytes,
                stream,
            )
        }
    }
}

/// Sets `epilogue` on a matmul descriptor; `ld` is the leading dimension of its
/// auxiliary matrix (cuBLASLt's column-major rows: the row-major C's row length).
/// The bias and the auxiliary matrix are fp32 whatever the output type `out` (their
/// type defaults to the output's, so a bf16 output sets them).
///
/// # Safety
/// `desc` must be a live matmul descriptor.
unsafe fn set_epilogue(
    desc: sys::cublasLtMatmulDesc_t,
    epilogue: Epilogue,
    ld: usize,
    out: DType,
) -> Result<(), lt::CublasError> {
    use sys::cublasLtMatmulDescAttributes_t as A;
    if epilogue == Epilogue::None {
        return Ok(());
    }
    let kind = epilogue.cublas();
    let (bias, aux) = epilogue.pointers();
    let ld = ld as i64;
    let f32_ty = sys::cudaDataType::CUDA_R_32F;
    let typed = |attr| {
        // SAFETY: a cudaDataType_t (int32) for a data-type attribute.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                attr,
                &f32_ty as *const sys::cudaDataType as *const c_void,
                std::mem::size_of::<sys::cudaDataType>(),
            )
        }
    };
    // SAFETY: each attribute gets a value of its documented type and size
    // (cublasLtEpilogue_t: u32; pointers: 8 bytes; the leading dimension: int64).
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            A::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &kind as *const sys::cublasLtEpilogue_t as *const c_void,
            std::mem::size_of::<sys::cublasLtEpilogue_t>(),
        )?;
        if bias != 0 {
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const u64 as *const c_void,
                8,
            )?;
            if out != DType::F32 {
                typed(A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE)?;
            }
        }
        if aux != 0 {
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                &aux as *const u64 as *const c_void,
                8,
            )?;
            lt::set_matmul_desc_attribute(
                desc,
                A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                &ld as *const i64 as *const c_void,
                8,
            )?;
            if out != DType::F32 {
                typed(A::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE)?;
            }
        }
    }
    Ok(())
}

/// cuBLASLt's version (e.g. 120803 for 12.8.3), for error messages.
pub fn version() -> usize {
    // SAFETY: no arguments; the library is loaded once a Gemm exists.
    unsafe { sys::cublasLtGetVersion() }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: the handle came from create_handle and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
