//! Support for the TLS harness and browser tests: a throwaway CA, and the flags that start
//! a server's TLS listeners with its certificate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A throwaway CA and a certificate for 127.0.0.1 in `dir`.
pub fn pki(dir: &Path) -> ringcast_bench::cert::PkiFiles {
    let pki = ringcast_bench::cert::throwaway(&["127.0.0.1", "localhost"], 1).expect("a CA");
    ringcast_bench::cert::write(&pki, dir).expect("PEM files")
}

/// The server's TLS flags for `proto` ("ringcast": the line protocol's TLS listener;
/// "ws": the https listener) and the name of that listener in its `NAME listening on ADDR`
/// line (`common::Server::listening`).
pub fn tls_flags<'a>(
    files: &'a ringcast_bench::cert::PkiFiles,
    proto: &str,
) -> (Vec<&'a str>, &'static str) {
    let path = |p: &'a PathBuf| p.to_str().expect("a UTF-8 temp path");
    let mut flags = vec![
        "--tls-cert",
        path(&files.cert),
        "--tls-key",
        path(&files.key),
    ];
    let prefix = match proto {
        "ws" => {
            flags.extend(["--https", "127.0.0.1:0"]);
            "https"
        }
        _ => {
            flags.extend(["--tls-listen", "127.0.0.1:0"]);
            "tls"
        }
    };
    (flags, prefix)
}
