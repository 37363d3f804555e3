//! TLS for live migration data, the same for both engines: the engines speak plain TCP on
//! loopback, and svc-compute carries their stream between the hosts over TLS with the
//! deployment's certificates (the `[tls]` pki_dir: the destination presents servercert.pem and
//! asks for a client certificate from cacert.pem's CA; the source presents clientcert.pem and
//! checks the destination's certificate names the host it dials).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vireo_runtime::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};

use crate::Error;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn not_ready(what: String) -> Error {
    Error::State(format!("migration over TLS: {what}"))
}

fn certificates(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, Error> {
    use pki_types::pem::PemObject;
    let certificates = pki_types::CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| not_ready(format!("{}: {err}", path.display())))?;
    if certificates.is_empty() {
        return Err(not_ready(format!("{}: no certificate", path.display())));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<pki_types::PrivateKeyDer<'static>, Error> {
    use pki_types::pem::PemObject;
    pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|err| not_ready(format!("{}: {err}", path.display())))
}

fn roots(pki_dir: &Path) -> Result<Arc<rustls::RootCertStore>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(&pki_dir.join(CA_CERT))? {
        roots
            .add(certificate)
            .map_err(|err| not_ready(format!("{CA_CERT}: {err}")))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The destination's side: server certificate, client certificates required.
pub fn acceptor(pki_dir: &Path) -> Result<TlsAcceptor, Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pki_dir)?, provider())
            .build()
            .map_err(|err| not_ready(err.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| not_ready(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates(&pki_dir.join(SERVER_CERT))?,
            private_key(&pki_dir.join(SERVER_KEY))?,
        )
        .map_err(|err| not_ready(format!("{SERVER_CERT}: {err}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The source's side: client certificate, the destination's checked against the CA.
fn connector(pki_dir: &Path) -> Result<TlsConnector, Error> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| not_ready(err.to_string()))?
        .with_root_certificates(roots(pki_dir)?)
        .with_client_auth_cert(
            certificates(&pki_dir.join(CLIENT_CERT))?,
            private_key(&pki_dir.join(CLIENT_KEY))?,
        )
        .map_err(|err| not_ready(format!("{CLIENT_CERT}: {err}")))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Destination: answers TLS on `listener` for one source and carries its stream to the engine
/// waiting on `engine` (loopback). Gives up after `wait` without a source.
pub fn serve_incoming(
    acceptor: TlsAcceptor,
    listener: std::net::TcpListener,
    engine: SocketAddr,
    wait: Duration,
) {
    tokio::spawn(async move {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(%err, "incoming migration over TLS: listener");
                return;
            }
        };
        // The first peer that completes the handshake with a certificate of the deployment's
        // CA is the source; anyone else (a port scan, a stray client) is dropped.
        let deadline = tokio::time::Instant::now() + wait;
        let (mut secure, peer) = loop {
            let Ok(Ok((stream, peer))) = tokio::time::timeout_at(deadline, listener.accept()).await
            else {
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(secure)) => break (secure, peer),
                Ok(Err(err)) => tracing::warn!(%peer, %err, "refused a migration peer"),
                Err(_) => tracing::warn!(%peer, "a migration peer did not complete the handshake"),
            }
        };
        let outcome = async {
            let mut plain = TcpStream::connect(engine).await?;
            tokio::io::copy_bidirectional(&mut secure, &mut plain).await
        }
        .await;
        if let Err(err) = outcome {
            tracing::warn!(%peer, %err, "incoming migration over TLS ended");
        }
    });
}

/// Source: connects to `destination` (HOST:PORT) over TLS, the destination's certificate
/// checked for HOST, and returns a loopback port for the engine to send to; its stream goes on
/// over that connection. A refused handshake is this call's error.
pub async fn relay_outgoing(pki_dir: &Path, destination: &str) -> Result<SocketAddr, Error> {
    let connector = connector(pki_dir)?;
    let host = destination
        .rsplit_once(':')
        .map_or(destination, |(host, _)| host)
        .trim_matches(['[', ']'])
        .to_string();
    let name = pki_types::ServerName::try_from(host.clone()).map_err(|_| Error::InvalidField {
        field: "address",
        message: format!("`{host}` is neither a host name nor an IP address"),
    })?;
    let remote = TcpStream::connect(destination)
        .await
        .map_err(|err| not_ready(format!("cannot reach {destination}: {err}")))?;
    let mut secure = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, remote))
        .await
        .map_err(|_| not_ready(format!("handshake with {destination}: timed out")))?
        .map_err(|err| not_ready(format!("handshake with {destination}: {err}")))?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(Error::io("migration relay"))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("migration relay"))?;
    let destination = destination.to_string();
    tokio::spawn(async move {
        let Ok(Ok((mut plain, _))) =
            tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
        else {
            return;
        };
        if let Err(err) = tokio::io::copy_bidirectional(&mut plain, &mut secure).await {
            tracing::warn!(%destination, %err, "outgoing migration over TLS ended");
        }
    });
    Ok(local)
}
