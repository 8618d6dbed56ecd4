//! The client session against an in-process rustls server: bytes are moved between them
//! by hand, as the socket would, so that record boundaries and reads can be chosen.

use super::*;
use crate::cert;
use rustls::pki_types::PrivateKeyDer;
use rustls::{ServerConfig, ServerConnection};
use std::io::Read as _;

/// A CA, a server certificate for 127.0.0.1 and localhost, and the CA's PEM file.
struct Pki {
    pki: cert::TestPki,
    _dir: TempDir,
    ca: PathBuf,
}

/// A directory removed when dropped (the tests run in parallel: one each).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("ringcast-bench-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pki = cert::throwaway(&["127.0.0.1", "localhost"], 1).expect("a throwaway CA");
    let files = cert::write(&pki, &dir).expect("writing the PEM files");
    Pki {
        pki,
        ca: files.ca,
        _dir: TempDir(dir),
    }
}

fn server(pki: &cert::TestPki) -> ServerConnection {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key PEM");
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
    let mut server = ServerConnection::new(Arc::new(config)).expect("server connection");
    // The tests queue more than rustls's default 64 KiB before moving it.
    server.set_buffer_limit(None);
    server
}

fn addr() -> SocketAddr {
    "127.0.0.1:7000".parse().expect("an address")
}

/// Everything the server has to send, as one socket read would bring it.
fn from_server(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut out).expect("into a Vec");
    }
    out
}

/// Runs the handshake to its end, the client's side through [`Session`].
fn handshake(client: &mut Session, server: &mut ServerConnection) -> Result<(), TlsError> {
    let mut plain = BytesMut::new();
    for _ in 0..10 {
        let mut out = Vec::new();
        client.pending(&mut out);
        if !out.is_empty() {
            server.read_tls(&mut &out[..]).expect("server read");
            if let Err(err) = server.process_new_packets() {
                // Its alert goes to the client, whose error says more.
                let alert = from_server(server);
                client.absorb(&alert, &mut plain)?;
                panic!("server refused: {err}");
            }
        }
        let back = from_server(server);
        if !back.is_empty() {
            client.absorb(&back, &mut plain)?;
        }
        if !client.is_handshaking() && !client.wants_write() && !server.is_handshaking() {
            assert!(plain.is_empty(), "no plaintext during the handshake");
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn a_session_trusting_the_ca_talks_both_ways_over_the_ip_san() {
    let p = pki("both-ways");
    let tls = TlsClient::new(&p.ca, None, None).expect("client config");
    assert_eq!(
        tls.server_name(addr()),
        ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
    );
    let mut client = tls.session(addr()).expect("session");
    let mut server = server(&p.pki);
    handshake(&mut client, &mut server).expect("handshake");
    // Client to server: sealed records decrypt to what was sealed.
    let mut sealed = Vec::new();
    client.seal(b"/join room0\n", &mut sealed).expect("seal");
    client.seal(b"hello\n", &mut sealed).expect("seal");
    server.read_tls(&mut &sealed[..]).expect("server read");
    server.process_new_packets().expect("server decrypts");
    let mut got = Vec::new();
    let _ = server.reader().read_to_end(&mut got);
    assert_eq!(got, b"/join room0\nhello\n");
    // Server to client: two records, the plaintext in order.
    server
        .writer()
        .write_all(b"* joined room0\n")
        .expect("write");
    server.writer().write_all(b"alice: hi\n").expect("write");
    let mut plain = BytesMut::new();
    assert!(client
        .absorb(&from_server(&mut server), &mut plain)
        .expect("absorb"));
    assert_eq!(&plain[..], b"* joined room0\nalice: hi\n");
}

#[test]
fn a_record_split_over_reads_gives_its_plaintext_only_with_its_last_byte() {
    let p = pki("split");
    let tls = TlsClient::new(&p.ca, Some("localhost"), None).expect("client config");
    let mut client = tls.session(addr()).expect("session");
    let mut server = server(&p.pki);
    handshake(&mut client, &mut server).expect("handshake");
    server.writer().write_all(b"one line\n").expect("write");
    let record = from_server(&mut server);
    let mut plain = BytesMut::new();
    // Every read but the last leaves the record incomplete: nothing to decode yet, so
    // the delivery is read (and stamped) with the read that completes it.
    for (i, byte) in record.iter().enumerate() {
        assert!(client.absorb(&[*byte], &mut plain).expect("absorb"));
        if i + 1 < record.len() {
            assert!(
                plain.is_empty(),
                "plaintext after {} of {} bytes",
                i + 1,
                record.len()
            );
        }
    }
    assert_eq!(&plain[..], b"one line\n");
    // Many records in one large read: all of them, though rustls takes a few KiB a call.
    let line = [b'x'; 999];
    for _ in 0..100 {
        server.writer().write_all(&line).expect("write");
    }
    let burst = from_server(&mut server);
    assert!(burst.len() > 100_000);
    plain.clear();
    assert!(client.absorb(&burst, &mut plain).expect("absorb"));
    assert_eq!(plain.len(), 99_900);
}

#[test]
fn close_notify_ends_the_session_after_the_plaintext_before_it() {
    let p = pki("close");
    let tls = TlsClient::new(&p.ca, None, None).expect("client config");
    let mut client = tls.session(addr()).expect("session");
    let mut server = server(&p.pki);
    handshake(&mut client, &mut server).expect("handshake");
    server.writer().write_all(b"last words\n").expect("write");
    server.send_close_notify();
    let mut plain = BytesMut::new();
    let open = client
        .absorb(&from_server(&mut server), &mut plain)
        .expect("absorb");
    assert!(!open, "close_notify ends the session");
    assert_eq!(&plain[..], b"last words\n");
}

#[test]
fn a_certificate_for_another_name_or_from_another_ca_is_refused() {
    let p = pki("refused");
    let other = pki("other-ca");
    // The right CA, the wrong name.
    let tls = TlsClient::new(&p.ca, Some("chat.example.org"), None).expect("client config");
    let mut client = tls.session(addr()).expect("session");
    let err = handshake(&mut client, &mut server(&p.pki)).expect_err("a name mismatch");
    assert!(err.to_string().contains("certificate"), "{err}");
    // The right name, a CA that did not sign it.
    let tls = TlsClient::new(&other.ca, None, None).expect("client config");
    let mut client = tls.session(addr()).expect("session");
    let err = handshake(&mut client, &mut server(&p.pki)).expect_err("an unknown issuer");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn a_ca_file_without_certificates_is_an_error_that_names_it() {
    let p = pki("no-ca");
    let empty = p.ca.with_file_name("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let err = TlsClient::new(&empty, None, None).expect_err("no certificate");
    assert!(err.to_string().contains("empty.pem"), "{err}");
    let missing = p.ca.with_file_name("missing.pem");
    let err = TlsClient::new(&missing, None, None).expect_err("no file");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = TlsClient::new(&p.ca, Some("not a name!"), None).expect_err("a bad name");
    assert!(err.to_string().contains("--tls-name"), "{err}");
}
