//! Test certificates for `amqps://` tests, made fresh per test with rcgen:
//! a CA (`ca1.pem`), an unrelated CA (`ca2.pem`), a server certificate for
//! `localhost` only, not 127.0.0.1 (`server.pem`/`server.key`, so hostname
//! checks can be exercised), and a client certificate
//! (`client.pem`/`client.key`), all signed by the first CA.
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::unique_name;

/// A directory of PEM files, removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates the files in a fresh temporary directory.
    pub fn generate() -> TestPki {
        let dir = std::env::temp_dir().join(unique_name("kztest-tls"));
        std::fs::create_dir(&dir).expect("creating the certificate directory");
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                .expect("self-signed CA")
        };
        let ca1 = ca("kazoo test CA");
        let ca2 = ca("another CA");
        let leaf = |names: Vec<String>, issuer: &CertifiedIssuer<'_, KeyPair>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("leaf params")
                .signed_by(&key, issuer)
                .expect("signed leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(vec!["localhost".into()], &ca1);
        let (client, client_key) = leaf(vec!["kamailio".into()], &ca1);
        let pki = TestPki { dir };
        for (name, text) in [
            ("ca1.pem", ca1.pem()),
            ("ca2.pem", ca2.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(pki.path(name), text).expect("writing a certificate");
        }
        pki
    }

    /// The path of one of the files (see the module comment).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
