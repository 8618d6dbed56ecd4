//! Throwaway PKI: a CA made on the spot and a server certificate it signed, for tests and
//! for the TLS load runs, so that neither needs openssl or a certificate on disk.
//!
//! The CA's key is dropped when [`throwaway`] returns: nothing else can ever be signed by
//! it, so trusting its certificate in a test client trusts exactly one server certificate.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA certificate and a server certificate and key, all PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// What a client trusts.
    pub ca_pem: String,
    /// The server's certificate (the chain is this one certificate; the CA is the root).
    pub cert_pem: String,
    /// The server's private key, PKCS#8.
    pub key_pem: String,
}

/// Where [`write()`] put the files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no names given for the certificate")]
    NoNames,
    #[error("`{0}` is not a valid DNS name for a certificate")]
    BadName(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A throwaway CA and a server certificate it signed, for `names` (IP addresses become IP
/// SANs, others DNS SANs), valid for `days` (from a day ago, so a clock a little behind the
/// generating machine's still accepts it).
pub fn throwaway(names: &[&str], days: u32) -> Result<TestPki, CertError> {
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(i64::from(days));

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("ringcast throwaway CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = dn(names[0]);
    params.subject_alt_names = names
        .iter()
        .map(|name| san(name))
        .collect::<Result<Vec<_>, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    Ok(TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes ca.pem, cert.pem, key.pem into `dir` (created if missing; the key readable by
/// its owner only, as a real key would be).
pub fn write(pki: &TestPki, dir: &Path) -> std::io::Result<PkiFiles> {
    std::fs::create_dir_all(dir)?;
    let files = PkiFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.ca, &pki.ca_pem)?;
    std::fs::write(&files.cert, &pki.cert_pem)?;
    let mut key = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&files.key)?;
    key.write_all(pki.key_pem.as_bytes())?;
    Ok(files)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // IA5 (ASCII) is all the encoding asks; a hostname asks for letters, digits, '-', '.'
    // (and a leading "*." wildcard), so a typo fails here rather than in a client.
    let host = name.strip_prefix("*.").unwrap_or(name);
    let valid = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(CertError::BadName(name.to_string()));
    }
    let dns = name
        .try_into()
        .map_err(|_| CertError::BadName(name.to_string()))?;
    Ok(SanType::DnsName(dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_pem_for_ip_and_dns_names() {
        let pki = throwaway(&["127.0.0.1", "localhost"], 2).expect("generate");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(pki.ca_pem, pki.cert_pem);
    }

    #[test]
    fn refuses_no_names_and_bad_names() {
        assert!(matches!(throwaway(&[], 1), Err(CertError::NoNames)));
        assert!(matches!(
            throwaway(&["bad name with spaces"], 1),
            Err(CertError::BadName(_))
        ));
    }

    #[test]
    fn writes_three_files_key_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("ringcast-cert-{}", std::process::id()));
        let pki = throwaway(&["127.0.0.1"], 1).expect("generate");
        let files = write(&pki, &dir).expect("write");
        assert_eq!(std::fs::read_to_string(&files.ca).expect("ca"), pki.ca_pem);
        assert_eq!(
            std::fs::read_to_string(&files.cert).expect("cert"),
            pki.cert_pem
        );
        let mode = std::fs::metadata(&files.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
