//! The CA bundle a setting names (`redis_tls_ca_file`): PEM certificates,
//! each checked by rustls. Read by the configuration's check and by the
//! process, which hands it to the Redis client's TLS, which is why it
//! belongs to neither.

use std::io;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// Largest CA bundle read.
const MAX_BUNDLE: u64 = 4 << 20;

/// Why a CA bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
}

/// The CAs in a PEM file, each one checked by rustls.
pub fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let bad = |msg: String| TlsError::Bad {
        path: path.to_path_buf(),
        msg,
    };
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A CA bundle is kilobytes; a path to a device or a huge file is a
    // mistake to report, not to read to its end.
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| io::Read::read_to_end(&mut io::Read::take(f, MAX_BUNDLE + 1), &mut pem))
        .map_err(read)?;
    if pem.len() as u64 > MAX_BUNDLE {
        return Err(TlsError::Bad {
            path: path.to_path_buf(),
            msg: format!("larger than {MAX_BUNDLE} bytes: not a CA bundle"),
        });
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}
