//! The TLS set-up of the service's HTTP clients (the schema registry's, the order API's
//! forwarding), made once per process and shared.
//!
//! Building a TLS connector reads and parses the system's root certificates, with OpenSSL:
//! 45 to 70 ms of CPU here, whatever the URL's scheme (reqwest builds one per client). The
//! registry client is built at start, on the way to the first record, so the service builds
//! one connector, from its first moment ([`prepare`]), and hands it to every client.

use std::sync::OnceLock;

/// The shared connector, or why it could not be built.
static CONNECTOR: OnceLock<Result<native_tls::TlsConnector, String>> = OnceLock::new();

/// A `reqwest` client builder on the process's one TLS connector (built by the first call;
/// a concurrent call waits for it). Configure and build the client as usual.
///
/// Errors: a message when the TLS connector cannot be built (OpenSSL cannot initialise).
pub fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    let connector = CONNECTOR.get_or_init(connector).clone()?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(connector))
}

/// Starts building the connector on a thread of its own, so that the clients built later
/// find it ready: the service calls this first thing, and its first clients (the schema
/// registry's, on the way to the first record) come 40 ms or more later.
pub fn prepare() {
    // Without a thread (none can be started) the first client builds it, as it would anyway.
    let _ = std::thread::Builder::new()
        .name("tls-setup".into())
        .spawn(|| CONNECTOR.get_or_init(connector).is_ok());
}

fn connector() -> Result<native_tls::TlsConnector, String> {
    native_tls::TlsConnector::builder()
        // What reqwest asks for itself, built without HTTP/2.
        .request_alpns(&["http/1.1"])
        .build()
        .map_err(|e| format!("TLS set-up: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_share_one_connector_and_build() {
        let first = client_builder().unwrap().build().unwrap();
        let second = client_builder().unwrap().build().unwrap();
        assert!(CONNECTOR.get().is_some_and(|c| c.is_ok()));
        drop((first, second));
    }
}
