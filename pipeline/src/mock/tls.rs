//! A throwaway CA per mock: a server certificate for `127.0.0.1`/`localhost`, HTTP/2 by
//! ALPN, and client certificates (for APNs certificate auth) issued by the same CA and
//! accepted, but not required, by the server.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// The server side of a mock's TLS.
pub(crate) struct ServerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca_pem: String,
}

/// A CA that signs the mock's server certificate and any client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pushline test CA");
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key (both PEM) for `common_name`, signed by this CA.
    pub fn issue(&self, names: &[&str], common_name: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for `host` signed by this CA, offering `protocol` by ALPN
    /// (`h2`, or `http/1.1`).
    pub(crate) fn server_tls(&self, host: &str, protocol: &[u8]) -> ServerTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        if !names.iter().any(|n| n == host) {
            names.push(host.to_owned());
        }
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "pushline mock provider");
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let chain = vec![cert.der().clone(), self.issuer.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.issuer.der().to_vec()))
            .expect("CA root");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private)
            .expect("server config");
        config.alpn_protocols = vec![protocol.to_vec()];
        ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_pem: self.pem(),
        }
    }
}
