//! Loading certificates (each startup error names its file) and a whole session driven
//! by hand against a rustls client: the handshake, records both ways, ALPN, close.

use super::*;
use bytes::Bytes;
use ringcast_bench::cert::{self, TestPki};
use ringcast_core::secure::Opened;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{Read as _, Write as _};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("ringcast-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pki() -> TestPki {
    cert::throwaway(&["127.0.0.1", "localhost"], 2).expect("test certificate")
}

fn files(dir: &Dir, pki: &TestPki) -> TlsFiles {
    TlsFiles {
        cert: dir.write("cert.pem", &pki.cert_pem),
        key: dir.write("key.pem", &pki.key_pem),
    }
}

fn load_err(files: TlsFiles) -> String {
    TlsAcceptor::load(files).expect_err("refused").to_string()
}

#[test]
fn loads_a_certificate_and_says_what_it_is() {
    let dir = Dir::new("good");
    let (_, info) = TlsAcceptor::load(files(&dir, &pki())).expect("loads");
    assert!(info.subject.contains("CN=127.0.0.1"), "{info}");
    assert!(
        !info.not_after.is_empty() && !info.serial.is_empty(),
        "{info}"
    );
}

#[test]
fn every_startup_error_names_the_file_and_the_problem() {
    let dir = Dir::new("errors");
    let good = pki();
    let other = pki();
    let cert = dir.write("cert.pem", &good.cert_pem);
    let key = dir.write("key.pem", &good.key_pem);
    let missing = dir.0.join("missing.pem");

    let err = load_err(TlsFiles {
        cert: missing.clone(),
        key: key.clone(),
    });
    assert!(
        err.contains("reading certificate") && err.contains("missing.pem"),
        "{err}"
    );
    let err = load_err(TlsFiles {
        cert: cert.clone(),
        key: missing,
    });
    assert!(
        err.contains("reading private key") && err.contains("missing.pem"),
        "{err}"
    );

    let text = dir.write("text.pem", "not a certificate\n");
    let err = load_err(TlsFiles {
        cert: text.clone(),
        key: key.clone(),
    });
    assert!(err.contains("text.pem holds no PEM certificate"), "{err}");
    let err = load_err(TlsFiles {
        cert: cert.clone(),
        key: text,
    });
    assert!(err.contains("text.pem holds no PEM private key"), "{err}");

    // PEM armour around bytes that are no certificate.
    let junk = dir.write(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let err = load_err(TlsFiles {
        cert: junk,
        key: key.clone(),
    });
    assert!(err.contains("junk.pem: malformed"), "{err}");

    // The certificate where the key should be.
    let err = load_err(TlsFiles {
        cert: cert.clone(),
        key: cert.clone(),
    });
    assert!(err.contains("cert.pem holds no PEM private key"), "{err}");

    let other_key = dir.write("other-key.pem", &other.key_pem);
    let err = load_err(TlsFiles {
        cert,
        key: other_key,
    });
    assert!(
        err.contains("the key in")
            && err.contains("other-key.pem")
            && err.contains("does not match the certificate in"),
        "{err}"
    );
}

#[test]
fn a_failed_reload_keeps_the_certificate_in_use() {
    let dir = Dir::new("reload");
    let first = pki();
    let files = files(&dir, &first);
    let (acceptor, info) = TlsAcceptor::load(files.clone()).expect("loads");
    std::fs::write(&files.key, "garbage").expect("write");
    assert!(acceptor.reload().is_err());
    // Still the first certificate: a client trusting only its CA completes a handshake.
    handshake(&acceptor, &first, Protocol::Line);
    let second = pki();
    std::fs::write(&files.cert, &second.cert_pem).expect("write");
    std::fs::write(&files.key, &second.key_pem).expect("write");
    let reloaded = acceptor.reload().expect("reloads");
    assert_ne!(reloaded.serial, info.serial);
    handshake(&acceptor, &second, Protocol::Line);
}

/// A rustls client trusting `pki`'s CA, and the server session for `protocol`, with
/// the handshake done by moving bytes between them by hand.
fn handshake(
    acceptor: &TlsAcceptor,
    pki: &TestPki,
    protocol: Protocol,
) -> (ClientConnection, Box<dyn Session>) {
    handshake_with(acceptor, pki, protocol, rustls::DEFAULT_VERSIONS)
}

/// [`handshake`] with a client that offers only `versions`.
fn handshake_with(
    acceptor: &TlsAcceptor,
    pki: &TestPki,
    protocol: Protocol,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (ClientConnection, Box<dyn Session>) {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.expect("CA")).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut client = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut server = acceptor.session(protocol).expect("session");
    let mut plain = Vec::new();
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
        server
            .open(&wire, &mut plain)
            .expect("server reads the client");
        let reply = server.seal(&[]).expect("server flight");
        let mut reply = &reply[..];
        while !reply.is_empty() {
            client.read_tls(&mut reply).expect("client read");
            client
                .process_new_packets()
                .expect("the client accepts the server");
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert!(plain.is_empty());
    (client, server)
}

#[test]
fn a_session_carries_records_both_ways_and_closes() {
    let dir = Dir::new("session");
    let pki = pki();
    let (acceptor, _) = TlsAcceptor::load(files(&dir, &pki)).expect("loads");
    let (mut client, mut server) = handshake(&acceptor, &pki, Protocol::Http);
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Client to server, split at every byte: the plaintext comes out whole.
    client.writer().write_all(b"hello server\n").expect("write");
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("client write");
    }
    let mut plain = Vec::new();
    for byte in &wire {
        assert_eq!(
            server.open(std::slice::from_ref(byte), &mut plain),
            Ok(Opened::Open)
        );
    }
    assert_eq!(plain, b"hello server\n");

    // Server to client: one sealed buffer for a batch of several.
    let batch = [
        Bytes::from_static(b"one\n"),
        Bytes::new(),
        Bytes::from(vec![b'x'; 40_000]),
    ];
    let got = read_sealed(&mut client, &server.seal(&batch).expect("seal"));
    assert_eq!(got.len(), 4 + 40_000);
    assert!(got.starts_with(b"one\nxxx"));

    // close_notify both ways.
    server.close_notify();
    let notify = server.seal(&[]).expect("close_notify");
    let mut notify = &notify[..];
    client.read_tls(&mut notify).expect("read");
    assert!(client
        .process_new_packets()
        .expect("alert")
        .peer_has_closed());
    client.send_close_notify();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).expect("write");
    assert_eq!(server.open(&wire, &mut plain), Ok(Opened::Closed));
}

#[test]
fn plaintext_and_garbage_are_not_tls() {
    let dir = Dir::new("garbage");
    let (acceptor, _) = TlsAcceptor::load(files(&dir, &pki())).expect("loads");
    for input in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"hello\n", &[0xff; 64]] {
        let mut session = acceptor.session(Protocol::Http).expect("session");
        let mut plain = Vec::new();
        match session.open(input, &mut plain) {
            Err(SessionError::NotTls(_)) => {}
            other => panic!("{input:?}: {other:?}"),
        }
        assert!(plain.is_empty());
    }
}

/// The plaintext of `sealed` (the server's records), as the client reads it.
fn read_sealed(client: &mut ClientConnection, mut sealed: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !sealed.is_empty() {
        client.read_tls(&mut sealed).expect("read");
        client.process_new_packets().expect("records");
        // Ends with WouldBlock once what arrived is read.
        let _ = client.reader().read_to_end(&mut got);
    }
    got
}

/// Seals `text` on the server and reads it on the client.
fn server_to_client(server: &mut Box<dyn Session>, client: &mut ClientConnection, text: &[u8]) {
    let sealed = server.seal(&[Bytes::copy_from_slice(text)]).expect("seal");
    assert_eq!(read_sealed(client, &sealed), text);
}

#[test]
fn tls_1_2_and_1_3_both_work() {
    let dir = Dir::new("versions");
    let pki = pki();
    let (acceptor, _) = TlsAcceptor::load(files(&dir, &pki)).expect("loads");
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let (mut client, mut server) = handshake_with(&acceptor, &pki, Protocol::Line, &[version]);
        assert_eq!(client.protocol_version(), Some(expected));
        server_to_client(&mut server, &mut client, b"hello\n");
    }
}

/// A client asking for a key update again and again gets at most one answer queued at
/// a time (or is cut off): its session's output does not grow with the requests.
#[test]
fn a_flood_of_key_update_requests_does_not_grow_the_session() {
    let dir = Dir::new("key-updates");
    let pki = pki();
    let (acceptor, _) = TlsAcceptor::load(files(&dir, &pki)).expect("loads");
    let (mut client, mut server) =
        handshake_with(&acceptor, &pki, Protocol::Line, &[&rustls::version::TLS13]);
    let mut wire = Vec::new();
    for _ in 0..1_000 {
        client.refresh_traffic_keys().expect("a key update");
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
    }
    let mut plain = Vec::new();
    match server.open(&wire, &mut plain) {
        // rustls refuses a flood: the connection ends (the hub closes it).
        Err(err) => assert_eq!(err.reason(), "protocol", "{err}"),
        Ok(_) => {
            let answer = server.seal(&[]).expect("the answers");
            assert!(answer.len() < 1_024, "{} bytes queued", answer.len());
        }
    }
    assert!(plain.is_empty());
}
