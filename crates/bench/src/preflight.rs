//! Checks made before the first connection: can the generator processes hold the clients
//! asked for (open-files limit) and can their source addresses reach the server with them
//! (ephemeral ports)? A run that cannot is refused at once, naming the limit and the way
//! out, instead of failing thousands of connections and measuring the rest.

use std::net::SocketAddr;

/// Descriptors a generator process keeps beyond its clients (stdio, runtime, timers).
pub const FD_RESERVE: u64 = 64;

/// What the machine allows, read once (see [`Limits::read`]) or given by a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hard RLIMIT_NOFILE: the most a generator can raise its own limit to.
    pub nofile: u64,
    /// Size of the kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
    pub ephemeral_ports: u64,
}

/// The load asked for, as far as the limits care.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: u64,
    pub procs: u64,
    /// Connections a client opens beyond its own (Redis publishers open a second one).
    pub extra_connections: u64,
    pub clients_per_source: u64,
    pub server: SocketAddr,
}

/// Why a run was refused before it started.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{clients} clients in {procs} generator {} need {need} open files per process, but the open-files limit is {nofile} (a hard limit: raising it takes root, `ulimit -Hn`, or /etc/security/limits.conf): use --procs {suggested} ({per} clients per process) or fewer --clients",
        if *procs == 1 { "process" } else { "processes" }
    )]
    OpenFiles {
        clients: u64,
        procs: u64,
        need: u64,
        nofile: u64,
        suggested: u64,
        per: u64,
    },
    #[error(
        "--clients-per-source {per_source} is more than the {ports} ephemeral ports one source address has (net.ipv4.ip_local_port_range): lower it"
    )]
    PortsPerSource { per_source: u64, ports: u64 },
    #[error(
        "{connections} connections from one source address to {server} need more than its {ports} ephemeral ports (net.ipv4.ip_local_port_range); only a loopback server lets the harness spread clients over 127.0.0.x: run the load from several machines and `ringcast compare --merge` their reports"
    )]
    Ports {
        connections: u64,
        server: SocketAddr,
        ports: u64,
    },
    #[error(
        "{connections} connections at --clients-per-source {per_source} need {sources} loopback source addresses, more than the 253 of 127.0.0.2-254: raise --clients-per-source (up to {ports}) or use fewer --clients"
    )]
    Sources {
        connections: u64,
        per_source: u64,
        sources: u64,
        ports: u64,
    },
}

impl Limits {
    /// The limits of this machine and process.
    pub fn read() -> std::io::Result<Limits> {
        Ok(Limits {
            nofile: ringcast_util::sys::nofile_limit()?.hard,
            ephemeral_ports: ephemeral_ports(),
        })
    }
}

/// The ports of `net.ipv4.ip_local_port_range`, or Linux's default range when unreadable.
fn ephemeral_ports() -> u64 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let parsed = range.and_then(|text| {
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    });
    match parsed {
        Some((low, high)) if high >= low => high - low + 1,
        _ => 60_999 - 32_768 + 1,
    }
}

/// Refuses a load the limits cannot carry.
pub fn check(load: &Load, limits: &Limits) -> Result<(), Refusal> {
    let per_proc = load.clients.div_ceil(load.procs.max(1));
    // Redis publishers' second connections are a few; count them all against each process.
    let need = per_proc + load.extra_connections + FD_RESERVE;
    if need > limits.nofile {
        let room = limits
            .nofile
            .saturating_sub(FD_RESERVE + load.extra_connections)
            .max(1);
        let suggested = load.clients.div_ceil(room);
        return Err(Refusal::OpenFiles {
            clients: load.clients,
            procs: load.procs,
            need,
            nofile: limits.nofile,
            suggested,
            per: load.clients.div_ceil(suggested),
        });
    }
    let ports = limits.ephemeral_ports;
    let connections = load.clients + load.extra_connections;
    let loopback = matches!(load.server, SocketAddr::V4(v4) if v4.ip().is_loopback());
    if !loopback || connections <= load.clients_per_source {
        // One source address carries every connection.
        if connections > ports {
            return Err(Refusal::Ports {
                connections,
                server: load.server,
                ports,
            });
        }
        return Ok(());
    }
    if load.clients_per_source > ports {
        return Err(Refusal::PortsPerSource {
            per_source: load.clients_per_source,
            ports,
        });
    }
    let sources = connections.div_ceil(load.clients_per_source.max(1));
    if sources > 253 {
        return Err(Refusal::Sources {
            connections,
            per_source: load.clients_per_source,
            sources,
            ports,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(clients: u64, procs: u64) -> Load {
        Load {
            clients,
            procs,
            extra_connections: 0,
            clients_per_source: 25_000,
            server: "127.0.0.1:7878".parse().unwrap(),
        }
    }

    const HERE: Limits = Limits {
        nofile: 20_000,
        ephemeral_ports: 28_232,
    };

    #[test]
    fn open_files_name_the_limit_and_procs() {
        let err = check(&load(50_000, 1), &HERE).unwrap_err();
        assert_eq!(
            err,
            Refusal::OpenFiles {
                clients: 50_000,
                procs: 1,
                need: 50_064,
                nofile: 20_000,
                suggested: 3,
                per: 16_667
            }
        );
        let text = err.to_string();
        assert!(text.contains("open-files limit is 20000"), "{text}");
        assert!(text.contains("--procs 3"), "{text}");
        assert!(text.contains("1 generator process need"), "{text}");
        assert_eq!(check(&load(50_000, 3), &HERE), Ok(()));
        assert_eq!(check(&load(10_000, 1), &HERE), Ok(()));
    }

    #[test]
    fn ephemeral_ports_per_source() {
        let mut l = load(40_000, 4);
        l.clients_per_source = 30_000;
        assert!(matches!(
            check(&l, &HERE),
            Err(Refusal::PortsPerSource { .. })
        ));
        l.server = "10.0.0.1:7878".parse().unwrap();
        assert!(matches!(check(&l, &HERE), Err(Refusal::Ports { .. })));
        l.clients_per_source = 100;
        l.server = "127.0.0.1:7878".parse().unwrap();
        assert!(matches!(check(&l, &HERE), Err(Refusal::Sources { .. })));
        l.clients_per_source = 25_000;
        assert_eq!(check(&l, &HERE), Ok(()));
    }
}
