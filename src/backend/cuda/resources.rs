//! What each kernel costs an SM, known at compile time: ptxas's resource report
//! (registers, spills, stack frame, static shared memory, barriers), read from the
//! NVRTC log of a compile with `-Xptxas -v`, and the occupancy those resources allow.
//!
//! Occupancy (blocks resident per SM) is the least of four limits, as the CUDA
//! occupancy calculator counts them for sm_80 and sm_90:
//!   registers: a warp is allocated ceil(32 r / 256) 256 registers (r per thread); each
//!     of the 4 sub-partitions holds floor(16384 / that) warps; blocks =
//!     floor(4 that / warps per block);
//!   shared memory: floor(S / (s + 1 KiB)) with s the block's static and dynamic bytes
//!     rounded up to 128 (the 1 KiB is reserved per block by the runtime), S = 228 KiB
//!     on sm_90, 164 KiB on sm_80; 0 when s passes the per-block maximum;
//!   threads: floor(2048 / threads per block);
//!   blocks: 32.

use anyhow::{Context, Result, anyhow, bail};

use super::kernels::{self, Family};

/// ptxas's resource line for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes stored to and loaded from local memory because registers ran out.
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Bytes of per-thread stack (local arrays indexed at run time, calls).
    pub stack_frame: u32,
    /// Bytes of `__shared__` declared in the source (dynamic shared memory is not here).
    pub static_shared: u32,
    pub barriers: u32,
}

/// Compiles `family` for `arch` with ptxas's verbose report and returns every kernel's
/// resources, in the family's order of definition. A separate compile from
/// `kernels::compile`, whose log stays empty.
pub fn report(family: &Family, arch: &str) -> Result<Vec<KernelResources>> {
    let compiled = kernels::compile_with(family, arch, &["-Xptxas", "-v"])?;
    let mut found = parse_ptxas_log(&compiled.log)
        .with_context(|| format!("the ptxas report of cuda/{}.cu for {arch}", family.name))?;
    family
        .signatures()?
        .into_iter()
        .map(|(name, _)| {
            let at = found.iter().position(|k| k.name == name).ok_or_else(|| {
                anyhow!(
                    "the ptxas report of cuda/{}.cu for {arch} has no kernel {name}",
                    family.name
                )
            })?;
            Ok(found.swap_remove(at))
        })
        .collect()
}

/// Every kernel ptxas reports in `log`. The properties of functions a kernel calls
/// (not inlined) count toward that kernel: their spills and stack frames add.
pub fn parse_ptxas_log(log: &str) -> Result<Vec<KernelResources>> {
    let mut out: Vec<KernelResources> = Vec::new();
    let mut has_registers = Vec::new();
    for line in log.lines() {
        let text = line.split_once(':').map_or(line, |(_, rest)| rest).trim();
        if let Some(rest) = text.strip_prefix("Compiling entry function '") {
            let name = rest
                .split_once('\'')
                .ok_or_else(|| anyhow!("unreadable line `{}`", line.trim()))?
                .0;
            out.push(KernelResources {
                name: name.to_string(),
                ..Default::default()
            });
            has_registers.push(false);
            continue;
        }
        let Some(kernel) = out.last_mut() else {
            continue;
        };
        if let Some(at) = line.find(" bytes stack frame") {
            // `ptxas . N bytes stack frame, N bytes spill stores, N bytes spill loads`
            let start = line[..at]
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
            for item in line[start..].split(',') {
                let (value, what) = number_and_rest(item, line)?;
                match what {
                    "bytes stack frame" => kernel.stack_frame += value,
                    "bytes spill stores" => kernel.spill_stores += value,
                    "bytes spill loads" => kernel.spill_loads += value,
                    _ => bail!("unknown item `{}` in `{}`", item.trim(), line.trim()),
                }
            }
        } else if let Some(rest) = text.strip_prefix("Used ") {
            for item in rest.split(',') {
                let item = item.trim().trim_start_matches("used ");
                let (value, what) = number_and_rest(item, line)?;
                match what {
                    "registers" => kernel.registers = value,
                    "barriers" => kernel.barriers = value,
                    "bytes smem" => kernel.static_shared = value,
                    // Constant banks and the like: not occupancy's concern.
                    _ => {}
                }
            }
            *has_registers.last_mut().expect("one flag per kernel") = true;
        }
    }
    if let Some(k) = out.iter().zip(&has_registers).find(|(_, has)| !**has) {
        bail!("no `Used N registers` line for kernel {}", k.0.name);
    }
    Ok(out)
}

/// `12 bytes smem` as (12, "bytes smem").
fn number_and_rest<'a>(item: &'a str, line: &str) -> Result<(u32, &'a str)> {
    let (n, rest) = item
        .trim()
        .split_once(' ')
        .ok_or_else(|| anyhow!("unreadable item `{}` in `{}`", item.trim(), line.trim()))?;
    let n = n
        .parse()
        .map_err(|_| anyhow!("`{n}` is not a count, in `{}`", line.trim()))?;
    Ok((n, rest.trim()))
}

/// One SM's limits that bound occupancy.
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    pub registers: u32,
    pub max_threads: u32,
    pub max_blocks: u32,
    /// Shared memory per SM, and the most one block may have (static and dynamic).
    pub shared: u32,
    pub max_shared_per_block: u32,
}

/// What bounds a kernel's occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Registers,
    SharedMemory,
    Threads,
    Blocks,
}

/// Blocks resident per SM, and the limit that sets the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks: u32,
    pub limit: Limit,
}

/// Registers per allocation unit, sub-partitions per SM, shared memory reserved per
/// block and the shared memory allocation unit (all of sm_80 and sm_90).
const REGISTER_UNIT: u32 = 256;
const SUB_PARTITIONS: u32 = 4;
const SHARED_RESERVED: u32 = 1024;
const SHARED_UNIT: u32 = 128;

impl SmLimits {
    /// The limits of `arch`: sm_80 (A100) or sm_90 (H100, H200).
    pub fn of_arch(arch: &str) -> Result<SmLimits> {
        let (shared_kib, block_kib) = match arch {
            "sm_80" => (164, 163),
            "sm_90" => (228, 227),
            _ => bail!("no occupancy limits known for {arch} (sm_80 and sm_90 are)"),
        };
        Ok(SmLimits {
            registers: 65536,
            max_threads: 2048,
            max_blocks: 32,
            shared: shared_kib << 10,
            max_shared_per_block: block_kib << 10,
        })
    }

    /// Blocks of `threads` threads, each thread using `registers` registers and the block
    /// `shared` bytes of shared memory (static and dynamic), resident on one SM at once.
    pub fn occupancy(&self, registers: u32, threads: u32, shared: u32) -> Occupancy {
        let warps = threads.div_ceil(32).max(1);
        let per_warp = (32 * registers.max(1)).next_multiple_of(REGISTER_UNIT);
        let by_registers = SUB_PARTITIONS * (self.registers / SUB_PARTITIONS / per_warp) / warps;
        let by_shared = if shared > self.max_shared_per_block {
            0
        } else {
            self.shared / (shared.next_multiple_of(SHARED_UNIT) + SHARED_RESERVED)
        };
        let by_threads = self.max_threads / (32 * warps);
        [
            (by_registers, Limit::Registers),
            (by_shared, Limit::SharedMemory),
            (by_threads, Limit::Threads),
            (self.max_blocks, Limit::Blocks),
        ]
        .into_iter()
        .map(|(blocks, limit)| Occupancy { blocks, limit })
        .min_by_key(|o| o.blocks)
        .expect("four limits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'one' for 'sm_90'
ptxas info    : Function properties for one
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 221 registers, used 1 barriers
ptxas info    : Compile time = 295.795 ms
ptxas info    : Compiling entry function 'two' for 'sm_90'
ptxas info    : Function properties for two
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 1024 bytes smem, 384 bytes cmem[0]
";

    #[test]
    fn the_ptxas_report_is_read_per_kernel() {
        let got = parse_ptxas_log(LOG).unwrap();
        assert_eq!(
            got,
            [
                KernelResources {
                    name: "one".into(),
                    registers: 221,
                    barriers: 1,
                    ..Default::default()
                },
                KernelResources {
                    name: "two".into(),
                    registers: 24,
                    spill_stores: 8,
                    spill_loads: 4,
                    stack_frame: 16,
                    static_shared: 1024,
                    barriers: 0,
                },
            ]
        );
    }

    #[test]
    fn a_kernel_without_a_register_count_is_refused() {
        let log = LOG.replace("Used 24 registers, ", "");
        let e = parse_ptxas_log(&log).unwrap_err().to_string();
        assert!(e.contains("kernel two"), "{e}");
        let e = parse_ptxas_log(&LOG.replace("221", "x")).unwrap_err();
        assert!(e.to_string().contains("`x` is not a count"), "{e}");
    }

    #[test]
    fn occupancy_takes_the_tightest_limit() {
        let sm90 = SmLimits::of_arch("sm_90").unwrap();
        let at = |r, t, s| sm90.occupancy(r, t, s);
        // 221 registers round to 224: 7168 a warp, 2 warps a sub-partition, 8 warps.
        assert_eq!(at(221, 128, 0).blocks, 2);
        assert_eq!(at(168, 128, 0).blocks, 3);
        assert_eq!(at(169, 128, 0).blocks, 2);
        assert_eq!(at(128, 128, 0).blocks, 4);
        assert_eq!(
            at(24, 256, 0),
            Occupancy {
                blocks: 8,
                limit: Limit::Threads
            }
        );
        assert_eq!(
            at(16, 32, 0),
            Occupancy {
                blocks: 32,
                limit: Limit::Blocks
            }
        );
        // 38.1 KB of shared memory (plus 1 KiB each): 5 blocks in 228 KiB, 4 in 164.
        let shared = at(32, 128, 39_040);
        assert_eq!(
            shared,
            Occupancy {
                blocks: 5,
                limit: Limit::SharedMemory
            }
        );
        let sm80 = SmLimits::of_arch("sm_80").unwrap();
        assert_eq!(sm80.occupancy(32, 128, 39_040).blocks, 4);
        assert_eq!(at(32, 128, 228 << 10).blocks, 0);
        assert!(SmLimits::of_arch("sm_70").is_err());
    }
}
