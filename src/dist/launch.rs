//! A rank's place from the environment a launcher sets, as a pure function of an
//! environment map (so it is tested without touching the process's own):
//!
//! - torchrun (and `hgpt train --ranks N`): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//!   with `MASTER_ADDR` and `MASTER_PORT`;
//! - Slurm's srun: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the master is
//!   `MASTER_ADDR`, else the first host of `SLURM_NODELIST` (a compressed list
//!   such as `gpu[01-04,07],cpu3`);
//! - Open MPI's mpirun: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//!   `OMPI_COMM_WORLD_LOCAL_RANK`; the master is `MASTER_ADDR` (mpirun sets none).
//!
//! The first launcher whose rank variable is present decides, in that order. The
//! port is `MASTER_PORT`, else [`DEFAULT_PORT`] (torchrun's); where torchrun's own
//! agent already serves its store on `MASTER_PORT` (`TORCHELASTIC_USE_AGENT_STORE`
//! is true), the rendezvous takes the port after it.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Result, bail};

use super::Place;

/// The rendezvous port when `MASTER_PORT` is not set: torchrun's default.
pub const DEFAULT_PORT: u16 = 29500;

/// Which launcher started this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
    OpenMpi,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "srun",
            Launcher::OpenMpi => "mpirun",
        })
    }
}

/// What the launcher's environment says about this rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub place: Place,
    /// The host rank 0 listens on; None when the environment names none (mpirun
    /// without `MASTER_ADDR`), which only a file rendezvous can do without.
    pub master_addr: Option<String>,
    pub master_port: u16,
}

/// The variables each launcher sets: rank, world size, local rank.
const VARS: [(Launcher, [&str; 3]); 3] = [
    (Launcher::Torchrun, ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
    (
        Launcher::Slurm,
        ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"],
    ),
    (
        Launcher::OpenMpi,
        [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ],
    ),
];

/// This process's place from `env`, or None when no launcher's rank variable is
/// set. A missing companion variable, a value that is not a number, a rank not
/// below the world size or a malformed `SLURM_NODELIST` or `MASTER_PORT` is an
/// error naming the variable and its value.
pub fn from_env(env: &HashMap<String, String>) -> Result<Option<Launch>> {
    let Some((launcher, [rank_var, world_var, local_var])) = VARS
        .iter()
        .copied()
        .find(|(_, [rank, _, _])| env.contains_key(*rank))
    else {
        return Ok(None);
    };
    let number = |var: &str| -> Result<usize> {
        let Some(value) = env.get(var) else {
            bail!("{rank_var} is set ({launcher}) but {var} is not");
        };
        match value.trim().parse::<usize>() {
            Ok(n) => Ok(n),
            Err(_) => bail!("{var}={value:?}: expected a whole number"),
        }
    };
    let (rank, world, local_rank) = (number(rank_var)?, number(world_var)?, number(local_var)?);
    if world == 0 {
        bail!("{world_var}=0: a run needs at least one rank");
    }
    if rank >= world {
        bail!("{rank_var}={rank} is not below {world_var}={world}");
    }
    if local_rank >= world {
        bail!("{local_var}={local_rank} is not below {world_var}={world}");
    }
    let master_addr = match env.get("MASTER_ADDR") {
        Some(addr) if addr.trim().is_empty() => bail!("MASTER_ADDR is set but empty"),
        Some(addr) => Some(addr.trim().to_string()),
        None if launcher == Launcher::Slurm => match env.get("SLURM_NODELIST") {
            Some(list) => Some(first_host(list)?),
            None => None,
        },
        None => None,
    };
    let master_port = match env.get("MASTER_PORT") {
        None => DEFAULT_PORT,
        Some(port) => match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => bail!("MASTER_PORT={port:?}: expected a port number from 1 to 65535"),
        },
    };
    let agent_store = env
        .get("TORCHELASTIC_USE_AGENT_STORE")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let master_port = match (agent_store, master_port.checked_add(1)) {
        (false, _) => master_port,
        (true, Some(next)) => next,
        (true, None) => bail!(
            "MASTER_PORT=65535 is torchrun's store (TORCHELASTIC_USE_AGENT_STORE), leaving no port after it for the rendezvous"
        ),
    };
    Ok(Some(Launch {
        launcher,
        place: Place {
            rank,
            world,
            local_rank,
        },
        master_addr,
        master_port,
    }))
}

/// The first host of a Slurm node list (`SLURM_NODELIST`), the whole list checked.
pub fn first_host(list: &str) -> Result<String> {
    let hosts = expand_nodelist(list)?;
    Ok(hosts
        .into_iter()
        .next()
        .expect("a parsed list is not empty"))
}

/// A Slurm node list expanded: `gpu[01-03,07],cpu3` is gpu01, gpu02, gpu03, gpu07,
/// cpu3. A bracket holds numbers and ranges `a-b` (a <= b) whose width is that of
/// `a` (leading zeros kept); a name may hold several brackets (`r[1-2]n[1-2]`
/// gives r1n1, r1n2, r2n1, r2n2).
pub fn expand_nodelist(list: &str) -> Result<Vec<String>> {
    let bad = |why: &str| anyhow::anyhow!("SLURM_NODELIST={list:?}: {why}");
    let mut hosts = Vec::new();
    for item in split_top_level(list).map_err(|why| bad(&why))? {
        if item.is_empty() {
            return Err(bad("an empty host name"));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            let (literal, after) = rest.split_at(rest.find('[').unwrap_or(rest.len()));
            if literal.contains(']') {
                return Err(bad("a ']' without its '['"));
            }
            for name in &mut names {
                name.push_str(literal);
            }
            if after.is_empty() {
                break;
            }
            let close = after
                .find(']')
                .ok_or_else(|| bad("a '[' without its ']'"))?;
            let numbers = expand_bracket(&after[1..close]).map_err(|why| bad(&why))?;
            names = names
                .iter()
                .flat_map(|name| numbers.iter().map(move |n| format!("{name}{n}")))
                .collect();
            rest = &after[close + 1..];
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// The comma-separated items of a node list, commas inside brackets kept.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err("nested '['".into()),
            '[' => depth = 1,
            ']' if depth == 0 => return Err("a ']' without its '['".into()),
            ']' => depth = 0,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            c if c.is_whitespace() => return Err("a space in a host list".into()),
            _ => {}
        }
    }
    if depth > 0 {
        return Err("a '[' without its ']'".into());
    }
    items.push(&list[start..]);
    Ok(items)
}

/// The numbers of one bracket, `01-03,07`, as zero-padded strings.
fn expand_bracket(body: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in body.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("[{body}]: {part:?} is not a number or a range a-b"));
        }
        let (a, b): (u64, u64) = match (lo.parse(), hi.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(format!("[{body}]: {part:?} is out of range")),
        };
        if a > b {
            return Err(format!("[{body}]: the range {part} runs backwards"));
        }
        out.extend((a..=b).map(|n| format!("{n:0width$}", width = lo.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn place(rank: usize, world: usize, local_rank: usize) -> Place {
        Place {
            rank,
            world,
            local_rank,
        }
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        format!("{:#}", from_env(&env(pairs)).unwrap_err())
    }

    #[test]
    fn no_launcher_variables_mean_a_single_process() {
        assert_eq!(
            from_env(&env(&[("PATH", "/bin"), ("MASTER_ADDR", "h")])).unwrap(),
            None
        );
    }

    #[test]
    fn torchrun_variables_give_the_place_and_the_master() {
        let l = from_env(&env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "5"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!(l.place, place(5, 16, 5));
        assert_eq!(l.master_addr.as_deref(), Some("node7"));
        assert_eq!(l.master_port, 1234);
    }

    #[test]
    fn the_port_defaults_to_torchruns() {
        let l = from_env(&env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.master_port, DEFAULT_PORT);
        assert_eq!(l.master_addr, None);
    }

    #[test]
    fn under_torchruns_agent_store_the_rendezvous_takes_the_next_port() {
        let l = from_env(&env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.master_port, 29401);
    }

    #[test]
    fn slurm_variables_take_the_first_node_as_master() {
        let l = from_env(&env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODELIST", "gpu[07-08],cpu3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Slurm);
        assert_eq!(l.place, place(9, 16, 1));
        assert_eq!(l.master_addr.as_deref(), Some("gpu07"));
    }

    #[test]
    fn master_addr_wins_over_the_slurm_node_list() {
        let l = from_env(&env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODELIST", "gpu[07-08]"),
            ("MASTER_ADDR", "10.0.0.1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.master_addr.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn open_mpi_variables_give_the_place() {
        let l = from_env(&env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::OpenMpi);
        assert_eq!(l.place, place(3, 4, 3));
        assert_eq!(l.master_addr, None);
    }

    #[test]
    fn torchrun_variables_win_over_slurms() {
        let l = from_env(&env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_LOCALID", "0"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!(l.place, place(1, 2, 1));
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable_and_value() {
        let torch = |rank: &str, world: &str, local: &str| {
            error(&[("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local)])
        };
        assert_eq!(torch("x", "2", "0"), r#"RANK="x": expected a whole number"#);
        assert_eq!(
            torch("-1", "2", "0"),
            r#"RANK="-1": expected a whole number"#
        );
        assert_eq!(torch("2", "2", "0"), "RANK=2 is not below WORLD_SIZE=2");
        assert_eq!(
            torch("0", "0", "0"),
            "WORLD_SIZE=0: a run needs at least one rank"
        );
        assert_eq!(
            torch("1", "4", "4"),
            "LOCAL_RANK=4 is not below WORLD_SIZE=4"
        );
        assert_eq!(
            error(&[("RANK", "0"), ("WORLD_SIZE", "2")]),
            "RANK is set (torchrun) but LOCAL_RANK is not"
        );
        assert_eq!(
            error(&[("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]),
            "SLURM_PROCID is set (srun) but SLURM_NTASKS is not"
        );
        let with = |var: &str, value: &str| {
            error(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "1"),
                ("LOCAL_RANK", "0"),
                (var, value),
            ])
        };
        assert_eq!(
            with("MASTER_PORT", "70000"),
            r#"MASTER_PORT="70000": expected a port number from 1 to 65535"#
        );
        assert_eq!(
            with("MASTER_PORT", "0"),
            r#"MASTER_PORT="0": expected a port number from 1 to 65535"#
        );
        assert_eq!(with("MASTER_ADDR", " "), "MASTER_ADDR is set but empty");
        assert_eq!(
            error(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_NODELIST", "gpu[01-"),
            ]),
            r#"SLURM_NODELIST="gpu[01-": a '[' without its ']'"#
        );
    }

    #[test]
    fn node_lists_expand_ranges_lists_and_padding() {
        let cases: &[(&str, &[&str])] = &[
            ("node1", &["node1"]),
            ("a,b,c", &["a", "b", "c"]),
            (
                "gpu[01-04,07],cpu3",
                &["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"],
            ),
            ("n[8-11]", &["n8", "n9", "n10", "n11"]),
            ("n[098-100]", &["n098", "n099", "n100"]),
            (
                "rack[1-2]-n[1,3]",
                &["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"],
            ),
            ("x[5]-ib,y", &["x5-ib", "y"]),
        ];
        for (list, hosts) in cases {
            assert_eq!(&expand_nodelist(list).unwrap(), hosts, "{list}");
        }
        assert_eq!(first_host("gpu[01-04,07],cpu3").unwrap(), "gpu01");
    }

    #[test]
    fn malformed_node_lists_are_refused_naming_the_list() {
        let cases = [
            ("", "an empty host name"),
            ("a,,b", "an empty host name"),
            ("gpu[01-04", "a '[' without its ']'"),
            ("gpu01]", "a ']' without its '['"),
            ("gpu[[1]]", "nested '['"),
            ("gpu[4-1]", "[4-1]: the range 4-1 runs backwards"),
            ("gpu[a-b]", r#"[a-b]: "a-b" is not a number or a range a-b"#),
            ("gpu[1,]", r#"[1,]: "" is not a number or a range a-b"#),
            ("gpu[]", r#"[]: "" is not a number or a range a-b"#),
            ("a b", "a space in a host list"),
        ];
        for (list, why) in cases {
            assert_eq!(
                format!("{:#}", expand_nodelist(list).unwrap_err()),
                format!("SLURM_NODELIST={list:?}: {why}"),
            );
        }
    }
}
